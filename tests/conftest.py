"""Test backends and per-test databases.

Backends, in order: ``PGSHIELD_TEST_DSN`` (an existing server: the session creates and drops
its own databases), then the embedded local binaries, or a testcontainers Postgres when
``PGSHIELD_TEST_BACKEND=docker`` (image: ``PGSHIELD_TEST_IMAGE``, default postgres:15).
Every test gets a fresh database cloned from a migrated template.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import conninfo, sql

from pgshield.client import connect
from pgshield.migrations import migrate
from pgshield.provision import prepare_database
from support import SUPABASE_POSTGRES, Backend, as_user


@contextlib.contextmanager
def _docker_backend() -> Iterator[Backend]:
    from testcontainers.postgres import PostgresContainer  # optional: pip install .[docker]

    image = os.environ.get("PGSHIELD_TEST_IMAGE", "postgres:15")
    with PostgresContainer(image, username="postgres", password="postgres", driver=None) as pg:
        yield Backend(pg.get_connection_url())


@contextlib.contextmanager
def _embedded_backend() -> Iterator[Backend]:
    from pgshield.embedded import throwaway_cluster
    from pgshield.provision import prepare_cluster

    with throwaway_cluster("pgshield-test-") as cluster:
        prepare_cluster(cluster, apply_migrations=False)
        yield Backend(cluster.dsn())


@pytest.fixture(scope="session")
def backend() -> Iterator[Backend]:
    """The server the session's databases live on."""
    if os.environ.get("PGSHIELD_TEST_DSN"):
        yield Backend(os.environ["PGSHIELD_TEST_DSN"])
    elif os.environ.get("PGSHIELD_TEST_BACKEND") == "docker":
        with _docker_backend() as b:
            yield b
    else:
        with _embedded_backend() as b:
            yield b


def _template(backend: Backend, *, migrated: bool) -> Iterator[str]:
    name = f"pgshield_tpl_{'m' if migrated else 'c'}_{uuid.uuid4().hex[:8]}"
    dsn = backend.create(name)
    try:
        prepare_database(dsn, apply_migrations=migrated)
        yield name
    finally:
        backend.drop(name)


@pytest.fixture(scope="session")
def template_db(backend: Backend) -> Iterator[str]:
    """A database with the compat stub, pgtap and every migration applied."""
    yield from _template(backend, migrated=True)


@pytest.fixture(scope="session")
def bare_template_db(backend: Backend) -> Iterator[str]:
    """A database with the compat stub and pgtap, but no pgshield migration."""
    yield from _template(backend, migrated=False)


@pytest.fixture(scope="session")
def supabase_template_db(backend: Backend) -> Iterator[str]:
    """A migrated database set up the way hosted Supabase is: owned by ``supabase_postgres``.

    The superuser applies the compat stub and pgtap (the platform's part, which also creates the
    role); the migrations are then applied by ``supabase_postgres``, a non-superuser, as
    ``supabase db push`` or ``pgshield migrate`` do as hosted Supabase's ``postgres``. Clone it
    with ``owner=SUPABASE_POSTGRES`` and connect with ``as_user(dsn, SUPABASE_POSTGRES)``.
    """
    name = f"pgshield_tpl_s_{uuid.uuid4().hex[:8]}"
    dsn = backend.create(name)
    try:
        prepare_database(dsn, apply_migrations=False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("alter database {} owner to {}").format(
                    sql.Identifier(name), sql.Identifier(SUPABASE_POSTGRES)
                )
            )
            # Where the server asks for a password, the role gets the admin's (trust: unused).
            password = conninfo.conninfo_to_dict(backend.admin_dsn).get("password")
            if password:
                conn.execute(
                    sql.SQL("alter role {} password {}").format(
                        sql.Identifier(SUPABASE_POSTGRES), sql.Literal(password)
                    )
                )
        with connect(as_user(dsn, SUPABASE_POSTGRES)) as conn:
            user = conn.execute(
                "select current_user, usesuper from pg_user where usename = current_user"
            ).fetchone()
            assert user == (SUPABASE_POSTGRES, False), user
            migrate(conn)
        yield name
    finally:
        backend.drop(name)


@pytest.fixture
def db(backend: Backend, template_db: str) -> Iterator[str]:
    """DSN of a fresh, fully migrated database for this test."""
    with backend.clone(template_db) as dsn:
        yield dsn


@pytest.fixture
def bare_db(backend: Backend, bare_template_db: str) -> Iterator[str]:
    """DSN of a fresh database with the compat stub but without the pack."""
    with backend.clone(bare_template_db) as dsn:
        yield dsn


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to ``db`` as the owner (postgres)."""
    with psycopg.connect(db, autocommit=True) as c:
        yield c
