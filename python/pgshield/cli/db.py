"""``pgshield db``: the persistent embedded dev cluster."""

from __future__ import annotations

import click

from pgshield.cli.context import expected_errors
from pgshield.cli.output import emit_json, json_option
from pgshield.embedded import dev_cluster
from pgshield.provision import prepare_cluster


@click.group()
def db() -> None:
    """Manage the embedded dev cluster (per user, persistent).

    Example: pgshield db start && psql "$(pgshield db url)"
    """


@db.command()
@expected_errors
def start() -> None:
    """Start the dev cluster (initdb first when needed) and migrate it.

    Example: pgshield db start
    """
    cluster = dev_cluster().start()
    prepare_cluster(cluster)
    click.echo(f"running: {cluster.dsn()}")


@db.command()
@expected_errors
def stop() -> None:
    """Stop the dev cluster.

    Example: pgshield db stop
    """
    cluster = dev_cluster()
    cluster.stop()
    click.echo("stopped")


@db.command()
@json_option
@expected_errors
def status(as_json: bool) -> None:
    """Say whether the dev cluster is running, and where.

    Example: pgshield db status --json
    """
    cluster = dev_cluster()
    info = {
        "running": cluster.running(),
        "initialized": cluster.initialized(),
        "data_directory": str(cluster.data),
        "port": cluster.port,
        "url": cluster.dsn(),
        "bindir": str(cluster.bindir),
    }
    if as_json:
        emit_json(info)
    else:
        for key, value in info.items():
            click.echo(f"{key}: {value}")


@db.command()
@expected_errors
def url() -> None:
    """Print the dev cluster's connection string.

    Example: psql "$(pgshield db url)"
    """
    click.echo(dev_cluster().dsn())
