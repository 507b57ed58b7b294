"""JSONB ops: one :class:`~pgshield.client.Op` builder per SQL entry point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from pgshield.client import Op, scalar
from pgshield.jsonb.results import JsonbTarget, parse_targets

MAX_PATCH_DEPTH = 32  # objects nested in a patch (sql/jsonb.sql enforces it: 22023)
MAX_PATH_KEYS = 32  # keys in a path (likewise)


def _path(path: Sequence[str]) -> list[str]:
    if isinstance(path, str):
        raise TypeError("path must be a sequence of keys, not a string")
    return [str(key) for key in path]


def merge_op(table: str, id: Any, patch: Any, path: Sequence[str] = ()) -> Op[Any]:
    return Op(
        "select public.merge_jsonb(%(table)s::text, %(id)s::text, %(patch)s::jsonb,"
        " %(path)s::text[]) as document",
        {"table": table, "id": str(id), "patch": Jsonb(patch), "path": _path(path)},
        scalar,
    )


def merge_if_op(
    table: str, id: Any, patch: Any, expected_hash: str, path: Sequence[str] = ()
) -> Op[Any]:
    return Op(
        "select public.merge_jsonb_if(%(table)s::text, %(id)s::text, %(patch)s::jsonb,"
        " %(hash)s::text, %(path)s::text[]) as document",
        {
            "table": table,
            "id": str(id),
            "patch": Jsonb(patch),
            "hash": expected_hash,
            "path": _path(path),
        },
        scalar,
    )


def merge_patch_op(target: Any, patch: Any) -> Op[Any]:
    return Op(
        "select pgshield.jsonb_merge_patch(%(target)s::jsonb, %(patch)s::jsonb) as document",
        {"target": Jsonb(target), "patch": Jsonb(patch)},
        scalar,
    )


def hash_op(document: Any) -> Op[str]:
    return Op(
        "select pgshield.jsonb_hash(%(doc)s::jsonb) as hash", {"doc": Jsonb(document)}, scalar
    )


def register_op(table: str, column: str, key_column: str = "id") -> Op[bool]:
    return Op(
        "select pgshield.register_jsonb_target(%(table)s::regclass, %(column)s::name,"
        " %(key)s::name) as created",
        {"table": table, "column": column, "key": key_column},
        scalar,
    )


def unregister_op(table: str) -> Op[bool]:
    return Op(
        "select pgshield.unregister_jsonb_target(%(table)s::regclass) as removed",
        {"table": table},
        scalar,
    )


def targets_op() -> Op[list[JsonbTarget]]:
    return Op(
        "select table_name, column_name, key_column, registered_at, problem"
        " from pgshield.list_jsonb_targets()",
        {},
        parse_targets,
    )
