"""``pgshield ratelimit``: hit, peek, reset, policies, usage; --json; errors in one line."""

from __future__ import annotations

import json

import click
import psycopg
import pytest
from click.testing import CliRunner

from pgshield.cli import main
from pgshield.cli.rate_limit import ratelimit


@pytest.fixture
def frozen(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    return conn


def run(db: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["ratelimit", *args, "--dsn", db])
    return result.exit_code, result.output


def test_hit_and_peek_a_direct_key(db: str, frozen: psycopg.Connection) -> None:
    code, out = run(db, "hit", "user:42", "--limit", "2", "--window", "60")
    assert code == 0 and "user:42" in out and "retry_after_ms" in out
    code, out = run(db, "hit", "user:42", "--limit", "2", "--window", "60", "--json")
    assert code == 0
    second = json.loads(out)
    assert (second["allowed"], second["remaining"], second["key"]) == (True, 0, "user:42")
    code, out = run(db, "peek", "user:42", "--limit", "2", "--window", "60", "--json")
    assert code == 0 and json.loads(out)["retry_after_ms"] == 50_000
    code, out = run(
        db, "hit", "user:42", "--limit", "2", "--window", "60", "--algorithm", "token_bucket"
    )
    assert code == 0 and "yes" in out  # another algorithm is another state


def test_hit_a_policy_shows_every_window(db: str, frozen: psycopg.Connection) -> None:
    code, out = run(db, "hit", "alice", "--policy", "api", "--cost", "3")
    assert code == 0
    assert "api:alice (free)" in out and "minute" in out and "hour" in out and "day" in out
    code, out = run(db, "peek", "alice", "--policy", "api", "--json")
    body = json.loads(out)
    assert body["policy"] == "api" and [w["used"] for w in body["windows"]] == [4, 4, 4]


def test_usage_reset_and_policies(db: str, frozen: psycopg.Connection) -> None:
    run(db, "hit", "bob", "--policy", "api")
    code, out = run(db, "usage", "bob", "--json")
    assert code == 0 and [u["name"] for u in json.loads(out)] == ["minute", "hour", "day"]
    code, out = run(db, "usage")
    assert code == 0 and "api" in out and "denied" in out
    code, out = run(db, "usage", "--policy", "api", "--json")
    assert json.loads(out) == [{"policy": "api", "allowed": 1, "denied": 0}]

    code, out = run(db, "reset", "bob", "--policy", "api")
    assert code == 0 and "forgot 3 window(s) of bob" in out
    run(db, "hit", "k", "--limit", "1", "--window", "60")
    code, out = run(db, "reset", "k", "--json")
    assert json.loads(out) == {"target": "k", "deleted": 1}

    code, out = run(db, "policies")
    assert code == 0 and "free (default)" in out and "10/minute, 100/hour, 500/day" in out
    code, out = run(db, "policies", "--json")
    names = [p["name"] for p in json.loads(out)]
    assert names == ["ai_tokens", "api"]


def test_errors(db: str, frozen: psycopg.Connection) -> None:
    code, out = run(db, "hit", "k", "--policy", "nope")
    assert code == 1 and out.strip().startswith("Error: p_policy: unknown policy")
    assert len(out.strip().splitlines()) == 1
    code, out = run(db, "hit", "k")
    assert code == 2 and "--limit" in out
    code, out = run(db, "hit", "k", "--policy", "api", "--limit", "3")
    assert code == 2
    code, out = run(db, "hit", "k", "--limit", "0", "--window", "60")
    assert code == 2
    code, out = run(db, "hit", "k", "--limit", "1", "--window", "60", "--endpoint", "/x")
    assert code == 2
    code, out = run(db, "reset", "k", "--subject", "--window", "60")
    assert code == 2


def test_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    for name, command in ratelimit.commands.items():
        assert isinstance(command, click.Command)
        result = runner.invoke(main, ["ratelimit", name, "-h"])
        assert result.exit_code == 0, name
        assert "Example: pgshield ratelimit" in result.output, name
