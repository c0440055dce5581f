"""The one redaction function: every log line, Event, condition message and error passes here.

What is removed from any text:
- the userinfo of every URL (`amqp://user:pw@host` -> `amqp://***@host`), whatever the scheme,
  and of a bare `user:pw@host`;
- the value after a password key (`password=...`, `"password": "..."`, `pwd: ...`,
  `RABBITMQ_DEFAULT_PASS=...`), registered or not;
- the value of an echoed `Authorization` header (`Basic dXNlcjpwYXNz`): a server that
  quotes the request's headers in an error page would otherwise show a password one base64
  decode away;
- every secret value registered with `register_secret`, in the forms it may take when a
  server or a library echoes it back: as is, percent-encoded (upper or lower hex, `+` for
  spaces), and escaped by `repr` or JSON. A long secret is removed wherever it appears; a
  short one (see SHORT_SECRET_LEN) only as the whole value in a credential position.

Why credential positions mask any value: masking only the registered one would be an oracle
(write `password=guess` where it gets logged, see whether it comes back masked). Then a short
secret needs its own pass only to mask it whole when it holds a space or a separator.

KEDA redacts per scaler and has leaked through the cracks between them; one function used
everywhere leaves no cracks. It is pure string work, safe to call from any thread.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.parse
from typing import NamedTuple

MASK = "***"

SHORT_SECRET_LEN = 8
"""A secret shorter than this is masked only where a credential stands, never in free text.

`broker` is in `broker.default.svc`, `1` in every number: masking them there would not
hide them, it would point at them. Eight characters of a real password almost never turn
up by chance, so a longer secret is masked wherever it appears (an echo in any wording)."""

_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
    # Up to the LAST '@' before the path: a password with a raw '@' or ':' is still hidden.
    r"[^\s/@'\"<>]*(?:@[^\s/@'\"<>]*)*@"
)
_BARE_USERINFO = re.compile(
    r"(?<![^\s:/@'\"<>])[^\s:/@'\"<>]{0,256}:[^\s/@'\"<>]{0,256}(?:@[^\s/@'\"<>]{0,256}){0,8}@"
)
"""`user:pw@host` without a scheme (pika and some drivers print it so); the user goes too.
Tried only where a run starts, and bounded: a long token without spaces stays linear."""

_AUTH_HEADER = re.compile(
    r"(?i)((?:proxy-)?authorization['\"]?[ \t]*[=:][ \t]*['\"]?)"
    r"(?:([A-Za-z][\w-]{0,19})([ \t]+))?[^\s'\",;&]{1,4096}"
)
"""An echoed `Authorization` header's value (`Authorization: Basic dXNl...`, or as a JSON or
repr key): the scheme stays, the token goes. A token echoed without its header is masked
when its source registered it (`register_secret`)."""

_KEY = r"(?<![\w.\-])[\w.\-]*?(?:passw(?:or)?d|pwd|_pass)(?!\w)"
"""A password's key: password, passwd, pwd, db_password, userPassword, RABBITMQ_DEFAULT_PASS."""
_KEY_SEP = rf"(?i:{_KEY})['\"]?(?:[ \t]*[=:][ \t]*|[ \t]+(?=['\"]))"
"""The key, maybe quoted (JSON), then `=` or `:`; or a space when a quoted value follows."""
_LOOK = 64
"""How far the pattern reads into each value; `_value_spans` reads the rest once per run, so
text packed with keys (`password=password=...`) costs linear time, not quadratic."""
_QUOTED = rf"(?:\\.|(?!(?P={{q}}))[^\\\n]){{{{0,{_LOOK}}}}}"
"""A quoted value's inside: to its closing quote (escapes skipped), or to the line's end."""
_UNQUOTED = r"[^\s&,;'\"<>()\[\]{}]"
"""An unquoted value ends at a space, a query's `&`, a list's `,`, a bracket or a quote."""
_VALUE_REST = {
    "": re.compile(f"{_UNQUOTED}*"),
    "'": re.compile(r"(?:\\.|[^'\\\n])*"),
    '"': re.compile(r'(?:\\.|[^"\\\n])*'),
}
"""The rest of a value read `_LOOK` far, by how it is quoted."""


def _value_pattern(short_forms: str | None) -> re.Pattern[str]:
    """The value after each password key, found at every key even inside another's value.

    With `short_forms`, a value starting with one of them is taken to that form's end at
    least, so a short secret holding a space or a `&` goes whole; where values start does
    not change, so what is masked tells nothing of the secret. Quoted before unquoted: a
    registered `"` must not be read as an unquoted value.
    """
    quoted = rf"(?P<q2>['\"])(?P<v2>{_QUOTED.format(q='q2')})"
    unquoted = rf"(?P<v4>{_UNQUOTED}{{1,{_LOOK}}})"
    if short_forms:
        short_quoted = rf"(?P<q1>['\"])(?P<v1>(?:{short_forms}){_QUOTED.format(q='q1')})"
        short_unquoted = rf"(?P<v3>(?:{short_forms}){_UNQUOTED}{{0,{_LOOK}}})"
        value = f"{short_quoted}|{quoted}|{short_unquoted}|{unquoted}"
    else:
        value = f"{quoted}|{unquoted}"
    # A lookahead: matches do not consume, so a key inside a quoted value is seen too.
    return re.compile(rf"(?={_KEY_SEP}(?:{value}))")


