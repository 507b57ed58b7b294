"""Demo section: the pack's status."""

from __future__ import annotations

from collections.abc import Callable

from pgshield.doctor import diagnose
from pgshield.text import heading, table


def run(dsn: str, echo: Callable[[str], None]) -> None:
    echo(heading("pack status"))
    echo(table(diagnose(dsn), ["check", "status", "detail"]))
    echo("")
