"""The rate limiting benchmark: pgshield's increment_rate_limit against its floors and Redis.

One run on one durable cluster (fsync and synchronous_commit on), driven by C clients: pgbench
for Postgres, redis-benchmark for a throw-away Redis on loopback (when installed). Prints one
table of decisions per second and p50/p99 latency at 1, 8 and 32 clients, on distinct keys and
on one hot key, with ratios to Redis and to the floors, then the targets met or missed, and
rewrites the rate_limit section of docs/benchmarks.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from harness import (
    Result,
    bench_cluster,
    machine,
    pgbench,
    redis_benchmark,
    redis_cli,
    redis_server,
    write_section,
)
from pgshield.client import connect
from pgshield.resources import module_sql

HERE = Path(__file__).resolve().parent
LUA = HERE / "redis_fixed_window.lua"

CLIENTS = (1, 8, 32)
# Every cell runs for SECONDS; the cells at TARGET_CLIENTS (those the targets and the storage
# default are read from) run ROUNDS times, the rounds interleaved over the whole benchmark, and
# keep their best round: on a shared machine interference only ever slows a run down. About 66
# cells and 90 runs: the whole benchmark takes about 4 to 5 minutes.
ROUNDS = 2
SECONDS = 2
KEYSPACE = 100_000
WINDOW = 60
ALLOW_LIMIT = 2_000_000_000  # every call fits: the allowed path is what is measured
DENY_LIMIT, DENY_WINDOW = 10, 3600  # after 10 calls, every call is denied for an hour
ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket")
MODES = ("logged", "unlogged")
DISTINCT, HOT, NO_KEY = "distinct", "hot", "-"

SELECT_1 = "select 1"
UPSERT = "bare upsert (logged)"
UPSERT_UNLOGGED = "bare upsert (unlogged)"
NAIVE = "naive read-then-write (logged)"
REDIS = "redis fixed-window lua"

# Targets from the issue, all at 8 clients: the fastest mode against Redis on distinct keys and
# on the hot key, the logged mode against the bare logged upsert, and the p99 bound.
TARGET_CLIENTS = 8
TARGET_DISTINCT_VS_REDIS = 0.7
TARGET_LOGGED_VS_UPSERT = 0.9
TARGET_HOT_VS_REDIS = 0.3
TARGET_P99_MS = 2.0


def pgshield_name(algorithm: str, mode: str, denied: bool = False) -> str:
    return f"pgshield {algorithm} {mode}" + (", denied" if denied else "")


def key_expr(keys: str, prefix: str, hot_key: str) -> tuple[str, str]:
    """The pgbench preamble and the SQL expression of the key for a keys mode."""
    if keys == DISTINCT:
        return f"\\set k random(1, {KEYSPACE})\n", f"'{prefix}' || :k"
    return "", f"'{hot_key}'"


# ---------------------------------------------------------------- workloads ----


def upsert_script(keys: str, table: str) -> str:
    pre, key = key_expr(keys, "k", "hot")
    return (
        pre + f"insert into {table} as c (key, n) values ({key}, 1)\n"
        "  on conflict (key) do update set n = c.n + 1;\n"
    )


def naive_script(keys: str) -> str:
    """Read the count, decide in the client, then write: four round trips, racy by design."""
    pre, key = key_expr(keys, "k", "hot")
    return (
        pre
        + "begin;\n"
        + "select coalesce((select count from bench.naive\n"
        + f"  where key = {key} and window_start = date_trunc('minute', now())), -1) as n \\gset\n"
        + "\\if :n < 0\n"
        + "insert into bench.naive as t (key, window_start, count)\n"
        + f"  values ({key}, date_trunc('minute', now()), 1)\n"
        + "  on conflict (key) do update set window_start = excluded.window_start, count = 1;\n"
        + f"\\elif :n < {ALLOW_LIMIT}\n"
        + f"update bench.naive set count = :n + 1 where key = {key};\n"
        + "\\endif\n"
        + "commit;\n"
    )


def key_prefix(algorithm: str) -> str:
    """Each algorithm has its own distinct keys, so all three keep their rows side by side."""
    return algorithm[0]


def pgshield_script(keys: str, algorithm: str, hot_key: str, limit: int, window: int) -> str:
    pre, key = key_expr(keys, key_prefix(algorithm), hot_key)
    return (
        pre + f"select * from public.increment_rate_limit({key}, {limit}, {window}, 1, "
        f"'{algorithm}');\n"
    )


# -------------------------------------------------------------------- setup ----

SETUP_SQL = f"""
create schema if not exists bench;
create table bench.counter (key text primary key, n bigint not null) with (fillfactor = 70);
create unlogged table bench.counter_unlogged (key text primary key, n bigint not null)
  with (fillfactor = 70);
