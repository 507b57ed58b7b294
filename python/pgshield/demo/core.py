"""Demo section: the pack's status."""

from __future__ import annotations

from collections.abc import Callable

from pgshield.cli.output import table
from pgshield.doctor import diagnose


def run(dsn: str, echo: Callable[[str], None]) -> None:
    from pgshield.demo import heading

    heading(echo, "pack status")
    echo(table(diagnose(dsn), ["check", "status", "detail"]))
    echo("")
