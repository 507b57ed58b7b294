"""Upgrades are tested with data: from the last release, filled as its users have it, to HEAD.

A database is built from the last release's migrations only and given live state: user-defined
policies (tiers, windows, endpoint costs) for every algorithm, subject tiers, direct keys and
policy subjects with room and exhausted, moved decision counters, state written in both storage
modes and a registered JSONB target. The later migrations then run, and the test requires that
the state, the configuration and every dry-run decision are unchanged, that real decisions carry
on exactly where they were, that the JSONB fast path survived, and that the whole pgTAP suite
passes on the upgraded database. A test of the test runs the same checks over deliberately broken
deltas and requires them to fail where they should.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

import pgshield
from pgshield.cli import main
from pgshield.migrations import Migration, discover, migrate
from pgshield.resources import migrations_dir, release_of, releases
from support import Backend, act_as
from tap import run_pgtap_file

RELEASE = releases()[-1]
# Where the migrations come from (None: the pack's). The test of the test passes broken copies.
MIGRATIONS_DIR: Path | None = None
PGTAP_FILES = sorted(
    p for p in (Path(__file__).parent / "pgtap").glob("*.sql") if not p.name.startswith("_")
)
# The data is written at two frozen times, a minute apart (sliding windows then weigh the
# previous window, token buckets have refilled a little), and judged at the second one.
PHASE_1 = "2029-01-01 00:00:10+00"
PHASE_2 = "2029-01-01 00:01:20+00"

ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket")
POLICY_WINDOWS = {"free": {"10": 3, "minute": 5, "hour": 20}, "team": {"minute": 12, "day": 100}}
ENDPOINT_COSTS = {"/v1/chat": 2, "/v1/embed": 0.5}
TIERS = {"user-team": "team", "user-pro": "pro"}  # pro: a tier of the shipped api policy
# (name, limit, window seconds) of the direct keys, one of each per algorithm.
DIRECT_KEYS = (("room", 10, 60), ("full", 3, 3600), ("heavy", 10, 60))
SUBJECTS = ("user-free", "user-team", "user-x", "user-new")
DOC_IDS = (
    "00000000-0000-4000-8000-000000000001",
    "00000000-0000-4000-8000-000000000002",
    "00000000-0000-4000-8000-000000000003",
)
FAST_PATH_BRANCH = "public.pgshield_u_docs as t set"  # `update only` since 20261203170000

Snapshot = dict[str, Any]


def policy(algorithm: str) -> str:
    return f"u-{algorithm.split('_')[0]}"


def key(algorithm: str, name: str) -> str:
    return f"{algorithm}:{name}"


def split_migrations(directory: Path | None) -> tuple[list[Migration], list[Migration]]:
    """The last release's migrations and the later ones, in version order."""
    every = discover(directory)
    released = [m for m in every if m.filename in RELEASE.migrations]
    assert sorted(m.filename for m in released) == sorted(RELEASE.migrations)
    return released, [m for m in every if m.filename not in RELEASE.migrations]


@pytest.fixture
def released_db(backend: Backend, bare_template_db: str) -> Iterator[str]:
    """A fresh database with exactly the last release's migrations applied."""
    with backend.clone(bare_template_db, prefix="pgshield_up_") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            released, _ = split_migrations(MIGRATIONS_DIR)
            assert migrate(conn, migrations=released) == released
        yield dsn