create table bench.naive (
  key text primary key, window_start timestamptz not null, count integer not null
) with (fillfactor = 70);
insert into bench.counter select 'k' || g, 0 from generate_series(1, {KEYSPACE}) g;
insert into bench.counter_unlogged select 'k' || g, 0 from generate_series(1, {KEYSPACE}) g;
insert into bench.naive
  select 'k' || g, date_trunc('minute', now()), 0 from generate_series(1, {KEYSPACE}) g;
vacuum analyze bench.counter;
vacuum analyze bench.counter_unlogged;
vacuum analyze bench.naive;
"""

# Runs are measured between checkpoints: one checkpoint after the setup, then every page is
# written once (its full-page image goes to the WAL there), and no checkpoint comes during the
# runs. In production a page pays one full-page image per checkpoint cycle (minutes), which a
# run of seconds would otherwise overstate.
BETWEEN_CHECKPOINTS_SQL = """
alter system set checkpoint_timeout = '1d';
alter system set max_wal_size = '50GB';
select pg_reload_conf();
checkpoint;
update bench.counter set n = n;
update bench.naive set count = count;
update pgshield.rate_limit_state set count = count;
vacuum analyze bench.counter;
vacuum analyze bench.naive;
vacuum analyze pgshield.rate_limit_state;
"""


def execute_script(conn: psycopg.Connection, sql: str) -> None:
    for statement in sql.split(";\n"):
        if statement.strip():
            conn.execute(statement)


def prepare(conn: psycopg.Connection) -> dict[str, str]:
    """Install rate_limit if the migrations lack it; create the floor tables; fill every key.

    Every distinct key gets its row first, so runs measure steady updates rather than the first
    inserts. Returns the server's durability settings, for the record.
    """
    present = conn.execute(
        "select to_regprocedure('public.increment_rate_limit(text, integer, integer, integer,"
        " text)') is not null"
    ).fetchone()
    if not (present and present[0]):
        with conn.transaction():
            conn.execute(module_sql("rate_limit"))
    execute_script(conn, SETUP_SQL)
    for algorithm in ALGORITHMS:
        conn.execute(
            "select count(*) from generate_series(1, %s) g"
            " cross join lateral public.increment_rate_limit(%s || g, %s, %s, 1, %s)",
            (KEYSPACE, key_prefix(algorithm), ALLOW_LIMIT, WINDOW, algorithm),
        )
        conn.execute(
            "select count(*) from generate_series(1, %s) g"
            " cross join lateral public.increment_rate_limit(%s, %s, %s, 1, %s)",
            (DENY_LIMIT + 1, f"deny-{algorithm}", DENY_LIMIT, DENY_WINDOW, algorithm),
        )
    execute_script(conn, BETWEEN_CHECKPOINTS_SQL)
    names = ("fsync", "synchronous_commit", "full_page_writes", "wal_level", "shared_buffers")
    return {n: str(conn.execute(f"show {n}").fetchone()[0]) for n in names}


# --------------------------------------------------------------------- runs ----


@dataclass(frozen=True)
class Cell:
    """One workload, one keys mode, one client count."""

    keys: str
    result: Result
    runs: tuple[float, ...] = ()  # ops/s of every round


@dataclass(frozen=True)
class Job:
    """One cell to run: a pgbench ``script`` that needs storage ``mode`` (None: any), or a
    Redis ``command`` for redis-benchmark."""

    name: str
    keys: str
    clients: int
    script: str = ""
    mode: str | None = None
    command: tuple[str, ...] = ()


def postgres_jobs() -> list[Job]:
    jobs = [Job(SELECT_1, NO_KEY, c, "select 1;\n") for c in CLIENTS]
    for keys in (DISTINCT, HOT):
        for name, script in (
            (UPSERT, upsert_script(keys, "bench.counter")),
            (UPSERT_UNLOGGED, upsert_script(keys, "bench.counter_unlogged")),
            (NAIVE, naive_script(keys)),
        ):
            jobs += [Job(name, keys, c, script) for c in CLIENTS]
    for mode in MODES:
        for algorithm in ALGORITHMS:
            hot_key = f"hot-{algorithm}"
            for keys in (DISTINCT, HOT):
                script = pgshield_script(keys, algorithm, hot_key, ALLOW_LIMIT, WINDOW)
                name = pgshield_name(algorithm, mode)
                jobs += [Job(name, keys, c, script, mode) for c in CLIENTS]
        if mode == "logged":
            for algorithm in ALGORITHMS:
                key = f"deny-{algorithm}"
                script = pgshield_script(HOT, algorithm, key, DENY_LIMIT, DENY_WINDOW)
                name = pgshield_name(algorithm, mode, denied=True)
                jobs.append(Job(name, HOT, TARGET_CLIENTS, script, mode))
    return jobs


def redis_jobs(sha: str) -> list[Job]:
    jobs = []
    for keys in (DISTINCT, HOT):
        key = "rl:__rand_int__" if keys == DISTINCT else "rl:hot"
        command = ("evalsha", sha, "1", key, str(ALLOW_LIMIT), str(WINDOW))
        jobs += [Job(REDIS, keys, c, command=command) for c in CLIENTS]
    return jobs


def best(results: list[Result]) -> Result:
    return max(results, key=lambda r: r.ops_per_s)


def storage_mode(conn: psycopg.Connection) -> str:
    row = conn.execute("select pgshield.rate_limit_storage()").fetchone()
    return str(row[0]) if row else "logged"


def run_all(
    dsn: str, redis_port: int | None, progress: Callable[[str], None]
) -> tuple[list[Cell], dict[str, str]]:
    """Every job once, then the TARGET_CLIENTS jobs again; each cell keeps its best round."""
    jobs = postgres_jobs()
    if redis_port is None:
        progress("redis-server / redis-cli / redis-benchmark not installed: no Redis rows")
    else:
        jobs += redis_jobs(redis_cli(redis_port, "script", "load", LUA.read_text()))
    runs: dict[Job, list[Result]] = {job: [] for job in jobs}
    with connect(dsn) as conn:
        settings = prepare(conn)
        mode = storage_mode(conn)
        for round_no in range(1, ROUNDS + 1):
            for job in jobs:
                if round_no > 1 and job.clients != TARGET_CLIENTS:
                    continue
                if job.command and redis_port is not None:
                    result = redis_benchmark(
                        redis_port,
                        job.name,
                        job.command,
                        clients=job.clients,
                        seconds=SECONDS,
                        keyspace=KEYSPACE if job.keys == DISTINCT else None,
                    )
                else:
                    if job.mode is not None and job.mode != mode:
                        mode = job.mode
                        conn.execute("select pgshield.set_rate_limit_storage(%s)", (mode,))
                        conn.execute("vacuum analyze pgshield.rate_limit_state")
                    result = pgbench(
                        dsn, job.name, job.script, clients=job.clients, seconds=SECONDS
                    )
                runs[job].append(result)
                progress(
                    f"round {round_no}/{ROUNDS} {job.name} [{job.keys}] c={job.clients}: "
                    f"{result.ops_per_s:,.0f}/s"
                )
        conn.execute("select pgshield.set_rate_limit_storage('logged')")
    cells = [
        Cell(job.keys, best(results), tuple(r.ops_per_s for r in results))
        for job, results in runs.items()
    ]
    return cells, settings


# ------------------------------------------------------------- server CPU ----

# Throughput on a shared 2-core machine moves with whatever else runs; the CPU time the server
# process itself spends per decision hardly does. Each measurement is a procedure that makes
# CPU_CALLS decisions, each followed by its commit (as a client's call would be), and reads the
# backend's run time from /proc/<pid>/schedstat (nanoseconds) around it. No round trip, no
# protocol: only the statement, the function and the commit.
CPU_CALLS = 2000
CPU_WARMUP_CALLS = 100


@dataclass(frozen=True)
class CpuRow:
    name: str
    keys: str
    us_per_call: float
    reference: str  # the row it is compared with


def backend_cpu_ns(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_per_call(conn: psycopg.Connection, statement: str) -> float | None:
    """Server CPU microseconds per call of ``statement`` (``i`` is the call number)."""
    conn.execute(
        "create or replace procedure bench.cpu_loop(p_calls integer) language plpgsql as $body$\n"
        f"begin\n  for i in 1..p_calls loop\n    {statement};\n    commit;\n"
        "  end loop;\nend\n$body$"
    )
    conn.execute(f"call bench.cpu_loop({CPU_WARMUP_CALLS})")  # plans cached, pages read
    pid = conn.info.backend_pid
    before = backend_cpu_ns(pid)
    conn.execute(f"call bench.cpu_loop({CPU_CALLS})")
    after = backend_cpu_ns(pid)
    if before is None or after is None:
        return None
    return (after - before) / 1000.0 / CPU_CALLS


def cpu_rows(dsn: str, progress: Callable[[str], None]) -> list[CpuRow]:
    """Server CPU per decision: the floors, then every algorithm in every storage mode."""
    rows: list[CpuRow] = []
    with connect(dsn) as conn:
        if backend_cpu_ns(conn.info.backend_pid) is None:
            progress("no /proc/<pid>/schedstat for the server: no CPU table")
            return rows

        def measure(name: str, keys: str, statement: str, reference: str) -> None:
            value = cpu_per_call(conn, statement)
            if value is not None:
                rows.append(CpuRow(name, keys, value, reference))
                progress(f"cpu {name} [{keys}]: {value:.1f} us")

        distinct = f"'k' || (i % {KEYSPACE} + 1)"
        measure("commit only", NO_KEY, "perform 1", "")
        for name, table in ((UPSERT, "bench.counter"), (UPSERT_UNLOGGED, "bench.counter_unlogged")):
            for keys, key in ((DISTINCT, distinct), (HOT, "'hot'")):
                measure(
                    name,
                    keys,
                    f"insert into {table} as c (key, n) values ({key}, 1)"
                    " on conflict (key) do update set n = c.n + 1",
                    "",
                )
        for mode in MODES:
            conn.execute("select pgshield.set_rate_limit_storage(%s)", (mode,))
            reference = UPSERT if mode == "logged" else UPSERT_UNLOGGED
            for algorithm in ALGORITHMS:
                prefix = key_prefix(algorithm)
                for keys, key, limit, window, denied in (
                    (DISTINCT, f"'{prefix}' || (i % {KEYSPACE} + 1)", ALLOW_LIMIT, WINDOW, False),
                    (HOT, f"'hot-{algorithm}'", ALLOW_LIMIT, WINDOW, False),
                    (HOT, f"'deny-{algorithm}'", DENY_LIMIT, DENY_WINDOW, True),
                ):
                    measure(
                        pgshield_name(algorithm, mode, denied),
                        keys,
                        f"perform public.increment_rate_limit({key}, {limit}, {window}, 1,"
                        f" '{algorithm}')",
                        reference,
                    )
        conn.execute("select pgshield.set_rate_limit_storage('logged')")
    return rows


CPU_NOTE = (
    f"The run time of the server process per decision ({CPU_CALLS:,} decisions, each followed by "
    "its commit, inside one procedure; from `/proc/<pid>/schedstat`): the function and the "
    "commit without the round trip, and hardly moved by other load on the machine. Waiting "
    "(for the disk, for a lock) is not CPU and is not counted."
)


def cpu_table(rows: list[CpuRow]) -> str:
    by = {(r.name, r.keys): r.us_per_call for r in rows}
    lines = [
        "| workload | keys | server CPU us per decision | cost vs bare upsert (same logging) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        base = by.get((r.reference, r.keys)) if r.reference else None
        cost = f"{r.us_per_call / base:.2f}x" if base else "-"
        lines.append(f"| {r.name} | {r.keys} | {r.us_per_call:.1f} | {cost} |")
    return "\n".join(lines)


# ------------------------------------------------------------------- report ----


class Lookup:
    """Find cells by workload, keys and clients."""

    def __init__(self, cells: list[Cell]) -> None:
        self.cells = cells
        self.by = {(c.result.name, c.keys, c.result.clients): c.result for c in cells}

    def get(self, name: str, keys: str, clients: int) -> Result | None:
        return self.by.get((name, keys, clients)) or self.by.get((name, NO_KEY, clients))


def ratio(a: Result | None, b: Result | None) -> float | None:
    if a is None or b is None or not b.ops_per_s:
        return None
    return a.ops_per_s / b.ops_per_s


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def main_table(cells: list[Cell]) -> str:
    look = Lookup(cells)
    head = [
        "workload",
        "keys",
        "clients",
        "decisions/s",
        "p50 ms",
        "p99 ms",
        "vs redis",
        "vs select 1",
        "vs upsert",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        r = c.result
        vs_redis = None if r.name == REDIS else ratio(r, look.get(REDIS, c.keys, r.clients))
        vs_select = None if r.name == SELECT_1 else ratio(r, look.get(SELECT_1, c.keys, r.clients))
        vs_upsert = (
            None
            if r.name in (SELECT_1, UPSERT, REDIS)
            else ratio(r, look.get(UPSERT, c.keys, r.clients))
        )
        row = [
            r.name,
            c.keys,
            str(r.clients),
            f"{r.ops_per_s:,.0f}",
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            fmt_ratio(vs_redis),
            fmt_ratio(vs_select),
            fmt_ratio(vs_upsert),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def ordered(cells: list[Cell]) -> list[Cell]:
    """select 1 first, then per keys mode: floors, pgshield, naive, Redis, denied."""

    def rank(c: Cell) -> tuple:
        name = c.result.name
        keys_rank = {NO_KEY: 0, DISTINCT: 1, HOT: 2}[c.keys]
        if name == SELECT_1:
            w = (0, 0, 0)
        elif name == UPSERT:
            w = (1, 0, 0)
        elif name == UPSERT_UNLOGGED:
            w = (1, 1, 0)
        elif name.startswith("pgshield "):
            _, algorithm, mode = name.split(",")[0].split()
            w = (
                5 if name.endswith("denied") else 2,
                ALGORITHMS.index(algorithm),
                MODES.index(mode),
            )
        elif name == NAIVE:
            w = (3, 0, 0)
        else:
            w = (4, 0, 0)
        return (keys_rank, *w, c.result.clients)

    return sorted(cells, key=rank)


@dataclass(frozen=True)
class Verdict:
    target: str
    algorithm: str
    measured: str
    ok: bool | None  # None: could not be measured
    reference: bool = False  # a ceiling the targets are read against, not a target

    @property
    def mark(self) -> str:
        if self.reference:
            return "reference"
        return {True: "pass", False: "MISS", None: "n/a"}[self.ok]


def ceilings(look: Lookup) -> list[Verdict]:
    """What no decision on this machine can beat: the floors measured against the targets."""
    n = TARGET_CLIENTS
    out = []
    for name, keys, label in (
        (SELECT_1, DISTINCT, "ceiling: `select 1` vs Redis (distinct)"),
        (UPSERT_UNLOGGED, DISTINCT, "ceiling: bare unlogged upsert vs Redis (distinct)"),
        (UPSERT_UNLOGGED, HOT, "ceiling: bare unlogged upsert vs Redis (hot)"),
    ):
        value = ratio(look.get(name, keys, n), look.get(REDIS, keys, n))
        if value is not None:
            out.append(Verdict(label, "-", fmt_ratio(value), None, reference=True))
    sel = look.get(SELECT_1, NO_KEY, n)
    if sel is not None:
        out.append(Verdict("ceiling: `select 1` p99", "-", f"{sel.p99_ms:.3f} ms", None, True))
    return out


def verdicts(cells: list[Cell]) -> list[Verdict]:
    look = Lookup(cells)
    n = TARGET_CLIENTS
    out: list[Verdict] = ceilings(look)
    for algorithm in ALGORITHMS:
        for keys, want, label in (
            (DISTINCT, TARGET_DISTINCT_VS_REDIS, "distinct keys: fastest mode vs Redis"),
            (HOT, TARGET_HOT_VS_REDIS, "hot key: fastest mode vs Redis"),
        ):
            redis = look.get(REDIS, keys, n)
            modes = [(m, look.get(pgshield_name(algorithm, m), keys, n)) for m in MODES]
            mode, fastest = max(modes, key=lambda m: m[1].ops_per_s if m[1] else -1.0)
            value = ratio(fastest, redis)
            out.append(
                Verdict(
                    f"{label} >= {want}x",
                    algorithm,
                    f"{fmt_ratio(value)} ({mode})" if value is not None else "no Redis",
                    None if value is None else value >= want,
                )
            )
        value = ratio(
            look.get(pgshield_name(algorithm, "logged"), DISTINCT, n), look.get(UPSERT, DISTINCT, n)
        )
        out.append(
            Verdict(
                f"distinct keys: logged vs bare logged upsert >= {TARGET_LOGGED_VS_UPSERT}x",
                algorithm,
                fmt_ratio(value),
                None if value is None else value >= TARGET_LOGGED_VS_UPSERT,
            )
        )
        for mode in MODES:
            worst = max(
                (
                    r
                    for keys in (DISTINCT, HOT)
                    if (r := look.get(pgshield_name(algorithm, mode), keys, n))
                ),
                key=lambda r: r.p99_ms,
                default=None,
            )
            out.append(
                Verdict(
                    f"p99 < {TARGET_P99_MS:g} ms ({mode}, worse of distinct and hot)",
                    algorithm,
                    "-" if worst is None else f"{worst.p99_ms:.3f} ms",
                    None if worst is None else worst.p99_ms < TARGET_P99_MS,
                )
            )
    return out


def verdict_table(items: list[Verdict]) -> str:
    lines = [
        f"| target ({TARGET_CLIENTS} clients) | algorithm | measured | result |",
        "|---|---|---|---|",
    ]
    for v in items:
        lines.append(f"| {v.target} | {v.algorithm} | {v.measured} | {v.mark} |")
    return "\n".join(lines)


def storage_table(cells: list[Cell]) -> str:
    look = Lookup(cells)
    n = TARGET_CLIENTS
    lines = [
        f"| algorithm ({n} clients) | keys | logged /s | unlogged /s | unlogged vs logged |",
        "|---|---|---|---|---|",
    ]
    for algorithm in ALGORITHMS:
        for keys in (DISTINCT, HOT):
            logged = look.get(pgshield_name(algorithm, "logged"), keys, n)
            unlogged = look.get(pgshield_name(algorithm, "unlogged"), keys, n)
            if logged and unlogged:
                lines.append(
                    f"| {algorithm} | {keys} | {logged.ops_per_s:,.0f} | "
                    f"{unlogged.ops_per_s:,.0f} | {fmt_ratio(ratio(unlogged, logged))} |"
                )
    return "\n".join(lines)


def limits_paragraph(cells: list[Cell], cpu: list[CpuRow]) -> str:
    """What limits each figure, with this run's numbers."""
    look = Lookup(cells)
    n = TARGET_CLIENTS

    def ops(name: str, keys: str) -> str:
        r = look.get(name, keys, n)
        return "-" if r is None else f"{r.ops_per_s:,.0f}/s"

    def p99(name: str, keys: str) -> str:
        r = look.get(name, keys, n)
        return "-" if r is None else f"{r.p99_ms:.1f} ms"

    fw_logged = pgshield_name("fixed_window", "logged")
    fw_unlogged = pgshield_name("fixed_window", "unlogged")
    fw_denied = pgshield_name("fixed_window", "logged", denied=True)
    has_redis = look.get(REDIS, DISTINCT, n) is not None
    bullets = [
        f"*The round trip:* `select 1` does {ops(SELECT_1, NO_KEY)}; every decision pays at "
        "least that (protocol, one backend process per connection, a transaction), and on 2 "
        "cores the clients share the CPUs with the server, so every row at 8 and 32 clients "
        "is CPU-bound. " + ceiling_sentence(look),
        "*The commit flush (logged):* a logged write waits at commit until its WAL is on disk; "
        f"the bare logged upsert does {ops(UPSERT, DISTINCT)} with group commit and the logged "
        f"limiter {ops(fw_logged, DISTINCT)} (fixed_window): its extra CPU per decision leaves "
        "fewer commits to share each flush.",
        "*The function (unlogged):* without WAL the bare upsert does "
        f"{ops(UPSERT_UNLOGGED, DISTINCT)} and the unlogged limiter {ops(fw_unlogged, DISTINCT)}; "
        "the gap is the PL/pgSQL call itself (argument checks, the clock read through "
        "`pgshield.now()`, the window arithmetic, the upsert with its conditions, the decision "
        "counter's `nextval`). " + cpu_sentence(cpu),
        "*The row lock (hot key):* every decision on one key takes the same row lock and holds "
        "it until commit, so decisions are serialised: unlogged fixed_window does "
        f"{ops(fw_unlogged, HOT)}; logged it also holds the lock across the commit flush "
        f"({ops(fw_logged, HOT)}), and 32 clients mostly queue. A denied call changes no row "
        "but still locks the one it is refused on, and a row lock is written: in logged mode "
        f"the denials too wait for a commit flush ({ops(fw_denied, HOT)} for fixed_window).",
    ]
    if has_redis:
        bullets.append(
            f"*Redis* ({ops(REDIS, DISTINCT)} distinct, {ops(REDIS, HOT)} hot) runs the script "
            "in memory in one event loop with no transaction, no lock and nothing persisted, "
            "so a hot key costs it nothing extra."
        )
    bullets += [
        f"*The tail:* p99 at {n} clients is set by the scheduler more than by the work: "
        f"`select 1` itself has a p99 of {p99(SELECT_1, NO_KEY)} here, with 8 server "
        "processes and the client's threads on 2 cores.",
        "*The naive limiter* pays four round trips per decision and still over-admits under "
        "concurrency: its read takes no lock, so two clients can both see room for one.",
    ]
    head = f"**What limits it** (figures at {n} clients):\n\n"
    return head + "\n".join(f"- {b.strip()}" for b in bullets)


