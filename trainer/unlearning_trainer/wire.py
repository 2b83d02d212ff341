"""The base of every spec model: documents as the API server judges them (camelCase names, unknown fields
refused, strict types, no NaN or infinity, integers within 64 bits), frozen after parsing."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic.alias_generators import to_camel

INT64 = 1 << 63


class WireModel(BaseModel):
    """Shared config: camelCase names on the wire, unknown fields rejected, frozen after parsing, and strict
    types (no "300" or true where a number belongs, no .nan or .inf, which JSON cannot carry)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
    )

    @field_validator("*", mode="before")
    @classmethod
    def _within_int64(cls, value: Any) -> Any:
        """The API server stores integers as int64; a larger one is refused there, so here too."""
        if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
            raise ValueError(f"{value} does not fit in a 64-bit integer. Fix: use a smaller value")
        return value


def cel_rule(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """A CEL rule for the generated CRD: the API server's copy of a model validator beside it."""
    rule_dict = {"rule": rule, "message": message, "reason": "FieldValueInvalid"}
    if field_path:
        rule_dict["fieldPath"] = field_path
    return rule_dict
