"""``make bench``: every module's benchmark, one after the other; results to docs/benchmarks.md.

A benchmark either writes its own section of docs/benchmarks.md or returns its markdown, which is
then written here between ``<!-- bench:<name>:start -->`` and ``<!-- bench:<name>:end -->``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

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
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
# Benchmarks that return their text instead of writing it, and their section titles.
TITLES = {
    "bench_teams": "Teams RLS helpers",
    "bench_maintenance": "Maintenance: cleanup beside live traffic",
}


def write_section(name: str, title: str, text: str) -> None:
    """Put ``text`` in the section ``name`` of docs/benchmarks.md, replacing what was there."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    doc = DOC.read_text()
    block = f"{start}\n## {title}\n\n{text.strip()}\n{end}"
    if start in doc:
        head, rest = doc.split(start, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(doc)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for name in BENCHMARKS:
        text = importlib.import_module(name).main()
        if name in TITLES and isinstance(text, str):
            write_section(name.removeprefix("bench_"), TITLES[name], text)
    if not BENCHMARKS:
        print("no benchmarks registered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
