"""Faults: a killed backend and a restarted server never leave the client stuck."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from pgshield import Shield, Unavailable
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
