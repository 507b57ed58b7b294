"""Data API guard ops: one :class:`~pgshield.client.Op` builder per SQL function."""

from __future__ import annotations

from pgshield.client import Op, scalar
from pgshield.guard.results import GuardRule, GuardStatus, parse_rule, parse_status

METHODS = ("*", "GET", "HEAD", "POST", "PATCH", "PUT", "DELETE")
ROLES = ("*", "anon", "authenticated", "service_role")


def rules_op() -> Op[list[GuardRule]]:
    return Op(
        "select rule from pgshield.guard_rule_list()",
        {},
        lambda rows: [parse_rule(r["rule"]) for r in rows],
    )


def define_rule_op(
    policy: str | None,
    role: str,
    method: str,
    path: str,
    cost: int,
    position: int,
    action: str,
    description: str | None,
) -> Op[GuardRule]:
    return Op(
        "select pgshield.define_guard_rule(%(policy)s::text, %(role)s::text, %(method)s::text,"
        " %(path)s::text, %(cost)s::integer, %(position)s::integer, %(action)s::text,"
        " %(description)s::text) as rule",
        {
            "policy": policy,
            "role": role,
            "method": method,
            "path": path,
            "cost": cost,
            "position": position,
            "action": action,
            "description": description,
        },
        lambda rows: parse_rule(scalar(rows)),
    )


def drop_rule_op(rule_id: int) -> Op[bool]:
    return Op("select pgshield.drop_guard_rule(%(id)s::bigint) as dropped", {"id": rule_id}, scalar)


def status_op() -> Op[GuardStatus]:
    return Op(
        "select pgshield.request_guard_status() as status",
        {},
        lambda rows: parse_status(scalar(rows)),
    )


def options_op(allowed_headers: bool) -> Op[GuardStatus]:
    return Op(
        "select pgshield.set_guard_options(%(headers)s::boolean) as status",
        {"headers": allowed_headers},
        lambda rows: parse_status(scalar(rows)),
    )


def install_op(chain: bool) -> Op[GuardStatus]:
    return Op(
        "select pgshield.install_request_guard(%(chain)s::boolean) as status",
        {"chain": chain},
        lambda rows: parse_status(scalar(rows)),
    )


def uninstall_op() -> Op[GuardStatus]:
    return Op(
        "select pgshield.uninstall_request_guard() as status",
        {},
        lambda rows: parse_status(scalar(rows)),
    )
