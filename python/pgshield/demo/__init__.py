"""``pgshield demo``: a short tour of every module, on a throw-away embedded database."""

from __future__ import annotations

from collections.abc import Callable

from pgshield.modules import MODULES, load

Echo = Callable[[str], None]


def sections() -> list[Callable[[str, Echo], None]]:
    """Every module's demo section, in registry (tour) order."""
    return [load(m.demo) for m in MODULES if m.demo]  # type: ignore[misc]


def run_demo(dsn: str | None, echo: Echo) -> None:
    """Run every section against ``dsn``, or against a throw-away embedded cluster."""
    if dsn:
        for section in sections():
            section(dsn, echo)
        return
    from pgshield.embedded import throwaway_cluster
    from pgshield.provision import prepare_cluster

    echo("Starting a throw-away embedded Postgres ...")
    with throwaway_cluster("pgshield-demo-") as cluster:
        dsn = prepare_cluster(cluster)
        echo(f"  {dsn}\n")
        for section in sections():
            section(dsn, echo)
    echo("Done: the throw-away cluster was stopped and removed.")
