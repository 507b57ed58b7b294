"""The README's tables that could drift are held to the code: errors and CLI commands."""

from __future__ import annotations

import re
from pathlib import Path

import click

from pgshield import errors
from pgshield.cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

# How the error table writes families of codes, and one member of each to test with.
FAMILIES = {"class 22": "22P02", "class 08": "08006", "57P0x": "57P01"}


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            rows.append([c.strip() for c in cells])
    return rows[1:]  # without the header


def test_error_table_matches_the_error_funnel() -> None:
    rows = table_rows(section("Errors"))
    assert rows, "no error table in the README"
    documented: set[str] = set()
    for row in rows:
        codes_cell, exception = row[0], row[-1].strip("`")
        cls = getattr(errors, exception)
        codes = re.findall(r"\b[0-9A-Z]{5}\b", codes_cell)
        codes += [member for family, member in FAMILIES.items() if family in codes_cell]
        assert codes, row
        for code in codes:
            documented.add(code)
            if exception != "ShieldError":
                assert errors.error_class(code) is cls, f"{code}: README says {exception}"
        if "no answer" in codes_cell:
            assert cls is errors.Unavailable
    # Every SQLSTATE the funnel maps by name is in the table.
    missing = set(errors._BY_SQLSTATE) - documented
    assert not missing, f"README error table lacks {sorted(missing)}"
    # Every exception class a caller can meet is named in the table or the sentence after it.
    names = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)}
    text = section("Errors")
    assert all(f"`{n}`" in text for n in names), sorted(n for n in names if f"`{n}`" not in text)


def commands(group: click.Group, prefix: str = "") -> set[str]:
    out = set()
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        out.add(path)
        if isinstance(cmd, click.Group):
            out |= commands(cmd, path + " ")
    return out


def documented_commands() -> set[str]:
    out = set()
    for row in table_rows(section("CLI")):
        m = re.match(r"`pgshield ([a-z][a-z-]*)((?: [a-z|\\-]+)?)", row[0])
        if not m:
            continue  # e.g. `pgshield --version`
        group, rest = m.group(1), m.group(2).strip()
        out.add(group)
        if rest and not rest.startswith("-"):
            for sub in rest.replace("\\", "").split("|"):
                out.add(f"{group} {sub}")
    return out


def test_cli_table_lists_every_command_and_nothing_else() -> None:
    actual, documented = commands(main), documented_commands()
    assert "ratelimit hit" in actual and "ratelimit hit" in documented
    assert actual - documented == set(), "commands missing from the README CLI table"
    assert documented - actual == set(), "the README CLI table names commands that do not exist"


def test_every_command_has_help_with_an_example() -> None:
    for path in sorted(commands(main)):
        cmd: click.Command = main
        for word in path.split():
            assert isinstance(cmd, click.Group)
            cmd = cmd.commands[word]
        assert cmd.help and cmd.help.strip(), path
        if not isinstance(cmd, click.Group) or path.count(" ") == 0:
            assert "Example:" in cmd.help, f"pgshield {path}: no Example in its help"
