"""The guard on a read replica: Supabase's API load balancer sends GET requests to replicas.

A real streaming standby of a throw-away primary (``pg_basebackup -R``), driven the way PostgREST
calls the hook on it: a read-only transaction, the request's role, claims, method and path. With
the default unlogged state the standby cannot read the counts at all, so a guarded read passes
unchecked there instead of failing (it failed with 0A000); once the state is logged, the standby
checks reads against the replicated counts.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgshield.embedded import Cluster, free_port, throwaway_cluster
from pgshield.provision import prepare_cluster
from test_guard import request

OVER = uuid.UUID("7e9a0000-0000-4000-8000-0000000000a1")  # used up on the primary
FRESH = uuid.UUID("7e9a0000-0000-4000-8000-0000000000b2")  # never seen
PATH = "/pgshield_t_todos"
ADDRESS = {"x-forwarded-for": "203.0.113.9"}


def read(conn: psycopg.Connection, role: str, sub: uuid.UUID | None, method: str = "GET"):
    """One PostgREST read (a read-only transaction) through the hook."""
    return request(conn, method=method, path=PATH, role=role, sub=sub, headers=ADDRESS)


@contextlib.contextmanager
def standby_of(primary: Cluster) -> Iterator[str]:
    """A hot standby streaming from ``primary``; yields its DSN."""
    base = Path(tempfile.mkdtemp(prefix="pgshield-standby-"))
    base.chmod(0o777)
    data, sockets, log = base / "data", base / "sock", base / "log"
    sockets.mkdir(mode=0o777)
    sockets.chmod(0o777)
    log.touch()
    log.chmod(0o666)
    out = primary._cmd(
        [
            str(primary.bindir / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(data),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
        ]
    )
    assert out.returncode == 0, out.stderr
    port = free_port()
    with open(data / "postgresql.auto.conf", "a") as fh:
        # pg_cron's launcher is not needed on the standby.
        fh.write(
            f"\nport = {port}\nunix_socket_directories = '{sockets}'\nhot_standby = on\n"
            "shared_preload_libraries = ''\n"
        )
    pg_ctl = str(primary.bindir / "pg_ctl")
    out = primary._cmd([pg_ctl, "start", "-w", "-t", "60", "-D", str(data), "-l", str(log)])
    assert out.returncode == 0, (out.stderr, log.read_text()[-2000:])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        primary._cmd([pg_ctl, "stop", "-w", "-m", "fast", "-D", str(data)])
        shutil.rmtree(base, ignore_errors=True)


def replayed(standby: psycopg.Connection, primary: psycopg.Connection) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    lsn = primary.execute("select pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = standby.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[
            0
        ]  # type: ignore[index]
        if done:
            return
        time.sleep(0.05)
    raise AssertionError(f"the standby did not replay {lsn} in 30 s")


@pytest.mark.slow
def test_a_guarded_read_on_a_replica_never_fails_and_checks_logged_state() -> None:
    with throwaway_cluster("pgshield-test-primary-") as cluster:
        dsn = prepare_cluster(cluster)
        with psycopg.connect(dsn, autocommit=True) as primary:
            primary.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
            primary.execute(
                "select public.define_rate_limit_policy('pgshield_t_reads',"
                " '{\"t\": {\"3600\": 2}}', p_algorithm => 'fixed_window',"
                " p_default_tier => 't', p_allow_anonymous => true)"
            )
            primary.execute(
                "select pgshield.define_guard_rule('pgshield_t_reads', '*', 'GET',"
                " '/pgshield_t_todos')"
            )
            with primary.transaction():
                primary.execute("set local role service_role")
                for _ in range(2):
                    primary.execute(
                        "select public.check_rate_limit('pgshield_t_reads', 1, null, %s)",
                        (str(OVER),),
                    )
            assert primary.execute("select pgshield.rate_limit_storage()").fetchone() == (
                "unlogged",
            )
            assert read(primary, "authenticated", OVER).status == 429
            with (
                standby_of(cluster) as standby_dsn,
                psycopg.connect(standby_dsn, autocommit=True) as standby,
            ):
                assert standby.execute("select pg_is_in_recovery()").fetchone() == (True,)
                replayed(standby, primary)
                # Unlogged: the replica cannot see the counts; reads pass, unchecked and
                # unannounced, instead of failing with 0A000.
                for role, sub in (
                    ("authenticated", OVER),
                    ("authenticated", FRESH),
                    ("anon", None),
                ):
                    for method in ("GET", "HEAD"):
                        answer = read(standby, role, sub, method)
                        assert (answer.status, answer.headers) == (200, {}), (role, method)
                # Logged: the replica checks reads against the replicated counts.
                primary.execute("select pgshield.set_rate_limit_storage('logged')")
                replayed(standby, primary)
                denied = read(standby, "authenticated", OVER)
                assert denied.status == 429, denied
                assert denied.headers["RateLimit"].endswith(";r=0;t=3590")
                allowed = read(standby, "authenticated", FRESH, "HEAD")
                assert allowed.status == 200, allowed
                assert allowed.headers["RateLimit"] == '"pgshield_t_reads-hour";r=1;t=3590'
            # Nothing the replica read was counted on the primary: still two for OVER only.
            counts = primary.execute(
                "select s.subject, s.counts from pgshield.rate_limit_policy_state s"
                " where s.policy = 'pgshield_t_reads' order by s.subject"
            ).fetchall()
            assert counts == [(str(OVER), [2])]
