"""Preparing a database for pgshield: the compat stub, test extensions and the migrations.

Used for the embedded clusters and the tests. Never run against a Supabase project: there the
compat stub refuses to apply, and the migrations are applied by ``pgshield migrate`` alone.
"""

from __future__ import annotations

import psycopg

from pgshield.client import connect
from pgshield.embedded import Cluster
from pgshield.errors import translate
from pgshield.migrations import migrate, pinned_search_path
from pgshield.resources import compat_sql


def available_extensions(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute("select name from pg_available_extensions")}


def prepare_database(dsn: str, *, apply_migrations: bool = True) -> None:
    """Apply the compat stub, create pgtap (when installed) and apply the migrations."""
    with connect(dsn) as conn:
        try:
            with pinned_search_path(conn):
                conn.execute(compat_sql())
                if "pgtap" in available_extensions(conn):
                    conn.execute("create extension if not exists pgtap with schema extensions")
        except psycopg.Error as exc:
            raise translate(exc) from exc
        if apply_migrations:
            migrate(conn)


def prepare_cluster(cluster: Cluster, *, apply_migrations: bool = True) -> str:
    """Make the cluster's ``postgres`` database ready (pg_cron too); return its DSN."""
    dsn = cluster.dsn("postgres")
    with connect(dsn) as conn:
        preloaded = conn.execute("show shared_preload_libraries").fetchone()
        if preloaded and "pg_cron" in preloaded[0]:
            try:
                conn.execute("create extension if not exists pg_cron")
            except psycopg.Error as exc:
                raise translate(exc) from exc
    prepare_database(dsn, apply_migrations=apply_migrations)
    return dsn
