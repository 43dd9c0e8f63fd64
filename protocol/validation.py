"""One way to say what is wrong with data that failed a pydantic model: ``where: what``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError


def error_location(loc: Sequence[Any], default: str) -> str:
    """``a.b.0`` for a pydantic error location; ``default`` when it is empty (the whole value)."""
    return ".".join(str(part) for part in loc) or default


def describe_first_error(
    exc: ValidationError | Sequence[Mapping[str, Any]], default: str = "value", with_input: bool = False
) -> str:
    """The first problem as one line, ``where: message`` (``invalid where 'input': message``
    when ``with_input``), for errors that go to a user on one line."""
    errors = exc.errors() if isinstance(exc, ValidationError) else exc
    if not errors:
        return f"{default}: invalid"
    first = errors[0]
    where = error_location(first.get("loc", ()), default)
    message = first.get("msg", "invalid")
    if with_input:
        return f"invalid {where} {first.get('input')!r}: {message}"
    return f"{where}: {message}"
