"""`msdn-tune submit` and `msdn-tune jobs`: studies as Ray Jobs on a remote cluster.

Click commands only: planning, uploading and following a job is `msdn_tune.integrations.ray.jobs`.
It (and rich) is imported inside the commands: it loads Ray, which `msdn-tune --help` must not
wait for.
"""

from __future__ import annotations

import json
import sys

import click

from msdn_tune.console import human_bytes

_ADDRESS_HELP = ("Ray dashboard (job server), e.g. http://HEAD:8265 "
                 "(default: $RAY_API_SERVER_ADDRESS).")
_FAILED = ("FAILED", "STOPPED")
"""Job states `jobs status` exits 1 for (a running job is not a failure yet)."""


@click.command("submit")
@click.option("--address", envvar="RAY_API_SERVER_ADDRESS", help=_ADDRESS_HELP)
@click.option("--space", "space_file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Search-space YAML file inside the working directory.")
@click.option("--storage-path", help="Shared results storage: s3://..., gs://... or a mount "
              "every node sees (default: the file's, which must then be absolute).")
@click.option("--tracking-uri", help="MLflow server every node reaches, e.g. http://HEAD:5000 "
              "(default: the file's).")
@click.option("--no-tracking", is_flag=True, help="Do not track in MLflow.")
@click.option("--name", help="Study name (default: the file's name).")
@click.option("--num-samples", type=int, help="Number of trials (overrides the file).")
@click.option("--max-concurrent", type=int, help="Trials at a time (overrides the file).")
@click.option("--confirm-top", type=click.IntRange(0), metavar="K",
              help="Confirm the search's K best configurations with fresh seeds (as on run).")
@click.option("--confirm-seeds", type=click.IntRange(1), metavar="N",
              help="Fresh seeds per confirmed configuration (as on run).")
@click.option("--resume", is_flag=True, help="Continue an interrupted study of this name.")
@click.option("--resume-if-exists", is_flag=True,
              help="Resume the study if it exists in storage, else start it.")
@click.option("--storage-shared", is_flag=True,
              help="Declare a --storage-path mount shared by all nodes (NFS msdn-tune cannot "
                   "recognise).")
@click.option("--working-dir", type=click.Path(file_okay=False, exists=True),
              help="Folder uploaded as the job's working_dir (default: the project holding "
                   "pyproject.toml, else the current folder).")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Also leave these out of the upload (gitignore syntax, repeatable).")
@click.option("--pip", "pip", multiple=True, metavar="REQUIREMENT",
              help="pip-install into the job's environment (repeatable); default: none, the "
                   "cluster's image or venv already has msdn-tune.")
@click.option("--submission-id", help="Job id (default: msdn-<study>-<time>).")
@click.option("--no-wait", is_flag=True, help="Submit and return; do not follow the logs.")
@click.option("--dry-run", is_flag=True, help="Print the job (entrypoint, runtime_env) only.")
def submit_cmd(address: str | None, space_file: str, storage_path: str | None,
               tracking_uri: str | None, no_tracking: bool, name: str | None,
               num_samples: int | None, max_concurrent: int | None,
               confirm_top: int | None, confirm_seeds: int | None, resume: bool,
               resume_if_exists: bool, storage_shared: bool, working_dir: str | None,
               excludes: tuple[str, ...], pip: tuple[str, ...], submission_id: str | None,
               no_wait: bool, dry_run: bool) -> None:
    """Submit a study to a Ray cluster as a Ray Job, follow its logs, exit with its status.

    Exit code 0 when the job succeeded, 1 when it failed or was stopped, 2 for a problem found
    before submitting (upload too large, unreachable cluster, missing token, local storage).
    """
    from msdn_tune.integrations.ray import jobs as cluster

    plan = cluster.plan_job(
        space_file, working_dir=working_dir, storage_path=storage_path,
        tracking_uri=tracking_uri, tracking=not no_tracking, name=name,
        num_samples=num_samples, max_concurrent=max_concurrent, confirm_top=confirm_top,
        confirm_seeds=confirm_seeds, resume=resume,
        resume_if_exists=resume_if_exists, storage_shared=storage_shared, pip=pip,
        excludes=excludes, submission_id=submission_id, address=address)
    for w in plan.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    click.echo(f"upload: {plan.runtime_env['working_dir']} "
               f"({human_bytes(plan.upload.total_bytes)}, {plan.upload.n_files} files)")
    click.echo(f"entrypoint: {plan.entrypoint}")
    if dry_run:
        click.echo(json.dumps({"submission_id": plan.submission_id,
                               "runtime_env": plan.runtime_env, "metadata": plan.metadata},
                              indent=1))
        return
    server = cluster.job_client(address)
    job_id = cluster.submit_study(server, plan)
    click.echo(f"submitted job {job_id} to {server.url}")
    if no_wait:
        click.echo(f"follow it with: msdn-tune jobs logs {job_id} --follow --address {server.url}")
        return
    try:
        status = cluster.follow_job(server, job_id, _echo_raw)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; job {job_id} keeps running on the cluster "
                   f"(msdn-tune jobs stop {job_id} --address {server.url})", err=True)
        sys.exit(130)
    click.echo(f"job {job_id}: {status}")
    sys.exit(cluster.job_exit_code(status))


