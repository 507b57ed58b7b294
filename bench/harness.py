"""Shared benchmark plumbing: a fresh local cluster, pgbench runs with latency percentiles.

pgbench is a C client, so the figures measure the database rather than Python. Every run logs
each transaction (``-l``) and the percentiles are computed from those logs.
"""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pgshield.embedded import Cluster, find_bindir, free_port
from pgshield.provision import prepare_cluster


@dataclass(frozen=True)
class Result:
    """One workload at one concurrency."""

    name: str
    clients: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    note: str = ""


@contextlib.contextmanager
def bench_cluster(durable: bool = True) -> Iterator[tuple[Cluster, str]]:
    """A migrated throw-away cluster; ``durable`` keeps fsync and synchronous_commit on."""
    base = Path(tempfile.mkdtemp(prefix="pgshield-bench-"))
    cluster = Cluster(base, fast=not durable)
    try:
        cluster.start()
        yield cluster, prepare_cluster(cluster)
    finally:
        cluster.destroy()


def pgbench(
    dsn: str,
    name: str,
    script: str,
    *,
    clients: int,
    seconds: float = 5.0,
    variables: dict[str, str] | None = None,
    protocol: str = "prepared",
) -> Result:
    """Run ``script`` (pgbench syntax) with ``clients`` connections for ``seconds``."""
    pgbench_bin = str(find_bindir() / "pgbench")
    with tempfile.TemporaryDirectory(prefix="pgshield-pgbench-") as tmp:
        os.chmod(tmp, 0o777)
        script_path = Path(tmp) / "script.sql"
        # A trailing meta-command makes pgbench time the whole transaction: without it, very
        # fast transactions are logged with a latency of 0 us.
        script_path.write_text(script.rstrip("\n") + "\n\\set pgshield_timed 1\n")
        args = [
            pgbench_bin,
            "-n",
            "-f",
            str(script_path),
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(max(1, int(seconds))),
            "-M",
            protocol,
            "-l",
            "--log-prefix",
            str(Path(tmp) / "log"),
        ]
        for key, value in (variables or {}).items():
            args += ["-D", f"{key}={value}"]
        args.append(dsn)  # the connection string is pgbench's positional dbname (-d is --debug)
        proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench failed for {name}: {proc.stderr.strip()[-1500:]}")
        latencies_us: list[int] = []
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 3:
                    latencies_us.append(int(fields[2]))
    tps = 0.0
    for line in proc.stdout.splitlines():
        if line.startswith("tps ="):
            tps = float(line.split("=")[1].split()[0])
    return Result(name, clients, tps, *percentiles(latencies_us))


BENCHMARKS_DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(name: str, text: str, title: str | None = None) -> None:
    """Put ``text`` between ``<!-- bench:<name>:start -->`` and its end marker in
    docs/benchmarks.md (under ``## title`` when given), replacing what was there; a missing
    section is appended."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    doc = BENCHMARKS_DOC.read_text() if BENCHMARKS_DOC.exists() else "# Benchmarks\n"
    body = f"## {title}\n\n{text.strip()}" if title else text.strip()
    block = f"{start}\n{body}\n{end}"
    if start in doc and end in doc and doc.index(start) < doc.index(end):
        head, rest = doc.split(start, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    BENCHMARKS_DOC.write_text(doc)


REDIS_TOOLS = ("redis-server", "redis-cli", "redis-benchmark")


@contextlib.contextmanager
def redis_server() -> Iterator[int | None]:
    """A throw-away Redis on 127.0.0.1 without persistence; yields its port.

    Yields None when redis-server, redis-cli or redis-benchmark is not installed. The server is
    stopped (by its own process id) on exit.
    """
    if not all(shutil.which(tool) for tool in REDIS_TOOLS):
        yield None
        return
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while redis_cli(port, "ping", check=False) != "PONG":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_cli(port: int, *args: str, check: bool = True) -> str:
    """Run one redis-cli command against 127.0.0.1:``port``; its output, stripped."""
    proc = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def redis_benchmark(
    port: int,
    name: str,
    command: Sequence[str],
    *,
    clients: int,
    seconds: float = 5.0,
    keyspace: int | None = None,
) -> Result:
    """Run one Redis ``command`` with redis-benchmark (a C client) for about ``seconds``.

    ``keyspace`` replaces ``__rand_int__`` in the arguments with random numbers below it.
    redis-benchmark counts requests rather than time, so a short probe sets the count. Threads
    follow pgbench's (at most 2).
    """

    def run(requests: int) -> tuple[float, float, float]:
        args = [
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            str(clients),
            "-n",
            str(requests),
            "--csv",
            "--precision",
            "3",
        ]
        if clients > 1:
            args += ["--threads", str(min(clients, 2))]
        if keyspace:
            args += ["-r", str(keyspace)]
        proc = subprocess.run([*args, *command], capture_output=True, text=True)
        rows = list(csv.DictReader(proc.stdout.splitlines()))
        if proc.returncode != 0 or not rows:
            raise RuntimeError(f"redis-benchmark failed for {name}: {proc.stderr.strip()[-500:]}")
        row = rows[-1]
        return float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"])

    probe_rps, _, _ = run(max(2000, 500 * clients))
    rps, p50, p99 = run(max(1000, int(probe_rps * seconds)))
    return Result(name, clients, rps, p50, p99)


def percentiles(latencies_us: Sequence[int]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    if not latencies_us:
        return (float("nan"), float("nan"))
    cuts = statistics.quantiles(latencies_us, n=100, method="inclusive")
    return (cuts[49] / 1000.0, cuts[98] / 1000.0)


def machine() -> str:
    """One line describing where the numbers were taken."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    server = subprocess.run(
        [str(find_bindir() / "postgres"), "--version"], capture_output=True, text=True
    ).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, {server}"


def format_table(results: Sequence[Result], baselines: dict[str, str] | None = None) -> str:
    """A markdown table; ``baselines`` maps a column title to the name of the reference row.

    Ratios compare rows with the same client count against the reference workload.
    """
    baselines = baselines or {}
    by_key = {(r.name, r.clients): r for r in results}
    head = ["workload", "clients", "ops/s", "p50 ms", "p99 ms", *baselines.keys(), "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        ratios = []
        for ref in baselines.values():
            base = by_key.get((ref, r.clients))
            ratios.append(
                f"{r.ops_per_s / base.ops_per_s:.2f}x" if base and base.ops_per_s else "-"
            )
        cells = [
            r.name,
            str(r.clients),
            f"{r.ops_per_s:,.0f}",
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            *ratios,
            r.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
