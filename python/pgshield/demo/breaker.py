"""Demo section: a flaky provider trips one shared breaker for 8 workers at once, then recovers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pgshield.breaker import Breaker
from pgshield.client import connect
from pgshield.shield import Shield
from pgshield.text import heading, table

WORKERS = 8
CALLS = 6
NAME = "pgshield_demo:flaky"
OPEN_MS = 400


class Provider:
    """A stand-in for an AI provider: down, then up again; counts the calls that reach it."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, _prompt: str) -> str:
        with self._lock:
            self.calls += 1
        if not self.up:
            raise ConnectionError("503 from the provider")
        return "an answer"


def _together(dsn: str, provider: Provider) -> dict[str, int]:
    """Every worker (its own connection) makes CALLS calls through the shared breaker."""
    barrier = threading.Barrier(WORKERS, timeout=30)
    seen: dict[str, int] = {"answered": 0, "failed": 0, "fallback": 0}
    lock = threading.Lock()

    def worker() -> None:
        with connect(dsn) as conn:
            breaker = Breaker(Shield(conn), NAME, retries=0, fallback=lambda _p: "cached answer")
            barrier.wait()
            for _ in range(CALLS):
                try:
                    result = breaker.run(provider, "hello")
                    key = "fallback" if result.fallback else "answered"
                except ConnectionError:
                    key = "failed"
                with lock:
                    seen[key] += 1

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seen


def run(dsn: str, echo: Callable[[str], None]) -> None:
    echo(heading("circuit breaker: one state for every worker"))
    with connect(dsn) as conn:
        shield = Shield(conn)
        shield.breakers.drop(NAME)  # a fresh breaker, whatever an earlier run left
        shield.breakers.configure(NAME, failure_threshold=5, open_ms=OPEN_MS, success_threshold=1)
        try:
            provider = Provider()
            echo(f"{WORKERS} workers, {CALLS} calls each, against a provider that is down.")
            down = _together(dsn, provider)
            reached_down = provider.calls
            time.sleep(OPEN_MS / 1000 + 0.1)  # the demo waits for the open period on purpose
            provider.up = True
            up = _together(dsn, provider)
            events = list(reversed(shield.breakers.events(NAME, limit=20)))
            rows = [
                {"phase": "provider down", "reached it": reached_down, **down},
                {"phase": "provider back", "reached it": provider.calls - reached_down, **up},
            ]
            echo(table(rows, ["phase", "reached it", "answered", "failed", "fallback"]))
            echo("")
            echo(table([e.__dict__ for e in events], ["from_state", "to_state", "reason"]))
            echo(
                "Five failures trip it once for everybody; the rest get the fallback without a"
                " call.\nAfter the open period one trial call closes it again."
            )
        finally:
            shield.breakers.drop(NAME)
    echo("")
