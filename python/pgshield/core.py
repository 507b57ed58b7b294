"""The core module (``sql/core.sql``): the pack's version (``Shield.version()``)."""

from __future__ import annotations

from pgshield.client import Op, scalar


def version_op() -> Op[str]:
    return Op("select pgshield.version() as version", {}, scalar)
