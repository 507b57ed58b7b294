"""The breaker module (``sql/breaker.sql``): circuit breakers whose state is one row per breaker.

- ``shield.breakers.acquire(name)`` / ``.release(name, permit, outcome, duration_ms)``: the two
  calls around a protected call (service_role); ``configure``, ``reset``, ``force_open``,
  ``disable``, ``status``, ``events``, ``settings``, ``cleanup``.
- :class:`Breaker` / :class:`AsyncBreaker`: one breaker as a decorator or context manager,
  with failure / ignored exceptions, a fallback, retries with backoff and jitter, a local copy
  of the open state, and a failure policy for when the database does not answer (let calls
  through, refuse them, or ask a process-local :class:`LocalBreaker` with the rules it is given).
"""

from pgshield.breaker.guard import AsyncBreaker, Breaker, is_transient
from pgshield.breaker.local import LocalBreaker, LocalRules
from pgshield.breaker.methods import Breakers
from pgshield.breaker.methods_async import AsyncBreakers
from pgshield.breaker.results import (
    OUTCOMES,
    STATES,
    BreakerConfig,
    BreakerEvent,
    BreakerOpen,
    BreakerSettings,
    BreakerStatus,
    Decision,
    Guarded,
    Outcome,
    Release,
    State,
)

__all__ = [
    "OUTCOMES",
    "STATES",
    "AsyncBreaker",
    "AsyncBreakers",
    "Breaker",
    "BreakerConfig",
    "BreakerEvent",
    "BreakerOpen",
    "BreakerSettings",
    "BreakerStatus",
    "Breakers",
    "Decision",
    "Guarded",
    "LocalBreaker",
    "LocalRules",
    "Outcome",
    "Release",
    "State",
    "is_transient",
]
