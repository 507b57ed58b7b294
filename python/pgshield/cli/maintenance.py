"""``pgshield cron`` (the maintenance job on pg_cron) and ``pgshield metrics``."""

from __future__ import annotations

import click

from pgshield.cli.context import dsn_option, expected_errors, resolve_dsn
from pgshield.cli.output import emit, emit_json, json_option
from pgshield.shield import Shield

TASK_COLUMNS = ["task", "module", "installed", "enabled", "last_status", "last_deleted", "deleted"]
RUN_COLUMNS = ["runid", "status", "start_time", "end_time", "return_message"]


@click.group()
def cron() -> None:
    """The maintenance job on pg_cron: install, remove, status, run once.

    Example: pgshield cron install --schedule '*/5 * * * *'
    """


@cron.command()
@dsn_option
@click.option("--schedule", default="* * * * *", show_default=True, help="A cron schedule.")
@json_option
@expected_errors
def install(dsn: str | None, schedule: str, as_json: bool) -> None:
    """Create or replace this database's maintenance job (idempotent by job name).

    Example: pgshield cron install --dsn "$DATABASE_URL"
    """
    with Shield(resolve_dsn(dsn)) as shield:
        job = shield.maintenance.schedule(schedule)
    if as_json:
        emit_json(job)
    else:
        click.echo(f"job {job.job_name} (id {job.jobid}) runs `{job.command}` on {job.schedule!r}")


@cron.command()
@dsn_option
@json_option
@expected_errors
def remove(dsn: str | None, as_json: bool) -> None:
    """Remove this database's maintenance job.

    Example: pgshield cron remove --dsn "$DATABASE_URL"
    """
    with Shield(resolve_dsn(dsn)) as shield:
        removed = shield.maintenance.unschedule()
    if as_json:
        emit_json({"removed": removed})
    else:
        click.echo("removed the maintenance job" if removed else "there was no maintenance job")


@cron.command()
@dsn_option
@click.option("--runs", type=click.IntRange(0, 1000), default=10, show_default=True)
@json_option
@expected_errors
def status(dsn: str | None, runs: int, as_json: bool) -> None:
    """pg_cron, the maintenance job, its last runs and failures, and every task.

    Example: pgshield cron status --runs 5
    """
    with Shield(resolve_dsn(dsn)) as shield:
        st = shield.maintenance.status(runs=runs)
    if as_json:
        emit_json(st)
        return
    cron_state = st.cron
    where = (
        f"pg_cron {cron_state['version']} in this database"
        if cron_state.get("version")
        else f"pg_cron not created here (its scheduler runs in {cron_state.get('database')!r})"
    )
    click.echo(where)
    if st.job:
        click.echo(f"job {st.job.job_name} (id {st.job.jobid}) on {st.job.schedule!r}")
        click.echo(f"{st.failures} failed run(s) on record")
        if st.runs:
            emit(list(st.runs), False, RUN_COLUMNS)
    elif cron_state.get("version"):
        click.echo("no maintenance job: run `pgshield cron install`")
    else:
        click.echo("the job, if any, is in cron.job of that database (`pgshield doctor` looks)")
    emit(list(st.tasks), False, TASK_COLUMNS)


@cron.command()
@dsn_option
@click.option(
    "--time-budget",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds the run may take.",
)
@click.option(
    "--pause-ratio",
    type=click.FloatRange(min=0, max=100),
    default=None,
    help="Pause after each batch this many times as long as the batch took (default 1).",
)
@json_option
@expected_errors
def run(dsn: str | None, time_budget: float, pause_ratio: float | None, as_json: bool) -> None:
    """Run maintenance once now, as the job does.

    Example: pgshield cron run --time-budget 30 --pause-ratio 2
    """
    with Shield(resolve_dsn(dsn)) as shield:
        result = shield.maintenance.run(time_budget=time_budget, pause_ratio=pause_ratio)
    if as_json:
        emit_json(result)
        return
    emit(
        [dict(vars(t)) for t in result.tasks],
        False,
        ["task", "module", "status", "deleted", "batches", "error"],
    )
    click.echo(
        f"{result.deleted} row(s) deleted in {result.duration_ms} ms"
        + ("" if result.complete else " (incomplete: the next run goes on)")
    )


@click.command()
@dsn_option
@click.option(
    "--serve",
    "port",
    type=click.IntRange(0, 65535),
    help="Serve GET /metrics on 127.0.0.1:PORT until interrupted.",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind with --serve."
)
@expected_errors
def metrics(dsn: str | None, port: int | None, host: str) -> None:
    """Print the pack's state as Prometheus text, or serve it as a scrape target.

    Example: pgshield metrics --serve 9187
    """
    from pgshield.maintenance.serve import metrics_server

    shield = Shield(resolve_dsn(dsn))
    with shield:
        if port is None:
            click.echo(shield.maintenance.metrics(), nl=False)
            return
        server = metrics_server(shield, port, host)
        click.echo(f"serving http://{host}:{server.server_port}/metrics", err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
