"""Status conditions and the phase derived from them. Pure functions over plain dicts.

Conditions follow the Kubernetes API conventions: one entry per type, `lastTransitionTime` changes only when
`status` flips, every entry carries the generation it describes. `phase` is a mirror for humans and printer
columns, derived from the conditions, never the other way round.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool | None,
    *,
    reason: str,
    message: str,
    generation: int,
    timestamp: str | None = None,
) -> list[dict[str, Any]]:
    """A new list with condition `type_` set; True/False/None map to "True"/"False"/"Unknown"."""
    value = {True: "True", False: "False", None: "Unknown"}[status]
    previous = next((c for c in conditions if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != value
    entry = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (timestamp or now()) if changed else previous["lastTransitionTime"],
        "observedGeneration": generation,
    }
    return [c for c in conditions if c.get("type") != type_] + [entry]


def get(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]], type_: str) -> bool:
    condition = get(conditions, type_)
    return condition is not None and condition.get("status") == "True"


def phase(conditions: list[dict[str, Any]]) -> str:
    """Succeeded / Failed win, then Suspended, then Running, else Pending."""
    for type_ in ("Succeeded", "Failed", "Suspended", "Running"):
        if is_true(conditions, type_):
            return type_
    return "Pending"
