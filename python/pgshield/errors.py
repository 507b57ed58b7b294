"""One error funnel: database errors mapped by SQLSTATE to a small exception tree."""

from __future__ import annotations

import psycopg


class ShieldError(Exception):
    """Root of every error pgshield raises; ``sqlstate`` is set when the database gave one."""

    def __init__(self, message: str, *, sqlstate: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (hint: {self.hint})" if self.hint else text


class InvalidInput(ShieldError):
    """The input was rejected (SQLSTATE 22023 and the rest of class 22); nothing was written."""


class NotAllowed(ShieldError):
    """The caller's role may not do this (SQLSTATE 42501; HTTP 401/403 through PostgREST)."""


class NotFound(ShieldError):
    """The target does not exist or is hidden from the caller (SQLSTATE PT404; HTTP 404)."""


class Conflict(ShieldError):
    """The write conflicts with the current state (SQLSTATE 23505 or PT409; HTTP 409)."""


class RateLimited(ShieldError):
    """A quota refused the call (SQLSTATE PT429; HTTP 429)."""


class Retryable(ShieldError):
    """A serialization failure or deadlock (SQLSTATE 40001, 40P01): the call may be retried."""


class Unavailable(ShieldError):
    """The database could not be reached, or did not answer within the timeout."""


class MigrationError(ShieldError):
    """A migration could not be applied, or an applied migration file was changed."""


class SetupError(ShieldError):
    """The local environment lacks something pgshield needs (e.g. Postgres server binaries)."""


_BY_SQLSTATE: dict[str, type[ShieldError]] = {
    "42501": NotAllowed,
    "PT404": NotFound,
    "PT409": Conflict,
    "23505": Conflict,
    "PT429": RateLimited,
    "40001": Retryable,
    "40P01": Retryable,
    "57014": Unavailable,  # statement timeout / cancel
}


def error_class(sqlstate: str | None) -> type[ShieldError]:
    """The exception class for an SQLSTATE (ShieldError when there is no better one)."""
    if sqlstate is None:
        return ShieldError
    if sqlstate in _BY_SQLSTATE:
        return _BY_SQLSTATE[sqlstate]
    if sqlstate.startswith("22"):
        return InvalidInput
    if sqlstate.startswith(("08", "57P")):  # connection failures, server shutting down
        return Unavailable
    return ShieldError


def translate(exc: psycopg.Error) -> ShieldError:
    """Turn a psycopg error into the matching ShieldError, keeping the SQLSTATE and hint."""
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        return Unavailable(_one_line(str(exc)) or "database unavailable")
    diag = exc.diag
    message = diag.message_primary or _one_line(str(exc))
    cls = error_class(exc.sqlstate)
    return cls(message, sqlstate=exc.sqlstate, hint=diag.message_hint)


# For a role without USAGE on the pack's schema (any pack call from it fails so).
SCHEMA_HINT = (
    "connect as the role that applied the migrations (postgres on Supabase) or as service_role"
)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
