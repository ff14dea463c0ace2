"""``taskpipe doctor``: check the broker settings that decide whether jobs are safe."""

from __future__ import annotations

import json

import click
import redis

from taskpipe.cli.main import app_option, cli, load_app
from taskpipe.connection import redact_url
from taskpipe.errors import TaskpipeError
from taskpipe.thoonk.broker_check import diagnose

__all__ = ["doctor"]

_LABEL = {"ok": "ok    ", "warn": "WARN  ", "unsafe": "UNSAFE"}


@cli.command()
@app_option(required=False)
@click.option(
    "--broker",
    envvar="TASKPIPE_BROKER_URL",
    default=None,
    metavar="URL",
    help="Broker URL when no -A is given (env TASKPIPE_BROKER_URL).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
def doctor(app_path: str | None, broker: str | None, as_json: bool) -> None:
    """Check the broker's data-safety settings: eviction policy, persistence, Redis version,
    role, cluster and sentinel state. Exit code 1 if anything is unsafe, 0 otherwise."""
    from taskpipe.app import TaskPipe

    app = load_app(app_path) if app_path else TaskPipe(broker=broker)
    url = redact_url(app.broker_url)
    try:
        findings = diagnose(app.connection)
    except (redis.exceptions.RedisError, TaskpipeError, OSError) as exc:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "broker": url,
                        "unsafe": True,
                        "findings": [
                            {"level": "unsafe", "check": "reach", "message": str(exc), "node": ""}
                        ],
                    },
                    indent=2,
                )
            )
        else:
            click.echo(f"UNSAFE  cannot reach the broker {url}: {exc}")
        raise click.exceptions.Exit(1) from None
    finally:
        app.close()
    unsafe = any(f.level == "unsafe" for f in findings)
    if as_json:
        click.echo(
            json.dumps(
                {"broker": url, "unsafe": unsafe, "findings": [f.to_dict() for f in findings]},
                indent=2,
            )
        )
    else:
        click.echo(f"broker {url}")
        for f in findings:
            node = f" [{f.node}]" if f.node else ""
            click.echo(f"{_LABEL[f.level]}  {f.check}{node}: {f.message}")
        bad = sum(f.level == "unsafe" for f in findings)
        warned = sum(f.level == "warn" for f in findings)
        click.echo(
            f"\n{bad} unsafe, {warned} warning(s): "
            + (
                "jobs or results can be lost with these settings"
                if bad
                else "no setting here loses jobs" + (" (read the warnings)" if warned else "")
            )
        )
    if unsafe:
        raise click.exceptions.Exit(1)
