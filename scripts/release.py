#!/usr/bin/env python3
"""Freeze a release: add every unreleased migration to python/pgshield/releases.json.

Usage: .venv/bin/python scripts/release.py 0.2.0   (the version must be pgshield.__version__)
After this the listed files never change; tests/test_releases.py holds them to their checksums.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pgshield
from pgshield.migrations import discover
from pgshield.resources import release_of

MANIFEST = Path(__file__).resolve().parent.parent / "python" / "pgshield" / "releases.json"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    version = argv[0]
    if version != pgshield.__version__:
        print(f"bump __version__ to {version} first: it is {pgshield.__version__}", file=sys.stderr)
        return 1
    data = json.loads(MANIFEST.read_text())
    if any(r["version"] == version for r in data["releases"]):
        print(f"{version} is released already", file=sys.stderr)
        return 1
    new = {m.filename: m.sha256 for m in discover() if release_of(m.filename) is None}
    if not new:
        print("no unreleased migration", file=sys.stderr)
        return 1
    data["releases"].append({"version": version, "migrations": new})
    MANIFEST.write_text(json.dumps(data, indent=2) + "\n")
    print(f"released {version}: {', '.join(new)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
