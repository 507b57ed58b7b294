"""Faults: a killed or frozen backend and a restarted server never leave the client stuck."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgshield import AsyncShield, Shield, Unavailable
from pgshield.client import DEADLINE_GRACE, Op
from pgshield.embedded import Cluster
from pgshield.provision import prepare_cluster


def test_killed_backend_fails_one_call_then_reconnects(db: str, conn: psycopg.Connection) -> None:
    with Shield(db) as shield:
        first = shield.version()
        pid = shield._conn.info.backend_pid  # type: ignore[union-attr]
        conn.execute("select pg_terminate_backend(%s)", (pid,))
        with pytest.raises(Unavailable):
            shield.version()  # never retried blindly: the call may have been a write
        assert shield.version() == first  # a new connection
        assert shield._conn.info.backend_pid != pid  # type: ignore[union-attr]


def test_server_restart_and_outage() -> None:
    base = Path(tempfile.mkdtemp(prefix="pgshield-fault-"))
    cluster = Cluster(base, fast=True)
    try:
        dsn = prepare_cluster(cluster.start())
        with Shield(dsn, timeout=2) as shield:
            version = shield.version()
            cluster.stop()
            with pytest.raises(Unavailable):
                shield.version()
            with pytest.raises(Unavailable):
                shield.version()  # still down: a clear error again, no hang
            cluster.start()
            assert shield.version() == version
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The backend ``pid`` frozen with SIGSTOP: it neither answers nor handles a cancel."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("timeout", [0.5, 2.0])
def test_timeout_bounds_a_call_on_a_frozen_backend(db: str, timeout: float) -> None:
    with Shield(db, timeout=timeout) as shield:
        version = shield.version()
        pid = shield._conn.info.backend_pid  # type: ignore[union-attr]
        with stopped(pid):
            started = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                shield.version()
            waited = time.monotonic() - started
        assert "no answer" in str(caught.value)
        # Bounded by timeout + grace (the server's own statement_timeout cannot fire here);
        # the upper bound is generous for a loaded CI machine, the point is "not 35 s".
        assert timeout <= waited < timeout + DEADLINE_GRACE + 2.0, waited
        assert shield.version() == version  # a new connection afterwards


def test_timeout_bounds_a_call_in_the_callers_connection(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as mine, Shield(mine, timeout=0.5) as shield:
        with stopped(mine.info.backend_pid):
            started = time.monotonic()
            with pytest.raises(Unavailable):
                shield.version()
            assert time.monotonic() - started < 0.5 + DEADLINE_GRACE + 2.0
        assert mine.broken  # the caller's connection is closed under the stuck call


def test_async_timeout_bounds_a_call_on_a_frozen_backend(db: str) -> None:
    async def scenario() -> float:
        async with AsyncShield(db, timeout=0.5) as shield:
            version = await shield.version()
            pid = shield._conn.info.backend_pid  # type: ignore[union-attr]
            with stopped(pid):
                started = time.monotonic()
                with pytest.raises(Unavailable):
                    await shield.version()
                waited = time.monotonic() - started
            assert await shield.version() == version
            return waited

    waited = asyncio.run(scenario())
    assert 0.5 <= waited < 0.5 + DEADLINE_GRACE + 2.0, waited


def test_a_slow_but_live_server_answers_with_its_statement_timeout(db: str) -> None:
    with Shield(db, timeout=0.3) as shield:
        with pytest.raises(Unavailable) as caught:
            shield.call(Op("select pg_sleep(5)"))
        assert caught.value.sqlstate == "57014"  # the server's answer, not the client's cut
        assert shield.version()
