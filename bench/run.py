"""``make bench``: every module's benchmark, one after the other; results to docs/benchmarks.md.

A benchmark either writes its own section of docs/benchmarks.md or returns its markdown, which is
then written here between ``<!-- bench:<name>:start -->`` and ``<!-- bench:<name>:end -->``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import write_section

# One entry per module benchmark (module in bench/ exposing main() -> str of markdown or None).
BENCHMARKS: list[str] = [
    "bench_rate_limit",
    "bench_jsonb",
    "bench_breaker",
    "bench_teams",
    "bench_release",
    "bench_guard",
    "bench_instructions",
    "bench_maintenance",
]
# Benchmarks that return their text instead of writing it, and their section titles.
TITLES = {
    "bench_teams": "Teams RLS helpers",
    "bench_maintenance": "Maintenance: cleanup beside live traffic",
}


def main() -> int:
    for name in BENCHMARKS:
        text = importlib.import_module(name).main()
        if name in TITLES and isinstance(text, str):
            write_section(name.removeprefix("bench_"), text, TITLES[name])
    if not BENCHMARKS:
        print("no benchmarks registered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
