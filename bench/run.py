"""``make bench``: every module's benchmark, one after the other; results to docs/benchmarks.md."""

from __future__ import annotations

import importlib
import sys

# One entry per module benchmark (module in bench/ exposing main() -> str of markdown).
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


def main() -> int:
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    for name in BENCHMARKS:
        importlib.import_module(name).main()
    if not BENCHMARKS:
        print("no benchmarks registered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
