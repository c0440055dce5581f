"""The one redaction function: every log line, Event, condition message and error passes here.

Two things are removed from any text:
- the userinfo of every URL (`amqp://user:pw@host` -> `amqp://***@host`), whatever the scheme;
- every secret value registered with `register_secret`, in the forms it may take when a
  server or a library echoes it back: as is, percent-encoded (upper or lower hex, `+` for
  spaces), and escaped by `repr` or JSON.

KEDA redacts per scaler and has leaked through the cracks between them; one function used
everywhere leaves no cracks. It is pure string work, safe to call from any thread.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.parse

MASK = "***"

_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
    # Up to the LAST '@' before the path: a password with a raw '@' or ':' is still hidden.
    r"[^\s/@'\"<>]*(?:@[^\s/@'\"<>]*)*@"
)

_lock = threading.Lock()
_secrets: set[str] = set()
_forms_seen: set[str] = set()
_pattern: re.Pattern[str] | None = None
"""Every registered form, longest first; swapped whole so readers never need the lock."""


def _percent_encodings(secret: str) -> set[str]:
    """How URL builders encode `secret`; a lone surrogate (from undecodable bytes) included."""
    forms: set[str] = set()
    for errors in ("surrogateescape", "surrogatepass"):
        try:
            forms |= {
                urllib.parse.quote(secret, safe="", errors=errors),
                urllib.parse.quote(secret, errors=errors),  # keeps '/', as some builders do
                urllib.parse.quote_plus(secret, errors=errors),
            }
        except UnicodeEncodeError:
            continue
    return forms | {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}


def _forms(secret: str) -> set[str]:
    """The shapes one secret takes in text: plain, URL-encoded, and escaped by repr or JSON."""
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], *_percent_encodings(secret)}
    return {form for form in forms if form}


def register_secret(value: str) -> None:
    """Hide `value` (and its encoded forms) in everything `redact` sees from now on.

    The operator registers every password it reads from a Secret, so a password a server
    echoes back in an error message never reaches a log. Empty values are ignored.
    """
    global _pattern
    if not value or value in _secrets:
        return
    new_forms = _forms(value)  # before any state changes: a failure leaves nothing half-done
    with _lock:
        _forms_seen.update(new_forms)
        _secrets.add(value)
        ordered = sorted(_forms_seen, key=len, reverse=True)  # longest first: no leftovers
        _pattern = re.compile("|".join(re.escape(form) for form in ordered))


def redact(text: str) -> str:
    """`text` without URL credentials or registered secrets. Idempotent."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if "://" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return text


class RedactingFilter(logging.Filter):
    """Applies `redact` to each record's formatted message, exception text and stack.

    Install it on the handlers (a logger's filters do not see records propagated from its
    children). The message is rendered once here and the args dropped, so no formatter
    can put an unredacted argument back. Records are never dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad args: logging would report it later; never raise from here
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted)
            record.exc_info = None  # formatters print exc_text; the traceback objects go
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
