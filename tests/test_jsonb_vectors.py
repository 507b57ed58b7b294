"""RFC 7396 conformance: the pgTAP vector table, a Python reference and generated documents."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgshield import InvalidInput, Shield

PGTAP_FILE = Path(__file__).parent / "pgtap" / "20_jsonb_rfc7396.sql"
# The repository's copy of the team's reference vectors (shared/data/rfc7396_vectors.json).
VECTORS = Path(__file__).parent / "data" / "rfc7396_vectors.json"
SHARED_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "data" / "rfc7396_vectors.json"
ROW = re.compile(r"^\s*\((\d+), '((?:[^']|'')*)', '((?:[^']|'')*)', '((?:[^']|'')*)'\),?\s*$")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 section 2, as pseudo-code there: the reference the database must match."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def pgtap_vectors() -> list[tuple[Any, Any, Any]]:
    """The VALUES list between the markers of the pgTAP file, as JSON values."""
    text = PGTAP_FILE.read_text()
    block = text.split("-- rfc7396 vectors: begin", 1)[1].split("-- rfc7396 vectors: end", 1)[0]
    rows = []
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        match = ROW.match(line)
        assert match, f"unexpected line in the vector table: {line!r}"
        n, *values = match.groups()
        assert int(n) == len(rows) + 1, "vectors are numbered 1, 2, 3, ..."
        target, patch, result = (json.loads(v.replace("''", "'")) for v in values)
        rows.append((target, patch, result))
    return rows


def test_pgtap_vectors_equal_the_reference_file() -> None:
    vectors = json.loads(VECTORS.read_text())["vectors"]
    assert len(vectors) == 16, "the 15 Appendix A examples and the section 3 example"
    assert pgtap_vectors() == [(v["target"], v["patch"], v["result"]) for v in vectors]


def test_reference_file_is_the_teams_copy() -> None:
    """Where the team's shared/ folder sits beside the repository (CI), the copy matches it."""
    if not SHARED_VECTORS.exists():
        pytest.skip(f"no {SHARED_VECTORS} beside this checkout")
    assert json.loads(VECTORS.read_text()) == json.loads(SHARED_VECTORS.read_text())


def test_pgtap_vectors_are_all_16_and_agree_with_the_reference() -> None:
    vectors = pgtap_vectors()
    assert len(vectors) == 16  # RFC 7396 Appendix A (15) and section 3 (1)
    for target, patch, result in vectors:
        assert merge_patch(target, patch) == result


# ----------------------------------------------------------- generated ----
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
KEYS = st.one_of(st.sampled_from(["a", "b", "c", "", "ü", "😀", "a b", 'q"']), TEXT)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12), TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=25,
)
OBJECTS = st.dictionaries(KEYS, JSON, max_size=6)


@pytest.fixture
def shield(conn: psycopg.Connection) -> Shield:
    return Shield(conn)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(target=st.one_of(OBJECTS, JSON), patch=st.one_of(OBJECTS, JSON))
def test_jsonb_merge_patch_matches_the_reference(shield: Shield, target: Any, patch: Any) -> None:
    assert shield.jsonb.merge_patch(target, patch) == merge_patch(target, patch)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(target=OBJECTS, patch=OBJECTS, path=st.lists(KEYS, max_size=3))
def test_merge_jsonb_stores_the_reference_result(
    conn: psycopg.Connection, target: Any, patch: Any, path: list[str]
) -> None:
    conn.execute(
        "create table if not exists public.prop_docs (id int primary key, doc jsonb);"
        "select pgshield.register_jsonb_target('public.prop_docs', 'doc')"
    )
    conn.execute(
        "insert into public.prop_docs values (1, %s)"
        " on conflict (id) do update set doc = excluded.doc",
        (psycopg.types.json.Jsonb(target),),
    )
    shield = Shield(conn)
    expected = expected_at_path(target, path, patch)
    if expected is None:  # a value on the path is not an object: refused, nothing written
        with pytest.raises(InvalidInput):
            shield.jsonb.merge("prop_docs", 1, patch, path)
        stored = conn.execute("select doc from public.prop_docs where id = 1").fetchone()
        assert stored is not None and stored[0] == target
    else:
        assert shield.jsonb.merge("prop_docs", 1, patch, path) == expected[0]


def expected_at_path(target: Any, path: list[str], patch: Any) -> tuple[Any] | None:
    """The reference of a merge at a path (None when the path runs through a non-object)."""
    if not path:
        return (merge_patch(target, patch),)
    result = copy.deepcopy(target)
    node = result
    for key in path[:-1]:
        if key not in node:
            node[key] = {}
        elif not isinstance(node[key], dict):
            return None
        node = node[key]
    node[path[-1]] = merge_patch(node.get(path[-1]), patch)
    return (result,)
