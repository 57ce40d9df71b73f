"""What a validation error says, in one line, for every layer: ``loc: msg; loc: msg``."""

from __future__ import annotations

from typing import Any, Protocol


class HasErrors(Protocol):
    """pydantic's ``ValidationError`` and FastAPI's ``RequestValidationError``."""

    def errors(self) -> Any: ...


def describe_validation(error: HasErrors, where: str = "body", most: int | None = None) -> str:
    """Every problem (the first ``most``) as ``field.path: message``, ``where`` naming the whole object (a
    problem of no field); pydantic's "Value error, " before a validator's own message is dropped."""
    problems = list(error.errors())[:most]
    return "; ".join(
        f"{'.'.join(map(str, p.get('loc', ()))) or where}: {p.get('msg', '').removeprefix('Value error, ')}"
        for p in problems
    )
