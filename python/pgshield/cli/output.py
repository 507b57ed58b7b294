"""Printing data from commands: human tables by default, JSON with ``--json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from pgshield.text import plain, table

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def emit_json(data: Any) -> None:
    click.echo(json.dumps(plain(data), indent=2, default=str))


def emit(
    rows: Sequence[dict[str, Any]], as_json: bool, columns: Sequence[str] | None = None
) -> None:
    """Print ``rows`` as a table, or as JSON when ``as_json``."""
    if as_json:
        emit_json(list(rows))
    else:
        click.echo(table(rows, columns))
