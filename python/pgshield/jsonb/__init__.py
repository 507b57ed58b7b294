"""The jsonb module (``sql/jsonb.sql``): RFC 7396 merges that never lose a concurrent write.

``shield.jsonb.merge`` (SQL ``merge_jsonb``) merges a patch into a registered JSONB column
inside one ``update``, so two writers that each add their own key both keep it (the
read-merge-write race cannot happen).
``shield.jsonb.merge_if`` does the same only while the document still has an expected hash.
Documents and patches are plain JSON values (``dict``, ``list``, ``str``, numbers, ``None`` for
JSON null); a patch of ``None`` is the JSON value null, as RFC 7396 means it.
"""

from pgshield.jsonb.methods import JsonbMerges
from pgshield.jsonb.methods_async import AsyncJsonbMerges
from pgshield.jsonb.ops import MAX_PATCH_DEPTH, MAX_PATH_KEYS
from pgshield.jsonb.results import JsonbTarget

__all__ = ["MAX_PATCH_DEPTH", "MAX_PATH_KEYS", "AsyncJsonbMerges", "JsonbMerges", "JsonbTarget"]
