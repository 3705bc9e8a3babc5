"""kstatus conditions, computed whole from a phase each time; transition times kept while a status holds."""

from __future__ import annotations

from datetime import datetime

from gradatim.api.base import Condition

DONE = ("Succeeded", "Cached")
ACTIVE = ("Pending", "Running", "Retrying")
STALLED = ("Failed", "Invalid", "Blocked")


def condition(type_: str, status: bool | None, reason: str, message: str, generation: int | None, now: datetime, previous: list[Condition]) -> Condition:
    value = "Unknown" if status is None else ("True" if status else "False")
    old = next((c for c in previous if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == value else now
    return Condition(type=type_, status=value, reason=reason, message=message[:32768], observed_generation=generation, last_transition_time=since)


def conditions_for(phase: str, reason: str, message: str, generation: int | None, now: datetime, previous: list[Condition]) -> list[Condition]:
    """`Ready`, `Reconciling`, `Stalled` (kstatus) and `Succeeded` for a bounded object in `phase`."""
    done = phase in DONE
    return [
        condition("Ready", done, reason, message, generation, now, previous),
        condition("Reconciling", phase in ACTIVE, reason, message if phase in ACTIVE else "", generation, now, previous),
        condition("Stalled", phase in STALLED, reason, message if phase in STALLED else "", generation, now, previous),
        condition("Succeeded", True if done else (False if phase in ("Failed", "Invalid") else None), reason, message, generation, now, previous),
    ]
