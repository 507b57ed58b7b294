"""Shared benchmark plumbing: a fresh local cluster, pgbench runs with latency percentiles.

pgbench is a C client, so the figures measure the database rather than Python. Every run logs
each transaction (``-l``) and the percentiles are computed from those logs.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pgshield.embedded import Cluster, find_bindir
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
        script_path.write_text(script)
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
            "-d",
            dsn,
        ]
        for key, value in (variables or {}).items():
            args += ["-D", f"{key}={value}"]
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