def cpu_sentence(cpu: list[CpuRow]) -> str:
    """The function's own cost, from the CPU table (robust to other load)."""
    by = {(r.name, r.keys): r.us_per_call for r in cpu}
    upsert = by.get((UPSERT_UNLOGGED, DISTINCT))
    mine = [by.get((pgshield_name(a, "unlogged"), DISTINCT)) for a in ALGORITHMS]
    if upsert is None or any(v is None for v in mine):
        return ""
    low, high = min(v for v in mine if v), max(v for v in mine if v)
    return (
        f"In server CPU the unlogged limiter spends {low:.0f} to {high:.0f} us per decision "
        f"against {upsert:.0f} us for the bare unlogged upsert (table above); "
        "PL/pgSQL prepares each expression it evaluates again in every transaction, so a "
        "function called once per transaction pays for every assignment and test on its path. "
    )


def ceiling_sentence(look: Lookup) -> str:
    """Say so when a target is out of reach of the floor itself."""
    n = TARGET_CLIENTS
    value = ratio(look.get(SELECT_1, NO_KEY, n), look.get(REDIS, DISTINCT, n))
    if value is None or value >= TARGET_DISTINCT_VS_REDIS:
        return ""
    return (
        f"Here `select 1` reaches {value:.2f}x Redis: the {TARGET_DISTINCT_VS_REDIS}x target on "
        "distinct keys is out of reach of any Postgres round trip on this machine, whatever the "
        "function does. "
    )