def _echo_raw(text: str) -> None:
    """A job's log output as it comes (it carries its own newlines)."""
    click.echo(text, nl=False)


@click.group("jobs")
def jobs_group() -> None:
    """List, inspect, follow and stop Ray jobs (studies submitted with `msdn-tune submit`)."""


@jobs_group.command("list")
@click.option("--address", envvar="RAY_API_SERVER_ADDRESS", help=_ADDRESS_HELP)
def jobs_list_cmd(address: str | None) -> None:
    """The cluster's jobs, newest first."""
    from rich.table import Table

    from msdn_tune.cli.display import make_console
    from msdn_tune.integrations.ray import jobs as cluster

    rows = cluster.list_jobs(cluster.job_client(address))
    table = Table("submission id", "status", "study", "started", "ended", title="Ray jobs")
    for r in rows:
        table.add_row(r["submission_id"], r["status"], r["study"],
                      cluster.format_time(r["start_time"]), cluster.format_time(r["end_time"]))
    make_console().print(table)


@jobs_group.command("status")
@click.argument("job_id")
@click.option("--address", envvar="RAY_API_SERVER_ADDRESS", help=_ADDRESS_HELP)
def jobs_status_cmd(job_id: str, address: str | None) -> None:
    """A job's status, message and entrypoint; exit 0 if it succeeded or is still running."""
    from msdn_tune.integrations.ray import jobs as cluster

    info = cluster.job_info(cluster.job_client(address), job_id)
    for key in ("submission_id", "status", "message", "entrypoint"):
        click.echo(f"{key + ':':<15}{info[key]}")
    click.echo(f"{'started:':<15}{cluster.format_time(info['start_time'])}")
    click.echo(f"{'ended:':<15}{cluster.format_time(info['end_time'])}")
    if info["status"] in _FAILED:
        sys.exit(1)


@jobs_group.command("logs")
@click.argument("job_id")
@click.option("--address", envvar="RAY_API_SERVER_ADDRESS", help=_ADDRESS_HELP)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def jobs_logs_cmd(job_id: str, address: str | None, follow: bool) -> None:
    """A job's driver output (the study's progress)."""
    from msdn_tune.integrations.ray import jobs as cluster

    server = cluster.job_client(address)
    if not follow:
        click.echo(cluster.job_logs(server, job_id), nl=False)
        return
    status = cluster.follow_job(server, job_id, _echo_raw)
    click.echo(f"job {job_id}: {status}")
    sys.exit(cluster.job_exit_code(status))


@jobs_group.command("stop")
@click.argument("job_id")
@click.option("--address", envvar="RAY_API_SERVER_ADDRESS", help=_ADDRESS_HELP)
def jobs_stop_cmd(job_id: str, address: str | None) -> None:
    """Stop a job (its driver gets SIGTERM; `msdn-tune submit --resume` continues the study)."""
    from msdn_tune.integrations.ray import jobs as cluster

    stopped = cluster.stop_job(cluster.job_client(address), job_id)
    click.echo(f"job {job_id}: " + ("stop requested" if stopped else "already ended"))
