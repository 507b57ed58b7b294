"""What the migration runner checks before it applies anything: whose schema pgshield is, what
of Supabase the database provides, and whose types the migrations would take over."""

from __future__ import annotations

import re

import psycopg

from pgshield.errors import MigrationError

_CREATE_TYPE = re.compile(r"\bcreate\s+type\s+(public\.[a-z_][a-z0-9_]*)", re.IGNORECASE)


# What the migrations use from a Supabase database, as (kind, name, whether it is there).
_PLATFORM_SQL = """
select x.what, x.present
  from (select to_regnamespace('auth') as ns) n
  cross join lateral (select coalesce(has_schema_privilege(coalesce(n.ns, 0), 'usage'), false))
    u(ok)
  -- A lookup in a schema the role may not use raises: auth's objects are only looked up
  -- where it may (null: not asked).
  cross join lateral (values
    ('role anon', to_regrole('anon') is not null),
    ('role authenticated', to_regrole('authenticated') is not null),
    ('role service_role', to_regrole('service_role') is not null),
    ('role authenticator', to_regrole('authenticator') is not null),
    ('schema auth', n.ns is not null),
    ('usage on schema auth', case when n.ns is not null then u.ok end),
    ('table auth.users', case when u.ok then to_regclass('auth.users') is not null end),
    ('function auth.uid()', case when u.ok then to_regprocedure('auth.uid()') is not null end)
  ) x(what, present)
"""


def refuse_foreign_schema(conn: psycopg.Connection) -> None:
    """Refuse to start when schema pgshield exists and belongs to a role the migrator is not.

    The core migration creates the schema only when it is missing, so one made beforehand by
    another role would be kept, and its owner could replace the functions the pack's security
    definer functions call (they would then run that code as the migrator).
    """
    # Yours: you own it, a superuser does, or you are a member of its owner (for a superuser
    # every role counts as one: that proves nothing).
    row = conn.execute(
        "select n.nspowner::regrole::text,"
        "       n.nspowner = u.oid or o.rolsuper"
        "       or (not u.rolsuper and pg_has_role(u.oid, n.nspowner, 'member'))"
        "  from pg_namespace n"
        "  join pg_roles o on o.oid = n.nspowner"
        " cross join (select r.oid, r.rolsuper from pg_roles r where r.rolname = current_user) u"
        " where n.nspname = 'pgshield'"
    ).fetchone()
    if row is not None and not row[1]:
        raise MigrationError(
            f"refusing to migrate: schema pgshield exists and belongs to {row[0]}, not to you",
            sqlstate="42501",
            hint="it was not created by this role's migrations: find out who made it, drop it,"
            " then migrate again (or migrate as its owner)",
        )


def refuse_missing_platform(conn: psycopg.Connection) -> None:
    """Refuse to start on a database without what Supabase provides (nothing applied yet).

    On plain Postgres the migrations would otherwise stop part way (the teams module needs
    ``auth.users``), leaving a half-installed pack. ``pgshield migrate --with-compat`` applies the
    compat stub that stands in for them.
    """
    rows = conn.execute(_PLATFORM_SQL).fetchall()
    missing = [what for what, present in rows if present is False]
    if missing:
        raise MigrationError(
            "this database lacks what Supabase provides and the pack uses: " + ", ".join(missing),
            hint="on plain Postgres (not a Supabase project) add --with-compat, which applies"
            " pgshield's Supabase compat stub first",
        )


def refuse_foreign_types(conn: psycopg.Connection, pending_sql: list[str]) -> None:
    """Refuse to start when a type the pack creates in public exists with another owner.

    The migrations create a type only when it is missing, so a look-alike made beforehand by
    someone else (say, with a field whose domain CHECK calls their function) would be kept and
    would run its owner's code inside the pack's functions. Checked before anything is applied;
    the migrations check the fields too (pgshield.assert_pack_type), for ``supabase db push``.
    """
    names = sorted({n.lower() for sql in pending_sql for n in _CREATE_TYPE.findall(sql)})
    if not names:
        return
    rows = conn.execute(
        """
        select n.name, t.typowner::regrole::text
          from unnest(%(names)s::text[]) n(name)
          join pg_catalog.pg_type t on t.oid = pg_catalog.to_regtype(n.name)
         where t.typowner <> coalesce(
                 (select nspowner from pg_catalog.pg_namespace where nspname = 'pgshield'),
                 (select oid from pg_catalog.pg_roles where rolname = current_user))
        """,
        {"names": names},
    ).fetchall()
    if rows:
        found = ", ".join(f"{name} (owner {owner})" for name, owner in rows)
        raise MigrationError(
            f"refusing to migrate: {found} already exists and was not created by pgshield",
            sqlstate="42501",
            hint="it is not yours: find out who made it, drop it, then migrate again",
        )