def spread_line(cells: list[Cell]) -> str:
    """How far apart the rounds of the repeated cells were: the noise of this machine."""
    spreads = sorted(
        max(c.runs) / min(c.runs) - 1 for c in cells if len(c.runs) > 1 and min(c.runs) > 0
    )
    if not spreads:
        return ""
    median = spreads[len(spreads) // 2]
    return (
        f"The two rounds of each {TARGET_CLIENTS}-client cell differed by a median of "
        f"{median:.0%} (at most {spreads[-1]:.0%}): read ratios, not absolute figures."
    )


def method(settings: dict[str, str], has_redis: bool) -> str:
    durability = ", ".join(f"{k}={v}" for k, v in settings.items())
    lines = [
        f"- Durable cluster ({durability}), so logged against unlogged is an honest "
        "comparison. Runs are taken between checkpoints: every page was written once after a "
        "checkpoint before the runs, and none comes during them.",
        f"- Every cell is a {SECONDS} s run of a C client: pgbench with prepared statements "
        "(connected as the owner; the function runs as its definer either way), redis-benchmark "
        f"for Redis. The {TARGET_CLIENTS}-client cells run {ROUNDS} times, the rounds "
        "interleaved over the whole benchmark, and keep their best run. Latency is per "
        "decision, from pgbench's per-transaction log (redis-benchmark's own histogram for "
        "Redis).",
        f"- Distinct keys: {KEYSPACE:,} keys drawn uniformly, each key's row present before the "
        f"runs. Hot key: every client on one key. Limits are {ALLOW_LIMIT:,} per {WINDOW} s, so "
        "every call is allowed (the allowed path); the `denied` rows use "
        f"{DENY_LIMIT} per {DENY_WINDOW} s on a key already over it.",
        "- `bare upsert`: `insert ... on conflict (key) do update set n = n + 1` on a two-column "
        "table (fillfactor 70, like the state table): the floor for a write. The unlogged one "
        "is the floor of the unlogged mode. `naive read-then-write`: in one transaction a "
        "`select` of the count, the decision in the client, then an `update` (or `insert`).",
        "- Ratios compare rows with the same keys and clients from this run: `vs redis`, "
        "`vs select 1` (the floor of any call), `vs upsert` (the bare logged upsert).",
    ]
    if has_redis:
        lines.append(
            "- Redis: `bench/redis_fixed_window.lua` (INCR, then EXPIRE on a key's first call) "
            "through EVALSHA, on a Redis started for the run on 127.0.0.1 without persistence "
            "(`--save '' --appendonly no`)."
        )
    else:
        lines.append("- redis-server was not installed: no Redis rows, no Redis targets.")
    return "\n".join(lines)


def render(cells: list[Cell], cpu: list[CpuRow], settings: dict[str, str], elapsed: float) -> str:
    cells = ordered(cells)
    has_redis = any(c.result.name == REDIS for c in cells)
    return "\n\n".join(
        part
        for part in [
            "## Rate limiting",
            f"Machine: {machine()}.",
            method(settings, has_redis),
            main_table(cells),
            spread_line(cells),
            "### Targets",
            verdict_table(verdicts(cells)),
            "### Storage mode",
            storage_table(cells),
            "### Server CPU per decision" if cpu else "",
            CPU_NOTE if cpu else "",
            cpu_table(cpu) if cpu else "",
            limits_paragraph(cells, cpu),
            f"_Whole rate limiting benchmark: {elapsed:.0f} s._",
        ]
        if part
    )


def main() -> None:
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"  rate_limit: {line}", flush=True)

    with bench_cluster(durable=True) as (_cluster, dsn), redis_server() as redis_port:
        cells, settings = run_all(dsn, redis_port, progress)
        cpu = cpu_rows(dsn, progress)
    text = render(cells, cpu, settings, time.monotonic() - started)
    print(text)
    write_section("rate_limit", text)


if __name__ == "__main__":
    main()
