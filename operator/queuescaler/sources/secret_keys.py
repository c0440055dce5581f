"""Reading a connection Secret's keys, the same way for every broker. Pure.

Every failure is BAD_CONFIG and names the key, never its value: Secret values are
credentials or carry them.
"""

from __future__ import annotations

from collections.abc import Mapping

from queuescaler.core.sample import ErrorKind, SourceError


def bad_secret(message: str) -> SourceError:
    """A Secret the operator cannot use, said without any of its values."""
    return SourceError(ErrorKind.BAD_CONFIG, f"connection Secret: {message}")


def secret_value(data: Mapping[str, str], key: str, *, required: bool = False) -> str | None:
    """The key's value without surrounding whitespace (files often end in a newline); None
    when an optional key is absent. A key present but empty is refused: it is a mistake,
    not an absence."""
    if key not in data:
        if required:
            raise bad_secret(f"key {key!r} is missing")
        return None
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise bad_secret(f"key {key!r} is empty")
    return value.strip()
