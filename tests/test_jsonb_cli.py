"""``pgshield jsonb``: targets, register, unregister, merge; bad JSON and errors in one line."""

from __future__ import annotations

import json

import psycopg
import pytest
from click.testing import CliRunner

from pgshield.cli import main

SETUP = """
create table public.cli_docs (id int primary key, doc jsonb not null default '{}', note text);
insert into public.cli_docs (id) values (1);
"""


@pytest.fixture
def docs(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute(SETUP)
    return conn


def run(db: str, *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["jsonb", *args, "--dsn", db], input=stdin)
    return result.exit_code, result.output


def stored(conn: psycopg.Connection) -> object:
    return conn.execute("select doc from public.cli_docs where id = 1").fetchone()[0]  # type: ignore[index]


def assert_one_line_error(code: int, output: str) -> str:
    assert code == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


def test_register_list_merge_unregister(db: str, docs: psycopg.Connection) -> None:
    code, out = run(db, "register", "cli_docs", "doc", "--key", "id")
    assert code == 0 and "registered cli_docs.doc" in out
    code, out = run(db, "register", "cli_docs", "doc", "--json")
    assert code == 0 and json.loads(out)["created"] is False

    code, out = run(db, "targets")
    assert code == 0 and "public.cli_docs" in out and "key_column" in out
    code, out = run(db, "targets", "--json")
    [target] = json.loads(out)
    assert (target["table"], target["column"], target["key_column"]) == (
        "public.cli_docs",
        "doc",
        "id",
    )

    code, out = run(db, "merge", "cli_docs", "1", '{"q1": {"answer": "yes"}}')
    assert code == 0 and json.loads(out) == {"q1": {"answer": "yes"}}
    code, out = run(db, "merge", "cli_docs", "1", '{"score": 2}', "--path", "q1", "--json")
    result = json.loads(out)
    assert result["document"] == {"q1": {"answer": "yes", "score": 2}}
    assert result["path"] == ["q1"] and len(result["hash"]) == 32

    code, out = run(db, "unregister", "cli_docs")
    assert code == 0 and "unregistered" in out
    code, out = run(db, "unregister", "cli_docs", "--json")
    assert code == 0 and json.loads(out) == {"table": "cli_docs", "removed": False}


def test_patch_from_stdin_and_deep_path(db: str, docs: psycopg.Connection) -> None:
    run(db, "register", "cli_docs", "doc")
    code, out = run(
        db, "merge", "cli_docs", "1", "-", "--path", "a", "--path", "b", stdin='{"c":1}'
    )
    assert code == 0, out
    assert json.loads(out) == {"a": {"b": {"c": 1}}}


def test_invalid_json_is_a_usage_error_and_writes_nothing(
    db: str, docs: psycopg.Connection
) -> None:
    run(db, "register", "cli_docs", "doc")
    for bad in ['{"a": ', "{'a': 1}", "", "nul"]:
        code, out = run(db, "merge", "cli_docs", "1", bad)
        assert code == 2, out
        assert "not valid JSON" in out and "Traceback" not in out
    assert stored(docs) == {}


def test_expected_errors_are_one_line(db: str, docs: psycopg.Connection) -> None:
    line = assert_one_line_error(*run(db, "merge", "cli_docs", "1", "{}"))
    assert "not a registered jsonb target" in line
    line = assert_one_line_error(*run(db, "register", "cli_docs", "note"))
    assert "jsonb" in line
    run(db, "register", "cli_docs", "doc")
    line = assert_one_line_error(*run(db, "merge", "cli_docs", "2", "{}"))
    assert "no row" in line
    run(db, "merge", "cli_docs", "1", '{"x": 1}')
    line = assert_one_line_error(
        *run(db, "merge", "cli_docs", "1", "{}", "--path", "x", "--path", "y")
    )
    assert "not an object" in line
    assert stored(docs) == {"x": 1}


def test_if_hash(db: str, docs: psycopg.Connection) -> None:
    run(db, "register", "cli_docs", "doc")
    code, out = run(db, "merge", "cli_docs", "1", '{"v": 1}', "--json")
    digest = json.loads(out)["hash"]
    code, out = run(db, "merge", "cli_docs", "1", '{"w": 2}', "--if-hash", digest)
    assert code == 0 and json.loads(out) == {"v": 1, "w": 2}
    line = assert_one_line_error(
        *run(db, "merge", "cli_docs", "1", '{"x": 3}', "--if-hash", digest)
    )
    assert "changed" in line
    assert stored(docs) == {"v": 1, "w": 2}