# --------------------------------------------------------------------- data ----
def one(conn: psycopg.Connection, query: str, params: dict[str, Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def increment(
    conn: psycopg.Connection, algorithm: str, name: str, times: int, cost: int = 1
) -> None:
    _, limit, window = next(k for k in DIRECT_KEYS if k[0] == name)
    for _ in range(times):
        conn.execute(
            "select public.increment_rate_limit(%(k)s::text, %(l)s::integer, %(w)s::integer,"
            " %(c)s::integer, %(a)s::text)",
            {"k": key(algorithm, name), "l": limit, "w": window, "c": cost, "a": algorithm},
        )


def check(
    conn: psycopg.Connection, name: str, subject: str, times: int, endpoint: str | None = None
) -> None:
    for _ in range(times):
        conn.execute(
            "select public.check_rate_limit(%(p)s::text, 1, %(e)s::text, %(s)s::text)",
            {"p": name, "e": endpoint, "s": subject},
        )


def fill(conn: psycopg.Connection, first_mode: str, second_mode: str) -> None:
    """State as a user of the release has it; written in first_mode, then in second_mode."""
    conn.execute("select pgshield.set_clock(%(t)s::timestamptz)", {"t": PHASE_1})
    assert one(conn, "select pgshield.set_rate_limit_storage(%(m)s::text)", {"m": first_mode}) == (
        first_mode
    )
    for algorithm in ALGORITHMS:
        conn.execute(
            "select public.define_rate_limit_policy(%(n)s::text, %(w)s::jsonb, %(a)s::text,"
            " 'requests', 'free', false, %(e)s::jsonb, 'upgrade test: ' || %(a)s::text)",
            {
                "n": policy(algorithm),
                "w": Jsonb(POLICY_WINDOWS),
                "a": algorithm,
                "e": Jsonb(ENDPOINT_COSTS),
            },
        )
    for subject, tier in TIERS.items():
        conn.execute("select public.set_rate_limit_tier(%s::text, %s::text)", (subject, tier))
    for algorithm in ALGORITHMS:
        increment(conn, algorithm, "room", 3)
        increment(conn, algorithm, "full", 4)  # the fourth is denied
        check(conn, policy(algorithm), "user-free", 1, "/v1/chat")  # costs 2
        check(conn, policy(algorithm), "user-team", 13)  # the 13th is denied
    check(conn, "api", "user-pro", 5)
    conn.execute("select public.record_rate_limit_usage('ai_tokens', 'user-free', 1234)")
    conn.execute(
        "create table public.pgshield_u_docs"
        " (id uuid primary key, body jsonb not null default '{}')"
    )
    conn.execute(
        "insert into public.pgshield_u_docs (id, body) select u::uuid, jsonb_build_object('n', o)"
        " from unnest(%s::text[]) with ordinality as d(u, o)",
        (list(DOC_IDS),),
    )
    assert one(conn, "select pgshield.register_jsonb_target('public.pgshield_u_docs', 'body')")
    conn.execute(
        "select public.merge_jsonb('pgshield_u_docs', %s, '{\"tags\": [\"a\"]}')", (DOC_IDS[0],)
    )

    conn.execute("select pgshield.set_clock(%(t)s::timestamptz)", {"t": PHASE_2})
    assert one(conn, "select pgshield.set_rate_limit_storage(%(m)s::text)", {"m": second_mode}) == (
        second_mode
    )
    for algorithm in ALGORITHMS:
        increment(conn, algorithm, "room", 2)
        increment(conn, algorithm, "full", 1)  # still denied
        increment(conn, algorithm, "heavy", 2, cost=4)
        check(conn, policy(algorithm), "user-free", 1)
        check(conn, policy(algorithm), "user-team", 2)
        check(conn, policy(algorithm), "user-x", 4, "/v1/embed")  # costs 1; the 4th is denied
    conn.execute("select public.merge_jsonb('pgshield_u_docs', %s, '{\"n\": null}')", (DOC_IDS[1],))


# ----------------------------------------------------------------- snapshot ----
def peeks(conn: psycopg.Connection) -> list[Any]:
    """The dry-run decisions the state gives (an error is recorded as its SQLSTATE)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    for algorithm in ALGORITHMS:
        for name, limit, window in (*DIRECT_KEYS, ("unseen", 5, 60)):
            for cost in (1, limit):
                calls.append(
                    (
                        "select to_jsonb(public.peek_rate_limit(%(k)s::text, %(l)s::integer,"
                        " %(w)s::integer, %(c)s::integer, %(a)s::text))",
                        {
                            "k": key(algorithm, name),
                            "l": limit,
                            "w": window,
                            "c": cost,
                            "a": algorithm,
                        },
                    )
                )
        for subject in SUBJECTS:
            for endpoint in (None, "/v1/chat"):
                calls.append(
                    (
                        "select to_jsonb(public.peek_check_rate_limit(%(p)s::text, 1, %(e)s::text,"
                        " %(s)s::text))",
                        {"p": policy(algorithm), "e": endpoint, "s": subject},
                    )
                )
    calls.append(("select to_jsonb(public.peek_check_rate_limit('api', 1, null, 'user-pro'))", {}))
    calls.append(
        ("select to_jsonb(public.peek_check_rate_limit('ai_tokens', 1000, null, 'user-free'))", {})
    )
    answers: list[Any] = []
    for query, params in calls:
        try:
            answers.append(one(conn, query, params))
        except psycopg.Error as exc:
            answers.append({"error": exc.sqlstate})
    return answers


SNAPSHOT_QUERIES = {
    # What the state means (policy state moved to one row per subject in 20261202070000):
    # every window that counts something, as the usage view evaluates it.
    "state": "select key, coalesce(policy, ''), window_seconds, algorithm, \"limit\", used,"
    " remaining, reset_at"
    " from pgshield.rate_limit_usage where used <> 0 order by 1, 2, 3",
    "policies": "select public.get_rate_limit_policies(), (select jsonb_agg(jsonb_build_array("
    "name, id, allowed_counter::text, denied_counter::text, updated_at) order by name)"
    " from pgshield.rate_limit_policies)",
    "tiers": "select subject, tier, updated_at from pgshield.rate_limit_subject_tiers order by 1",
    "counters": "select policy, allowed, denied from pgshield.rate_limit_counters order by 1",
    "storage": "select pgshield.rate_limit_storage(), c.oid::regclass::text, c.relpersistence"
    " from pg_catalog.pg_class c"
    " where c.oid in (select 'pgshield.rate_limit_direct_allowed'::regclass"
    " union all select 'pgshield.rate_limit_direct_denied'::regclass"
    " union all select allowed_counter from pgshield.rate_limit_policies"
    " union all select denied_counter from pgshield.rate_limit_policies)"
    " union all select pgshield.rate_limit_storage(), 'state tables', c.relpersistence"
    " from pg_catalog.pg_class c where c.oid in (select 'pgshield.rate_limit_state'::regclass"
    " union all select to_regclass('pgshield.rate_limit_policy_state')) group by 3 order by 2",
    "targets": "select table_name, column_name, key_column, registered_at, problem"
    " from pgshield.list_jsonb_targets()",
    "documents": "select id, body from public.pgshield_u_docs order by id",
    "fast_path": "select p.prosrc like '%%' || %(branch)s || '%%' from pg_catalog.pg_proc p"
    " where p.oid = 'pgshield.jsonb_merge_fast(text,jsonb,text[],text,text)'::regprocedure",
}


def snapshot(conn: psycopg.Connection) -> Snapshot:
    """Everything a user of the release relies on, read as the owner at PHASE_2."""
    conn.execute("select pgshield.set_clock(%(t)s::timestamptz)", {"t": PHASE_2})
    taken: Snapshot = {
        name: conn.execute(query, {"branch": FAST_PATH_BRANCH}).fetchall()
        for name, query in SNAPSHOT_QUERIES.items()
    }
    taken["decisions"] = peeks(conn)
    return taken


def changed(before: Snapshot, after: Snapshot, *, ignore: tuple[str, ...] = ()) -> list[str]:
    return sorted(name for name in before if name not in ignore and before[name] != after[name])


def upgrade(conn: psycopg.Connection, directory: Path | None) -> list[str]:
    """Apply every pending migration; require exactly the post-release ones, in order."""
    _, later = split_migrations(directory)
    applied = migrate(conn, migrations=discover(directory))
    assert [m.filename for m in applied] == [m.filename for m in later]
    return [m.filename for m in applied]


def upgrade_with_data(
    conn: psycopg.Connection, storage: str, directory: Path | None
) -> tuple[Snapshot, Snapshot]:
    """Fill a released database (ending in ``storage``), upgrade it: the snapshots around it."""
    fill(conn, "logged" if storage == "unlogged" else "unlogged", storage)
    before = snapshot(conn)
    # What fill() leaves, so that the checks below are about this much state.
    assert before["counters"] == [
        ("", 30, 6),
        ("ai_tokens", 0, 0),
        ("api", 5, 0),
        *((policy(a), 19, 2) for a in ALGORITHMS),
    ]
    rows: dict[tuple[str, str], int] = {}
    for row in before["state"]:
        rows[(row[1], row[3])] = rows.get((row[1], row[3]), 0) + 1
    assert rows == {
        **{("", a): 3 for a in ALGORITHMS},
        **{(policy(a), a): 8 for a in ALGORITHMS},
        ("ai_tokens", "fixed_window"): 1,
        ("api", "sliding_window"): 3,
    }
    persistence = "u" if storage == "unlogged" else "p"
    assert {(mode, p) for mode, _, p in before["storage"]} == {(storage, persistence)}
    assert before["fast_path"] == [(True,)], "the release's fast path has the target"
    assert one(conn, "select pgshield.version()") == RELEASE.version
    upgrade(conn, directory)
    return before, snapshot(conn)


# ------------------------------------------------------------ continuation ----
def exhaust(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> tuple[int, Any]:
    """Repeat a decision until it is denied: (how many were admitted, the denial)."""
    for admitted in range(1000):
        result = one(conn, query, params)
        if not result["allowed"]:
            return admitted, result
    raise AssertionError(f"never denied: {query} {params}")


def counters(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    rows = conn.execute("select policy, allowed, denied from pgshield.rate_limit_counters")
    return {p: (a, d) for p, a, d in rows}


def continue_deciding(conn: psycopg.Connection, peeked: list[Any]) -> None:
    """As service_role: every key and subject admits exactly what the peeks said, then denies."""
    by_call: dict[tuple[str, str, int], Any] = {}
    for answer in peeked:
        if "key" in answer:
            by_call[(answer["algorithm"], answer["key"], answer["cost"])] = answer
        elif answer.get("policy", "").startswith("u-") and answer["cost"] == 1:
            by_call.setdefault((answer["policy"], answer["subject"], 1), answer)
    start = counters(conn)
    moved: dict[str, list[int]] = {}
    with act_as(conn, "service_role"):
        for algorithm in ALGORITHMS:
            for name, limit, window in (*DIRECT_KEYS, ("unseen", 5, 60)):
                peek = by_call[(algorithm, key(algorithm, name), 1)]
                admitted, denial = exhaust(
                    conn,
                    "select to_jsonb(public.increment_rate_limit(%(k)s::text, %(l)s::integer,"
                    " %(w)s::integer, 1, %(a)s::text))",
                    {"k": key(algorithm, name), "l": limit, "w": window, "a": algorithm},
                )
                # remaining counts what still fits after the peeked request itself.
                assert admitted == (peek["remaining"] + 1 if peek["allowed"] else 0), peek
                if not peek["allowed"]:  # exhausted: denied just as the peek said
                    assert denial == peek
                moved.setdefault("", [0, 0])[0] += admitted
                moved[""][1] += 1
            for subject in SUBJECTS:
                peek = by_call[(policy(algorithm), subject, 1)]
                admitted, denial = exhaust(
                    conn,
                    "select to_jsonb(public.check_rate_limit(%(p)s::text, 1, null, %(s)s::text))",
                    {"p": policy(algorithm), "s": subject},
                )
                assert admitted == (peek["remaining"] + 1 if peek["allowed"] else 0), peek
                if not peek["allowed"]:
                    assert denial == peek
                moved.setdefault(policy(algorithm), [0, 0])[0] += admitted
                moved[policy(algorithm)][1] += 1
        end = counters(conn)
    expected = {
        p: (a + moved.get(p, [0, 0])[0], d + moved.get(p, [0, 0])[1]) for p, (a, d) in start.items()
    }
    assert end == expected


def merge_still_fast(conn: psycopg.Connection) -> None:
    """The generated fast path takes the registered table, and merge_jsonb uses it."""
    fast = one(
        conn,
        "select pgshield.jsonb_merge_fast(%s, '{\"v\": 2}', '{}', null, 'pgshield_u_docs')",
        (DOC_IDS[2],),
    )
    assert fast == {"n": 3, "v": 2}, "the fast path has no branch for the registered table"
    merged = one(
        conn, "select public.merge_jsonb('pgshield_u_docs', %s, '{\"v\": 3}')", (DOC_IDS[2],)
    )
    assert merged == {"n": 3, "v": 3}


# -------------------------------------------------------------------- tests ----
@pytest.mark.slow
@pytest.mark.parametrize("storage", ["unlogged", "logged"])
def test_upgrade_from_the_last_release_keeps_live_state(released_db: str, storage: str) -> None:
    with psycopg.connect(released_db, autocommit=True) as conn:
        before, after = upgrade_with_data(conn, storage, MIGRATIONS_DIR)
        diff = changed(before, after)
        assert diff == [], {name: (before[name], after[name]) for name in diff}
        assert one(conn, "select pgshield.version()") == pgshield.__version__

        continue_deciding(conn, after["decisions"])
        merge_still_fast(conn)
        decided = snapshot(conn)

        # The whole pgTAP suite, on the clock a real project has (no clock row).
        conn.execute("select pgshield.reset_clock()")
        assert PGTAP_FILES, "no pgTAP files"
        results = [run_pgtap_file(released_db, path) for path in PGTAP_FILES]
        failed = [r.report() for r in results if not r.ok]
        if failed:
            pytest.fail("\n".join(failed), pytrace=False)

        # The files roll back: the upgraded state is still intact. Decision counters are
        # sequences, which a rollback does not undo: they may only have moved forward.
        final = snapshot(conn)
        assert changed(decided, final, ignore=("counters",)) == []
        assert [r[0] for r in final["counters"]] == [r[0] for r in decided["counters"]]
        assert all(
            a >= a0 and d >= d0
            for (_, a, d), (_, a0, d0) in zip(final["counters"], decided["counters"], strict=True)
        )


def test_cli_migrate_upgrades_a_released_database(released_db: str) -> None:
    _, later = split_migrations(None)
    with psycopg.connect(released_db, autocommit=True) as conn:
        fill(conn, "unlogged", "logged")
        before = snapshot(conn)
    result = CliRunner().invoke(main, ["migrate", "--dsn", released_db])
    assert result.exit_code == 0, result.output
    # It names what it applies, with the release each file belongs to, and the versions.
    last = releases()[-1].version
    assert result.output.splitlines() == [
        *(f"applying {m.filename} ({release_of(m.filename) or 'unreleased'})" for m in later),
        f"applied {len(later)} migration(s): pack {last} -> {pgshield.__version__}",
    ]
    with psycopg.connect(released_db, autocommit=True) as conn:
        assert changed(before, snapshot(conn)) == []
        assert one(conn, "select pgshield.version()") == pgshield.__version__
    again = CliRunner().invoke(main, ["migrate", "--dsn", released_db])
    assert (again.exit_code, again.output) == (
        0,
        f"nothing to apply: pack {pgshield.__version__}\n",
    )


# A test of the test: deltas that lose what users have must fail the checks above, each where
# it should. The delta is a new migration after the others, in a copy of the migrations.
BROKEN_DELTAS = {
    "state truncated": (
        "truncate pgshield.rate_limit_state, pgshield.rate_limit_policy_state",
        ["decisions", "state"],
    ),
    "policies deleted": (
        "delete from pgshield.rate_limit_policies where name <> 'api'",
        # state too: usage reads a subject's state through its policy, as decisions do
        ["counters", "decisions", "policies", "state", "storage"],
    ),
    "counters reset": (
        "select setval('pgshield.rate_limit_direct_allowed', 1, false)",
        ["counters"],
    ),
    "storage switched": ("alter table pgshield.rate_limit_state set logged", ["storage"]),
    "fast path regenerated empty": (
        "create or replace function pgshield.jsonb_merge_fast(p_id text, p_patch jsonb,"
        " p_path text[], p_expected_hash text, p_table text) returns jsonb"
        " language sql as $$ select null::jsonb $$",
        ["fast_path"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("broken", list(BROKEN_DELTAS))
def test_a_broken_delta_fails_the_upgrade_checks(
    released_db: str, tmp_path: Path, broken: str
) -> None:
    statement, expected = BROKEN_DELTAS[broken]
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR or migrations_dir(), directory)
    last = discover(directory)[-1].version
    (directory / f"{int(last) + 1}_break_upgrade.sql").write_text(statement + ";\n")
    with psycopg.connect(released_db, autocommit=True) as conn:
        before, after = upgrade_with_data(conn, "unlogged", directory)
        assert changed(before, after) == expected
        if broken == "fast path regenerated empty":  # merges still work, but not fast
            with pytest.raises(AssertionError, match="no branch for the registered table"):
                merge_still_fast(conn)
