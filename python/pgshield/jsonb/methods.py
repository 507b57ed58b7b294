"""JSONB merge methods: ``shield.jsonb.<method>(...)``.

The synchronous source. ``methods_async.py`` is generated from it (``python -m pgshield._twin``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from pgshield.jsonb.ops import (
    hash_op,
    merge_if_op,
    merge_op,
    merge_patch_op,
    register_op,
    targets_op,
    unregister_op,
)
from pgshield.jsonb.results import JsonbTarget
from pgshield.namespace import Namespace


class JsonbMerges(Namespace):
    """Atomic JSONB merges (``sql/jsonb.sql``): ``shield.jsonb.<method>(...)``.

    Every method takes ``conn=`` to run in the caller's own transaction.
    """

    def merge(
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
        return self._call(merge_op(table, id, patch, path), conn)

    def merge_if(
        self,
        table: str,
        id: Any,
        patch: Any,
        expected_hash: str,
        path: Sequence[str] = (),
        conn: psycopg.Connection | None = None,
    ) -> Any:
        """Like :meth:`merge`, only while the document's hash is ``expected_hash``.

        Raises Conflict (PT409) when the document changed; nothing is written then.
        """
        op = merge_if_op(table, id, patch, expected_hash, path)
        return self._call(op, conn)

    def merge_patch(self, target: Any, patch: Any, conn: psycopg.Connection | None = None) -> Any:
        """The database's RFC 7396 merge of ``patch`` into ``target`` (nothing is stored)."""
        return self._call(merge_patch_op(target, patch), conn)

    def hash(self, document: Any, conn: psycopg.Connection | None = None) -> str:
        """The hash ``merge_if`` compares: md5 of the document's jsonb text form."""
        return self._call(hash_op(document), conn)

    def register(
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
        return self._call(op, conn)

    def unregister(self, table: str, conn: psycopg.Connection | None = None) -> bool:
        """Stop merges into ``table``; returns whether it was registered."""
        return self._call(unregister_op(table), conn)

    def targets(self, conn: psycopg.Connection | None = None) -> list[JsonbTarget]:
        """The registered merge targets (service_role/owner)."""
        return self._call(targets_op(), conn)
