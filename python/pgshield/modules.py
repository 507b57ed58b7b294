"""The module registry: the one place a pgshield module is registered.

Everything that lists modules reads this tuple: the build order of ``sql/`` (resources), the
client namespaces (checked against :class:`pgshield.Shield` by tests/test_layout.py), the CLI
groups, the demo tour, the async twins (``python -m pgshield._twin``) and the manifest test that
checks each module's pieces exist (SQL file, migrations, package, CLI group, demo section, docs
page, README markers, pgTAP files). Only strings here: importing this imports nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Module:
    """One module: ``sql/<name>.sql`` and the names of its other pieces."""

    name: str  # sql/<name>.sql, migrations/<ts>_create_<name>.sql, docs/<name>.md
    title: str
    namespace: str | None = None  # the attribute on Shield / AsyncShield (None: on the client)
    package: str | None = None  # pgshield.<package>: methods.py (sync), methods_async.py (twin)
    classes: tuple[str, str] | None = None  # (sync namespace class, async namespace class)
    cli: str | None = None  # "module:attribute" of its click group
    demo: str | None = None  # "module:function" of its demo section
    pgtap: str | None = None  # tests/pgtap/<NN>_<pgtap>_*.sql
    readme: bool = True  # README.md has <!-- <name>:start --> ... <!-- <name>:end -->
    docs: str | None = None  # docs/<docs>.md, when it is not docs/<name>.md


MODULES: tuple[Module, ...] = (
    Module(
        "core",
        "schema, version and clock",
        demo="pgshield.demo.core:run",
        pgtap="core",
        readme=False,
    ),
    Module(
        "rate_limit",
        "rate limiting",
        namespace="rate_limits",
        package="pgshield.rate_limit",
        classes=("RateLimits", "AsyncRateLimits"),
        cli="pgshield.cli.rate_limit:ratelimit",
        demo="pgshield.demo.rate_limit:run",
        pgtap="rate_limit",
    ),
    Module(
        "jsonb",
        "atomic JSONB merges",
        namespace="jsonb",
        package="pgshield.jsonb",
        classes=("JsonbMerges", "AsyncJsonbMerges"),
        cli="pgshield.cli.jsonb:jsonb",
        demo="pgshield.demo.jsonb:run",
        pgtap="jsonb",
    ),
    Module(
        "breaker",
        "circuit breakers shared by every instance",
        namespace="breakers",
        package="pgshield.breaker",
        classes=("Breakers", "AsyncBreakers"),
        cli="pgshield.cli.breaker:breaker",
        demo="pgshield.demo.breaker:run",
        pgtap="breaker",
    ),
    Module(
        "teams",
        "teams: atomic creation with an owner, roles, invitations, audit",
        namespace="teams",
        package="pgshield.teams",
        classes=("Teams", "AsyncTeams"),
        cli="pgshield.cli.teams:teams",
        demo="pgshield.demo.teams:run",
        pgtap="teams",
    ),
    Module(
        "guard",
        "rate limits in front of the Data API (PostgREST pre-request)",
        namespace="guard",
        package="pgshield.guard",
        classes=("Guard", "AsyncGuard"),
        cli="pgshield.cli.guard:guard",
        demo="pgshield.demo.guard:run",
        pgtap="guard",
        docs="data_api_guard",
    ),
    Module(
        "maintenance",
        "cleanup on pg_cron, Prometheus metrics",
        namespace="maintenance",
        package="pgshield.maintenance",
        classes=("Maintenance", "AsyncMaintenance"),
        cli="pgshield.cli.maintenance:cron",
        demo="pgshield.demo.maintenance:run",
        pgtap="maintenance",
    ),
)


def load(ref: str) -> object:
    """The object a ``"module:attribute"`` reference names."""
    import importlib

    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)
