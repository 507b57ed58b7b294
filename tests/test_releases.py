"""Releases are frozen: released migration files never change, one version source for all."""

from __future__ import annotations

import hashlib
import re
from importlib import metadata

import pgshield
from pgshield.migrations import discover
from pgshield.resources import release_of, releases, sql_dir

SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


def test_every_released_migration_is_unchanged_and_present() -> None:
    files = {m.filename: m for m in discover()}
    assert releases(), "the manifest lists no release"
    for release in releases():
        assert SEMVER.match(release.version), release.version
        assert release.migrations, f"release {release.version} lists no migration"
        for name, sha in release.migrations.items():
            assert name in files, f"released migration {name} ({release.version}) is missing"
            actual = hashlib.sha256(files[name].path.read_bytes()).hexdigest()
            assert actual == sha, (
                f"released migration {name} ({release.version}) changed: write a new migration"
                " instead"
            )


def test_releases_are_ordered_and_later_files_come_after_them() -> None:
    versions = [tuple(int(x) for x in r.version.split(".")) for r in releases()]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    names = [m.filename for m in discover()]
    seen: set[str] = set()
    for release in releases():
        assert not (set(release.migrations) & seen), "a file is listed by two releases"
        seen |= set(release.migrations)
    # Released files form a prefix of the version order: nothing new slips in before them.
    released_flags = [release_of(n) is not None for n in names]
    assert released_flags == sorted(released_flags, reverse=True), names


def test_one_version_source() -> None:
    version = pgshield.__version__
    assert SEMVER.match(version)
    assert metadata.version("pgshield") == version, "reinstall: pip install -e ."
    core = (sql_dir() / "core.sql").read_text()
    assert f"select '{version}'::text" in core, "sql/core.sql's pgshield.version() differs"
    last = tuple(int(x) for x in releases()[-1].version.split("."))
    assert tuple(int(x) for x in version.split(".")) >= last
    # The newest migration that defines pgshield.version() returns the same (the catalog test
    # then holds sql/ and migrations/ together).
    defining = [m for m in discover() if "function pgshield.version()" in m.sql]
    assert f"select '{version}'::text" in defining[-1].sql, defining[-1].filename
