"""``pgshield demo``: a short tour of every module, on a throw-away embedded database."""

from __future__ import annotations

from collections.abc import Callable

from pgshield.demo import core, jsonb, rate_limit

Echo = Callable[[str], None]

# One line per module section, in tour order.
SECTIONS: list[Callable[[str, Echo], None]] = [core.run, rate_limit.run, jsonb.run]


def run_demo(dsn: str | None, echo: Echo) -> None:
    """Run every section against ``dsn``, or against a throw-away embedded cluster."""
    if dsn:
        for section in SECTIONS:
            section(dsn, echo)
        return
    from pgshield.embedded import throwaway_cluster
    from pgshield.provision import prepare_cluster

    echo("Starting a throw-away embedded Postgres ...")
    with throwaway_cluster("pgshield-demo-") as cluster:
        dsn = prepare_cluster(cluster)
        echo(f"  {dsn}\n")
        for section in SECTIONS:
            section(dsn, echo)
    echo("Done: the throw-away cluster was stopped and removed.")


def heading(echo: Echo, title: str) -> None:
    echo(f"== {title} " + "=" * max(0, 70 - len(title)))
