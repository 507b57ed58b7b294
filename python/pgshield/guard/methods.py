"""Data API guard methods: ``shield.guard.<method>(...)``.

The synchronous source. ``methods_async.py`` is generated from it (``python -m pgshield._twin``).
"""

from __future__ import annotations

import psycopg

from pgshield.guard.ops import (
    define_rule_op,
    drop_rule_op,
    install_op,
    options_op,
    rules_op,
    status_op,
    uninstall_op,
)
from pgshield.guard.results import GuardRule, GuardStatus
from pgshield.namespace import Namespace


class Guard(Namespace):
    """The Data API guard (``sql/guard.sql``): ``shield.guard.<method>(...)``.

    Rules map PostgREST requests (role, method, path) to rate limit policies; PostgREST calls
    ``pgshield.request_guard()`` before every request once it is installed. Every method takes
    ``conn=`` to run in the caller's own transaction.
    """

    def rules(self, conn: psycopg.Connection | None = None) -> list[GuardRule]:
        """Every rule, in the order they are tried (service_role, owner)."""
        return self._call(rules_op(), conn)

    def define_rule(
        self,
        policy: str | None,
        *,
        role: str = "*",
        method: str = "*",
        path: str = "*",
        cost: int = 1,
        position: int = 100,
        action: str = "limit",
        description: str | None = None,
        conn: psycopg.Connection | None = None,
    ) -> GuardRule:
        """Add a rule (service_role): ``path`` is exact or ends in ``*``; ``role="*"`` means
        anon and authenticated (service_role only when named); ``action="exempt"`` lets
        matching requests through uncounted (then ``policy`` is None)."""
        op = define_rule_op(policy, role, method, path, cost, position, action, description)
        return self._call(op, conn)

    def drop_rule(self, rule_id: int, conn: psycopg.Connection | None = None) -> bool:
        """Delete a rule; returns whether it existed."""
        return self._call(drop_rule_op(rule_id), conn)

    def status(self, conn: psycopg.Connection | None = None) -> GuardStatus:
        """Whether PostgREST calls the guard here, what it chains, the options."""
        return self._call(status_op(), conn)

    def set_options(
        self, *, allowed_headers: bool, conn: psycopg.Connection | None = None
    ) -> GuardStatus:
        """Whether allowed responses carry the RateLimit / RateLimit-Policy headers."""
        return self._call(options_op(allowed_headers), conn)

    def install(
        self, *, chain: bool = False, conn: psycopg.Connection | None = None
    ) -> GuardStatus:
        """Make PostgREST call the guard before every request (the owner; idempotent).

        An existing, different pre-request function is refused unless ``chain``: then it is
        kept and runs first.
        """
        return self._call(install_op(chain), conn)

    def uninstall(self, conn: psycopg.Connection | None = None) -> GuardStatus:
        """Stop PostgREST calling the guard (a chained function is put back)."""
        return self._call(uninstall_op(), conn)
