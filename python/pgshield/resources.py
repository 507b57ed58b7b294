"""Where the pack's SQL lives: inside the wheel (``pgshield/_data``) or in the repository."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pgshield.modules import MODULES

# The order in which sql/<module>.sql files build a database (the same order as migrations/).
MODULE_ORDER: tuple[str, ...] = tuple(m.name for m in MODULES)

_PACKAGE = Path(__file__).resolve().parent
_REPO = _PACKAGE.parent.parent


def _data_dir(name: str) -> Path:
    packaged = _PACKAGE / "_data" / name
    if packaged.is_dir():
        return packaged
    in_repo = _REPO / name
    if in_repo.is_dir():
        return in_repo
    raise FileNotFoundError(f"pgshield's {name}/ directory is missing from the installation")


def migrations_dir() -> Path:
    """The directory of the pack's migration files."""
    return _data_dir("migrations")


def sql_dir() -> Path:
    """The directory of the readable module definitions (``sql/<module>.sql``)."""
    return _data_dir("sql")


def module_files() -> list[Path]:
    """The SQL of every module in build order: ``sql/<module>.sql``, or the files of
    ``sql/<module>/`` in name order for a module split along its banners."""
    files: list[Path] = []
    for m in MODULE_ORDER:
        single, folder = sql_dir() / f"{m}.sql", sql_dir() / m
        if single.is_file():
            files.append(single)
        elif folder.is_dir():
            files += sorted(folder.glob("*.sql"))
    return files


def module_sql(module: str) -> str:
    """The whole SQL of one module, as one text (its split files joined in order)."""
    parts = [p for p in module_files() if p.stem == module or p.parent.name == module]
    return "\n".join(p.read_text() for p in parts)


def compat_sql() -> str:
    """The Supabase compat stub for vanilla Postgres (never for a Supabase project)."""
    return (sql_dir() / "compat" / "supabase.sql").read_text()


@dataclass(frozen=True)
class Release:
    """A released version and the SHA-256 of every migration file it shipped."""

    version: str
    migrations: dict[str, str]


def releases() -> list[Release]:
    """Every release in ``pgshield/releases.json``, oldest first. Released files never change."""
    data = json.loads((_PACKAGE / "releases.json").read_text())
    return [Release(r["version"], dict(r["migrations"])) for r in data["releases"]]


def release_of(filename: str) -> str | None:
    """The version that first shipped migration ``filename`` (None: not released yet)."""
    for release in releases():
        if filename in release.migrations:
            return release.version
    return None