class _Patterns(NamedTuple):
    """Built from the registered secrets; swapped whole so readers never need the lock."""

    anywhere: re.Pattern[str] | None
    """Every form of every long secret, longest first."""
    values: re.Pattern[str]
    """The value after a password key, a short secret's forms taken whole."""
    as_userinfo: re.Pattern[str] | None
    """A short secret's form between ':' and '@'."""


_lock = threading.Lock()
_secrets: set[str] = set()
_long_forms: set[str] = set()
_short_forms: set[str] = set()
_patterns = _Patterns(None, _value_pattern(None), None)


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


def _alternation(forms: set[str]) -> str:
    """Longest first: a form that holds a shorter one is taken whole, leaving no tail."""
    return "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))


def register_secret(value: str) -> None:
    """Hide `value` (and its encoded forms) in everything `redact` sees from now on.

    The operator registers every password it reads from a Secret, so a password a server
    echoes back in an error message never reaches a log. Empty values are ignored.
    """
    global _patterns
    if not value or value in _secrets:
        return
    new_forms = _forms(value)  # before any state changes: a failure leaves nothing half-done
    with _lock:
        (_short_forms if len(value) < SHORT_SECRET_LEN else _long_forms).update(new_forms)
        _secrets.add(value)
        anywhere = re.compile(_alternation(_long_forms)) if _long_forms else None
        short = _alternation(_short_forms) if _short_forms else None
        as_userinfo = re.compile(rf":(?:{short})(?=@)") if short else None
        _patterns = _Patterns(anywhere, _value_pattern(short), as_userinfo)


def _value_spans(pattern: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    """Where each password key's value lies, read to its end; empty values left out."""
    spans: list[tuple[int, int]] = []
    runs: dict[str, tuple[int, int]] = {}  # by quoting: the last run read to its end
    for match in pattern.finditer(text):
        groups = match.groupdict()
        name = next((v for v in ("v1", "v2", "v3", "v4") if groups.get(v)), None)
        if name is None:
            continue
        start, end = match.span(name)
        kind = {"v1": groups.get("q1"), "v2": groups.get("q2")}.get(name) or ""
        run_start, run_end = runs.get(kind, (-1, -1))
        if not run_start <= end <= run_end:  # a key inside a run already read ends with it
            rest = _VALUE_REST[kind].match(text, end)  # matches, if only the empty string
            run_start, run_end = end, rest.end() if rest else end
            runs[kind] = (run_start, run_end)
        spans.append((start, run_end))
    return spans


def _mask_values(pattern: re.Pattern[str], text: str) -> str:
    """Every password key's value masked; overlapping values masked as one."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(_value_spans(pattern, text)):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    pieces, done = [], 0
    for start, end in merged:
        pieces += [text[done:start], MASK]
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def redact(text: str) -> str:
    """`text` without credentials or registered secrets. Idempotent."""
    patterns = _patterns
    if patterns.anywhere is not None:
        text = patterns.anywhere.sub(MASK, text)
    if "authorization" in text.lower():
        text = _AUTH_HEADER.sub(_masked_header, text)
    if "@" in text:
        # A short secret first, whole: the userinfo rules end at a space or a '/'.
        if patterns.as_userinfo is not None:
            text = patterns.as_userinfo.sub(":" + MASK, text)
        if "://" in text:
            text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
        text = _BARE_USERINFO.sub(MASK + "@", text)
    return _mask_values(patterns.values, text)


EXCERPT_CHARS = 200
"""How much of a server's answer an error message quotes."""
_EXCERPT_READ = 65536
"""How much of it is redacted first (the quote is its start)."""


def excerpt(text: str | bytes, limit: int = EXCERPT_CHARS) -> str:
    """A server's words quoted in an error: redacted whole, then cut to `limit` characters.
    Cut first, a token at the cut would lose the end that makes it recognizable, and its
    start would stay (a review decoded 'operator:correct-horse' from one)."""
    if isinstance(text, bytes):
        text = text[:_EXCERPT_READ].decode("utf-8", "replace")
    cleaned = redact(text[:_EXCERPT_READ])
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


def _masked_header(match: re.Match[str]) -> str:
    scheme = f"{match.group(2)}{match.group(3)}" if match.group(2) else ""
    return f"{match.group(1)}{scheme}{MASK}"


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
