"""Helpers the tests share: acting as a Supabase role, and test database backends."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import conninfo, sql

# The compat stub's stand-in for hosted Supabase's ``postgres`` (NOSUPERUSER CREATEROLE CREATEDB
# REPLICATION BYPASSRLS, member of anon, authenticated and service_role): see
# sql/compat/supabase.sql. The embedded cluster's superuser already has the name postgres.
SUPABASE_POSTGRES = "supabase_postgres"


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server, another database."""
    return conninfo.make_conninfo(dsn, dbname=dbname)


def as_user(dsn: str, user: str) -> str:
    """The same server and database, logged in as another role (same password, if any)."""
    return conninfo.make_conninfo(dsn, user=user)


class Backend:
    """A server where the tests create and drop their own databases."""

    def __init__(self, admin_dsn: str):
        self.admin_dsn = admin_dsn

    def dsn(self, dbname: str) -> str:
        return with_dbname(self.admin_dsn, dbname)

    def create(self, name: str, template: str | None = None, owner: str | None = None) -> str:
        """Create a database (as a copy of ``template``, owned by ``owner``); return its DSN."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            query = sql.SQL("create database {}").format(sql.Identifier(name))
            if template:
                query = sql.SQL("{} template {}").format(query, sql.Identifier(template))
            if owner:
                query = sql.SQL("{} owner {}").format(query, sql.Identifier(owner))
            if template and conn.info.server_version >= 150000:
                # A copy of the files (one checkpoint) is a third quicker than WAL_LOG, PG15's
                # default, for a small template: every test makes one.
                query = sql.SQL("{} strategy file_copy").format(query)
            conn.execute(query)
        return self.dsn(name)

    def drop(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )

    @contextlib.contextmanager
    def clone(
        self, template: str, prefix: str = "pgshield_t_", owner: str | None = None
    ) -> Iterator[str]:
        """A copy of ``template`` for the block (owned by ``owner``: a copy keeps no owner)."""
        name = f"{prefix}{uuid.uuid4().hex[:12]}"
        dsn = self.create(name, template, owner)
        try:
            yield dsn
        finally:
            self.drop(name)


@contextlib.contextmanager
def act_as(
    conn: psycopg.Connection,
    role: str,
    *,
    sub: str | uuid.UUID | None = None,
    claims: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    path: str | None = None,
) -> Iterator[psycopg.Connection]:
    """Inside one transaction, act as a Supabase API role the way PostgREST does.

    With ``method`` GET or HEAD the transaction is read only, as PostgREST runs them.
    """
    all_claims = {"role": role, **({"sub": str(sub)} if sub else {}), **(claims or {})}
    with conn.transaction():
        if method in ("GET", "HEAD"):
            conn.execute("set transaction read only")
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(all_claims),))
        if headers is not None:
            conn.execute("select set_config('request.headers', %s, true)", (json.dumps(headers),))
        if method is not None:
            conn.execute("select set_config('request.method', %s, true)", (method,))
        if path is not None:
            conn.execute("select set_config('request.path', %s, true)", (path,))
        yield conn


def run_threads(
    count: int, work: Callable[[int, threading.Barrier], None], *, join_timeout: float = 180
) -> None:
    """Run ``work(i, barrier)`` in ``count`` threads that start together; re-raise failures."""
    barrier = threading.Barrier(count, timeout=60)
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            work(i, barrier)
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join_timeout)
    assert not any(t.is_alive() for t in threads), "a worker thread is still running"
    assert not errors, errors[:3]


def wait_for_lock_wait(conn: psycopg.Connection, pid: int, timeout: float = 10) -> None:
    """Return once backend ``pid`` waits for a lock (seen from ``conn``); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "select wait_event_type from pg_stat_activity where pid = %s", (pid,)
        ).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")
