"""The jsonb module (``sql/jsonb.sql``): RFC 7396 merges that never lose a concurrent write.

``merge_jsonb`` merges a patch into a registered JSONB column inside one ``update``, so two
writers that each add their own key both keep it (the read-merge-write race cannot happen).
``merge_jsonb_if`` does the same only while the document still has an expected hash.
Documents and patches are plain JSON values (``dict``, ``list``, ``str``, numbers, ``None`` for
JSON null); a patch of ``None`` is the JSON value null, as RFC 7396 means it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgshield.client import Op, Row, scalar

MAX_PATCH_DEPTH = 32  # objects nested in a patch (sql/jsonb.sql enforces it: 22023)
MAX_PATH_KEYS = 32  # keys in a path (likewise)


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


def _targets(rows: list[Row]) -> list[JsonbTarget]:
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


def targets_op() -> Op[list[JsonbTarget]]:
    return Op(
        "select table_name, column_name, key_column, registered_at, problem"
        " from pgshield.list_jsonb_targets()",
        {},
        _targets,
    )


class JsonbMethods:
    """JSONB merge methods of :class:`pgshield.Shield`."""

    def merge_jsonb(
        self,
        table: str,
        id: Any,
        patch: Any,
        path: Sequence[str] = (),
        conn: psycopg.Connection | None = None,
    ) -> Any:
        """Merge ``patch`` (RFC 7396) into row ``id`` of a registered table, at ``path``.

        Returns the whole merged document. Runs with the connection's role, so grants and
        row-level security apply. Raises NotFound (no such row, or hidden by RLS),
        InvalidInput (unregistered table, bad path or patch), NotAllowed (no UPDATE grant).
        """
        return self.call(merge_op(table, id, patch, path), conn)  # type: ignore[attr-defined]

    def merge_jsonb_if(
        self,
        table: str,
        id: Any,
        patch: Any,
        expected_hash: str,
        path: Sequence[str] = (),
        conn: psycopg.Connection | None = None,
    ) -> Any:
        """Like :meth:`merge_jsonb`, only while the document's hash is ``expected_hash``.

        Raises Conflict (PT409) when the document changed; nothing is written then.
        """
        op = merge_if_op(table, id, patch, expected_hash, path)
        return self.call(op, conn)  # type: ignore[attr-defined]

    def jsonb_merge_patch(
        self, target: Any, patch: Any, conn: psycopg.Connection | None = None
    ) -> Any:
        """The database's RFC 7396 merge of ``patch`` into ``target`` (nothing is stored)."""
        return self.call(merge_patch_op(target, patch), conn)  # type: ignore[attr-defined]

    def jsonb_hash(self, document: Any, conn: psycopg.Connection | None = None) -> str:
        """The hash ``merge_jsonb_if`` compares: md5 of the document's jsonb text form."""
        return self.call(hash_op(document), conn)  # type: ignore[attr-defined]

    def register_jsonb_target(
        self,
        table: str,
        column: str,
        key_column: str = "id",
        conn: psycopg.Connection | None = None,
    ) -> bool:
        """Allow merges into ``table.column`` keyed by ``key_column`` (service_role/owner).

        Returns False when exactly this target was registered already.
        """
        op = register_op(table, column, key_column)
        return self.call(op, conn)  # type: ignore[attr-defined]

    def unregister_jsonb_target(self, table: str, conn: psycopg.Connection | None = None) -> bool:
        """Stop merges into ``table``; returns whether it was registered."""
        return self.call(unregister_op(table), conn)  # type: ignore[attr-defined]

    def jsonb_targets(self, conn: psycopg.Connection | None = None) -> list[JsonbTarget]:
        """The registered merge targets (service_role/owner)."""
        return self.call(targets_op(), conn)  # type: ignore[attr-defined]


class AsyncJsonbMethods:
    """JSONB merge methods of :class:`pgshield.AsyncShield`."""

    async def merge_jsonb(
        self,
        table: str,
        id: Any,
        patch: Any,
        path: Sequence[str] = (),
        conn: psycopg.AsyncConnection | None = None,
    ) -> Any:
        """Merge ``patch`` (RFC 7396) into row ``id`` of a registered table, at ``path``."""
        return await self.call(merge_op(table, id, patch, path), conn)  # type: ignore[attr-defined]

    async def merge_jsonb_if(
        self,
        table: str,
        id: Any,
        patch: Any,
        expected_hash: str,
        path: Sequence[str] = (),
        conn: psycopg.AsyncConnection | None = None,
    ) -> Any:
        """Like :meth:`merge_jsonb`, only while the document's hash is ``expected_hash``."""
        op = merge_if_op(table, id, patch, expected_hash, path)
        return await self.call(op, conn)  # type: ignore[attr-defined]

    async def jsonb_merge_patch(
        self, target: Any, patch: Any, conn: psycopg.AsyncConnection | None = None
    ) -> Any:
        """The database's RFC 7396 merge of ``patch`` into ``target`` (nothing is stored)."""
        return await self.call(merge_patch_op(target, patch), conn)  # type: ignore[attr-defined]

    async def jsonb_hash(self, document: Any, conn: psycopg.AsyncConnection | None = None) -> str:
        """The hash ``merge_jsonb_if`` compares: md5 of the document's jsonb text form."""
        return await self.call(hash_op(document), conn)  # type: ignore[attr-defined]

    async def register_jsonb_target(
        self,
        table: str,
        column: str,
        key_column: str = "id",
        conn: psycopg.AsyncConnection | None = None,
    ) -> bool:
        """Allow merges into ``table.column`` keyed by ``key_column`` (service_role/owner)."""
        op = register_op(table, column, key_column)
        return await self.call(op, conn)  # type: ignore[attr-defined]

    async def unregister_jsonb_target(
        self, table: str, conn: psycopg.AsyncConnection | None = None
    ) -> bool:
        """Stop merges into ``table``; returns whether it was registered."""
        return await self.call(unregister_op(table), conn)  # type: ignore[attr-defined]

    async def jsonb_targets(self, conn: psycopg.AsyncConnection | None = None) -> list[JsonbTarget]:
        """The registered merge targets (service_role/owner)."""
        return await self.call(targets_op(), conn)  # type: ignore[attr-defined]
