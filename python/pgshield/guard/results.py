"""Data API guard results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GuardRule:
    """One rule: requests of ``role`` / ``method`` / ``path`` cost ``cost`` under ``policy``.

    ``action`` is ``limit`` or ``exempt``; the first rule by ``position`` (then ``id``) decides.
    """

    id: int
    position: int
    role: str
    method: str
    path: str
    action: str
    policy: str | None
    cost: int
    description: str | None


@dataclass(frozen=True)
class GuardStatus:
    """Whether PostgREST calls the guard in this database, and what runs with it."""

    installed: bool
    pre_request: str | None
    chained_function: str | None
    allowed_headers: bool
    rules: int


def parse_rule(r: Mapping[str, Any]) -> GuardRule:
    """A rule from its JSON (pgshield.guard_rule_list, define_guard_rule)."""
    return GuardRule(
        id=int(r["id"]),
        position=int(r["position"]),
        role=r["role"],
        method=r["method"],
        path=r["path"],
        action=r["action"],
        policy=r.get("policy"),
        cost=int(r["cost"]),
        description=r.get("description"),
    )


def parse_status(s: Mapping[str, Any]) -> GuardStatus:
    """The guard status from its JSON (pgshield.request_guard_status)."""
    return GuardStatus(
        installed=bool(s["installed"]),
        pre_request=s.get("pre_request"),
        chained_function=s.get("chained_function"),
        allowed_headers=bool(s["allowed_headers"]),
        rules=int(s["rules"]),
    )
