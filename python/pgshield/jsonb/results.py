"""JSONB merge results."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pgshield.client import Row


@dataclass(frozen=True)
class JsonbTarget:
    """A registered merge target: the table, its jsonb column and its unique key column.

    ``problem`` is None when the target is usable, else why not (e.g. a dropped column).
    """

    table: str
    column: str
    key_column: str
    registered_at: dt.datetime
    problem: str | None


def parse_targets(rows: list[Row]) -> list[JsonbTarget]:
    """The rows of pgshield.list_jsonb_targets()."""
    return [
        JsonbTarget(
            table=r["table_name"],
            column=r["column_name"],
            key_column=r["key_column"],
            registered_at=r["registered_at"],
            problem=r["problem"],
        )
        for r in rows
    ]
