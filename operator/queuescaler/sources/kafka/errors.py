"""Kafka's errors as SourceErrors that name no credential, and aiokafka's log kept free of SASL
frames: the one place a broker's error is worded before anything logs it."""

from __future__ import annotations

import logging
import ssl
import struct
from typing import Any

import aiokafka.errors as kafka_errors

from queuescaler.core.redact import redact
from queuescaler.core.sample import ErrorKind, SourceError
from queuescaler.sources.kafka.protocol import BadAnswer


class _HideSaslFrames(logging.Filter):
    """aiokafka's connection logs each request at DEBUG, SASL frames (a PLAIN password in
    clear) included, and the SASL user at INFO: neither leaves this process."""

    _HIDDEN = ("Request to", "Response from", "Authenticated as")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self._HIDDEN))


_AIOKAFKA_CONN = logging.getLogger("aiokafka.conn")
if not any(isinstance(f, _HideSaslFrames) for f in _AIOKAFKA_CONN.filters):
    _AIOKAFKA_CONN.addFilter(_HideSaslFrames())


def failure(error: BaseException, where: str) -> SourceError:
    """An aiokafka (or asyncio, or ssl) error as a SourceError that names no credential."""
    if isinstance(error, SourceError):
        return SourceError(error.kind, redact(error.message))
    if isinstance(error, kafka_errors.SaslAuthenticationFailed
                  | kafka_errors.AuthenticationFailedError
                  | kafka_errors.IllegalSaslStateError):
        return redacted(ErrorKind.AUTH, f"{where} refused the credentials: {error}")
    if isinstance(error, kafka_errors.UnsupportedSaslMechanismError):
        return redacted(ErrorKind.AUTH, f"{where} does not take this SASL mechanism: {error}")
    if _caused_by(error, ssl.SSLError | ssl.CertificateError):
        return redacted(ErrorKind.TLS_FAILED, f"{where}: TLS failed: {_root(error)}")
    if isinstance(error, TimeoutError | kafka_errors.KafkaTimeoutError
                  | kafka_errors.RequestTimedOutError):
        return redacted(ErrorKind.TIMEOUT, f"{where}: no answer in time")
    if _caused_by(error, BadAnswer | struct.error | ValueError):
        return redacted(ErrorKind.BAD_RESPONSE,
                        f"{where}: an answer did not decode: {_root(error)}")
    if isinstance(error, kafka_errors.IncompatibleBrokerVersion):
        return redacted(ErrorKind.BAD_RESPONSE, f"{where}: {error}")
    if isinstance(error, kafka_errors.KafkaConnectionError | OSError | EOFError):
        return redacted(ErrorKind.UNREACHABLE, f"{where}: {error_words(error)}")
    return redacted(ErrorKind.BAD_RESPONSE, f"{where}: {type(error).__name__}: {error}")


def error_words(error: BaseException) -> str:
    """The error's own words, or its name when it has none (a bare ConnectionResetError)."""
    return str(error) or type(error).__name__


def redacted(kind: ErrorKind, message: str) -> SourceError:
    """A SourceError whose message names no credential."""
    return SourceError(kind, redact(message))


def _caused_by(error: BaseException, kinds: Any) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kinds):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _root(error: BaseException) -> BaseException:
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return error

