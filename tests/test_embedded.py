"""The embedded cluster: finding binaries, running as an unprivileged user, the dev cluster."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from pgshield.cli import main
from pgshield.embedded import Cluster, find_bindir
from pgshield.errors import SetupError


def test_missing_postgres_installation_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGSHIELD_PG_BINDIR", str(tmp_path))
    with pytest.raises(SetupError, match="does not hold initdb"):
        find_bindir()
    monkeypatch.setenv("PGSHIELD_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(main, ["db", "start"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    assert not (tmp_path / "home").exists(), "nothing was created"


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A temporary directory the unprivileged server user can reach (pytest's is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="pgshield-embedded-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unreachable_directory_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands the server to another OS user")
    tmp_path.chmod(0o700)
    with pytest.raises(SetupError, match="cannot enter"):
        Cluster(tmp_path / "sub" / "c").init()


def test_dev_cluster_lifecycle(reachable_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSHIELD_HOME", str(reachable_tmp / "home"))
    runner = CliRunner()
    try:
        started = runner.invoke(main, ["db", "start"])
        assert started.exit_code == 0, started.output
        status = json.loads(runner.invoke(main, ["db", "status", "--json"]).output)
        assert status["running"] is True
        url = runner.invoke(main, ["db", "url"]).output.strip()
        with psycopg.connect(url) as conn:
            assert conn.execute("select pgshield.version()").fetchone() is not None
            cron = conn.execute("select count(*) from pg_extension where extname = 'pg_cron'")
            assert cron.fetchone() == (1,)
        data = Path(status["data_directory"])
        if os.geteuid() == 0:
            assert data.stat().st_uid != 0, "as root, the server runs as an unprivileged user"
        assert runner.invoke(main, ["db", "start"]).exit_code == 0, "start is idempotent"
    finally:
        assert runner.invoke(main, ["db", "stop"]).exit_code == 0
    after = json.loads(runner.invoke(main, ["db", "status", "--json"]).output)
    assert after["running"] is False


def test_cluster_keeps_its_port_across_restarts(reachable_tmp: Path) -> None:
    cluster = Cluster(reachable_tmp / "c", fast=True)
    try:
        cluster.start()
        port = cluster.port
        cluster.stop()
        again = Cluster(reachable_tmp / "c").start()
        assert again.port == port and again.running()
    finally:
        cluster.destroy()
