"""``pgshield jsonb``: register merge targets and merge JSON patches from the shell."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from pgshield.cli.context import dsn_option, expected_errors, resolve_dsn
from pgshield.cli.output import emit, emit_json, json_option
from pgshield.shield import Shield

TARGET_COLUMNS = ["table", "column", "key_column", "registered_at", "problem"]


def _parse_patch(value: str) -> Any:
    """The PATCH argument: JSON text, or ``-`` to read it from stdin."""
    text = sys.stdin.read() if value == "-" else value
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="'PATCH'") from exc


@click.group()
def jsonb() -> None:
    """Atomic RFC 7396 merges into registered JSONB columns.

    Example: pgshield jsonb merge assessments 42 '{"q1": {"answer": "yes"}}'
    """


@jsonb.command()
@dsn_option
@json_option
@expected_errors
def targets(dsn: str | None, as_json: bool) -> None:
    """List the registered merge targets (service_role or the owner).

    Example: pgshield jsonb targets --json
    """
    with Shield(resolve_dsn(dsn)) as shield:
        rows = shield.jsonb.targets()
    emit(rows, as_json, TARGET_COLUMNS)  # type: ignore[arg-type]


@jsonb.command()
@click.argument("table")
@click.argument("column")
@click.option(
    "--key",
    "key_column",
    default="id",
    show_default=True,
    help="The unique column that identifies a row.",
)
@dsn_option
@json_option
@expected_errors
def register(table: str, column: str, key_column: str, dsn: str | None, as_json: bool) -> None:
    """Register TABLE.COLUMN (jsonb) as a merge target.

    Rows are found by the --key column (a primary key or unique column).

    Example: pgshield jsonb register public.assessments responses --key id
    """
    with Shield(resolve_dsn(dsn)) as shield:
        created = shield.jsonb.register(table, column, key_column)
    result = {"table": table, "column": column, "key_column": key_column, "created": created}
    if as_json:
        emit_json(result)
    else:
        click.echo(
            f"{'registered' if created else 'already registered'} {table}.{column}"
            f" (key {key_column})"
        )


@jsonb.command()
@click.argument("table")
@dsn_option
@json_option
@expected_errors
def unregister(table: str, dsn: str | None, as_json: bool) -> None:
    """Stop merges into TABLE.

    Example: pgshield jsonb unregister public.assessments
    """
    with Shield(resolve_dsn(dsn)) as shield:
        removed = shield.jsonb.unregister(table)
    if as_json:
        emit_json({"table": table, "removed": removed})
    else:
        click.echo(f"unregistered {table}" if removed else f"{table} was not registered")


@jsonb.command()
@click.argument("table")
@click.argument("id")
@click.argument("patch")
@click.option(
    "--path",
    "path",
    multiple=True,
    metavar="KEY",
    help="Merge at this key; repeat for a deeper path (missing objects are created).",
)
@click.option(
    "--if-hash",
    "expected_hash",
    metavar="MD5",
    help="Merge only while the document has this hash (else exit 1, nothing written).",
)
@dsn_option
@json_option
@expected_errors
def merge(
    table: str,
    id: str,
    patch: str,
    path: tuple[str, ...],
    expected_hash: str | None,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Merge a JSON patch into one row; print the document.

    PATCH is RFC 7396 JSON text, or - to read it from stdin.

    Example: pgshield jsonb merge assessments 42 '{"answer": "yes"}' --path responses --path q1
    """
    value = _parse_patch(patch)
    with Shield(resolve_dsn(dsn)) as shield:
        if expected_hash is None:
            document = shield.jsonb.merge(table, id, value, path)
        else:
            document = shield.jsonb.merge_if(table, id, value, expected_hash, path)
        digest = shield.jsonb.hash(document) if as_json else None
    if as_json:
        emit_json(
            {"table": table, "id": id, "path": list(path), "document": document, "hash": digest}
        )
    else:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
