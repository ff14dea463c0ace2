"""The deployment assets in ``contrib/`` (Dockerfile, docker-compose, supervisor, systemd,
Prometheus rules and scrape config, Grafana dashboard) are valid as files and agree with the code:
every file parses, every taskpipe command line in them is accepted by our CLI (click parses it,
nothing runs), every path the Dockerfile copies exists, every metric name in the dashboard and
the alert rules is one our exporter serves, and ``systemd-analyze verify`` accepts the unit.
"""

from __future__ import annotations

import configparser
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

yaml = pytest.importorskip("yaml")

from taskpipe import TaskPipe  # noqa: E402
from taskpipe.cli.main import _register, cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"
DOCKERFILE = CONTRIB / "docker" / "Dockerfile"
COMPOSE = CONTRIB / "docker" / "docker-compose.yml"
SUPERVISOR = CONTRIB / "supervisor" / "taskpipe.conf"
UNIT = CONTRIB / "systemd" / "taskpipe-worker.service"
ALERTS = CONTRIB / "prometheus" / "taskpipe-alerts.yml"
SCRAPE = CONTRIB / "prometheus" / "prometheus.yml"
DASHBOARD = CONTRIB / "grafana" / "taskpipe-dashboard.json"
GRAFANA_YAML = [CONTRIB / "grafana" / "provisioning.yml", CONTRIB / "grafana" / "datasource.yml"]

_METRIC = re.compile(r"\btaskpipe_[a-z_]+\b")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")


def parse_command(argv: list[str]) -> click.Context:
    """Parse a ``taskpipe ...`` command line with our click CLI, without running it: unknown
    commands or options, bad values and missing required options raise ``click.UsageError``."""
    assert argv and Path(argv[0]).name == "taskpipe", argv
    _register()  # the commands' modules add them to ``cli`` (as ``taskpipe`` does at start)
    ctx = click.Context(cli, info_name="taskpipe")
    cmd: click.Command = cli
    args = list(argv[1:])
    while isinstance(cmd, click.Group):
        assert args, f"no command after {argv}"
        sub = cmd.get_command(ctx, args[0])
        if sub is None:
            raise click.UsageError(f"no such command {args[0]!r}")
        ctx = sub.make_context(args[0], args[1:], parent=ctx)
        cmd, args = sub, list(ctx.args)
    return ctx


def seconds(text: str) -> float:
    m = _DURATION.match(text)
    assert m, text
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# the CLI check itself ---------------------------------------------------------------------------
def test_parse_command_refuses_bad_command_lines() -> None:
    ctx = parse_command(["taskpipe", "worker", "-A", "m:app", "-c", "4", "--grace", "30s"])
    assert ctx.params["concurrency"] == 4 and ctx.params["app_path"] == "m:app"
    for bad in (
        ["taskpipe", "wroker", "-A", "m:app"],
        ["taskpipe", "worker", "-A", "m:app", "--nope"],
        ["taskpipe", "worker", "-A", "m:app", "-c", "0"],
        ["taskpipe", "dashboard", "--port", "99999"],
    ):
        with pytest.raises(click.UsageError):
            parse_command(bad)


# Dockerfile --------------------------------------------------------------------------------------
def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_paths_that_exist_and_runs_a_valid_command() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    copies = [rest for word, rest in instructions if word in ("COPY", "ADD")]
    assert copies
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        for source in parts[:-1]:  # the build context is the repository root
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is missing"
    cmd = [rest for word, rest in instructions if word == "CMD"]
    assert len(cmd) == 1
    argv = json.loads(cmd[0])  # exec form: signals reach taskpipe, not a shell
    parse_command(argv)
    assert ("USER", "taskpipe") in instructions  # tasks never run as root
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    app_env = next(rest for word, rest in instructions if word == "ENV" and "TASKPIPE_APP" in rest)
    assert "TASKPIPE_APP=demo_tasks:app" in app_env


def test_the_demo_task_module_loads_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKPIPE_BROKER_URL", "memory://")
    monkeypatch.syspath_prepend(str(CONTRIB / "docker"))
    demo_tasks: Any = importlib.import_module("demo_tasks")  # contrib/docker/demo_tasks.py
    try:
        app: TaskPipe = demo_tasks.app
        from taskpipe.testing import run_until_idle

        r = demo_tasks.add.delay(2, 3)
        run_until_idle(app)
        assert r.get(timeout=5) == 5
    finally:
        demo_tasks.app.close()
        sys.modules.pop("demo_tasks", None)


# docker-compose ----------------------------------------------------------------------------------
def test_compose_file_services_commands_and_mounts() -> None:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"redis", "worker", "dashboard"} <= set(services)
    base = COMPOSE.parent
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, (name, dep)
        build = svc.get("build")
        if build:
            context = (base / build["context"]).resolve()
            assert context == ROOT and (context / build["dockerfile"]).is_file(), build
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (base / source).is_file(), f"{name} mounts {source}, which is missing"
            else:
                assert source in compose.get("volumes", {}), (name, source)
        command = svc.get("command")
        if command and command[0] == "taskpipe":
            parse_command(command)
            assert svc["environment"]["TASKPIPE_BROKER_URL"] == "redis://redis:6379/0", name
    worker = services["worker"]["command"]
    assert seconds(services["worker"]["stop_grace_period"]) > seconds(option(worker, "--grace"))
    assert services["worker"]["init"] is True
    dashboard = services["dashboard"]
    assert option(dashboard["command"], "--host") == "0.0.0.0"
    assert dashboard["environment"]["TASKPIPE_DASHBOARD_TOKEN"]  # off loopback: protected
    redis_cmd = services["redis"]["command"]
    assert option(redis_cmd, "--maxmemory-policy") == "noeviction"
    assert option(redis_cmd, "--appendonly") == "yes"


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_accepts_the_file() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("docker has no compose plugin here")
    proc = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


# supervisor --------------------------------------------------------------------------------------
def test_supervisor_programs_run_valid_commands_and_stop_after_the_grace() -> None:
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(SUPERVISOR, encoding="utf-8")
    programs = [s for s in conf.sections() if s.startswith("program:")]
    assert {
        "program:taskpipe-worker",
        "program:taskpipe-scheduler",
        "program:taskpipe-dashboard",
    } <= set(programs)
    for section in programs:
        # supervisor's own %(name)s expansions, filled in as supervisor would
        command = (
            conf[section]["command"]
            .replace("%(host_node_name)s", "host")
            .replace("%(process_num)02d", "01")
        )
        argv = shlex.split(command)
        parse_command(argv)
        assert conf[section]["stopsignal"] == "TERM"
        if argv[1] == "worker":
            assert int(conf[section]["stopwaitsecs"]) > seconds(option(argv, "--grace"))
            assert conf[section]["stopasgroup"] == "false"  # the SIGTERM goes to the worker only
            assert conf[section]["killasgroup"] == "true"
            if int(conf[section].get("numprocs", "1")) > 1:  # unique names per process
                assert "%(process_num)" in conf[section]["command"]
                assert "%(process_num)" in conf[section]["process_name"]
    group = conf["group:taskpipe"]["programs"].split(",")
    assert {f"program:{p}" for p in group} == set(programs)


# systemd -----------------------------------------------------------------------------------------
def _exec_start() -> list[str]:
    text = UNIT.read_text(encoding="utf-8").replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_systemd_unit_runs_a_valid_command_and_stops_after_the_grace() -> None:
    argv = _exec_start()
    parse_command(argv)
    text = UNIT.read_text(encoding="utf-8")
    timeout = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert timeout > seconds(option(argv, "--grace"))
    assert re.search(r"^KillMode=mixed$", text, re.M)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    taskpipe = Path(sys.executable).parent / "taskpipe"
    assert taskpipe.exists()
    text = UNIT.read_text(encoding="utf-8")
    # the unit's example paths, pointed at this checkout so verify can check the executable
    text = text.replace("/srv/myproject/.venv/bin/taskpipe", str(taskpipe))
    text = text.replace("WorkingDirectory=/srv/myproject", f"WorkingDirectory={tmp_path}")
    unit = tmp_path / UNIT.name
    unit.write_text(text, encoding="utf-8")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert UNIT.name not in proc.stderr, proc.stderr  # no warning about the unit itself


# metric names -------------------------------------------------------------------------------------
class _Writer:
    def __init__(self) -> None:
        self.listeners: list[Any] = []


class _Worker:
    """What ``build_registry`` reads of a worker."""

    channel_names = ["default"]
    running: list[Any] = []
    concurrency = 4

    def __init__(self) -> None:
        self.writer = _Writer()


def exported_names() -> set[str]:
    """Every sample name our exporter can serve (app and worker metrics), from its own output:
    a counter ``x`` serves ``x_total``, a histogram ``x`` serves ``x_bucket``/``_sum``/``_count``."""
    pytest.importorskip("prometheus_client")
    from taskpipe.contrib.metrics import build_registry, render

    with TaskPipe(broker="memory://", prefix="assets:") as app:
        app.channel("default")
        registry, _wm = build_registry(app, _Worker())
        body = render(registry)[0].decode()
    names: set[str] = set()
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total")
            names |= {
                "counter": {base + "_total", base + "_created"},
                "histogram": {name + "_bucket", name + "_sum", name + "_count", name + "_created"},
            }.get(kind, {name})
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    assert "taskpipe_queue_depth" in names and "taskpipe_task_duration_seconds_bucket" in names
    return names


def _dashboard_exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [v for k, v in node.items() if k in ("expr", "definition") and isinstance(v, str)]
        query = node.get("query")
        if isinstance(query, dict) and isinstance(query.get("query"), str):
            out.append(query["query"])
        return out + [e for v in node.values() for e in _dashboard_exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _dashboard_exprs(v)]
    return []


def _balanced(expr: str) -> bool:
    """Brackets of a PromQL expression open and close in order (a cheap syntax check; the
    full one is ``promtool``, below, where installed)."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in expr:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] and dash["title"]
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert p["targets"], p["title"]
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
    exprs = _dashboard_exprs(dash)
    assert len(exprs) >= len(panels)
    names = exported_names()
    used = {m for e in exprs for m in _METRIC.findall(e)}
    assert used, "the dashboard queries no taskpipe metric"
    assert used <= names, f"not served by taskpipe/contrib/metrics.py: {sorted(used - names)}"
    for e in exprs:
        assert _balanced(e), e
    variables = {v["name"] for v in dash["templating"]["list"]}
    for e in exprs:
        for var in re.findall(r"\$(\w+)", e):
            assert var in variables or var.startswith("__"), f"unknown variable ${var} in {e}"


def test_alert_rules_use_only_exported_metrics() -> None:
    rules: dict[str, Any] = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    names = exported_names()
    titles = {a["alert"] for a in alerts}
    assert len(titles) == len(alerts)
    # queue backlog growing, no workers, failure rate, broker down (brief of issue 19)
    assert {
        "TaskpipeBacklogGrowing",
        "TaskpipeNoWorkers",
        "TaskpipeHighFailureRate",
        "TaskpipeBrokerDown",
    } <= titles
    for a in alerts:
        used = set(_METRIC.findall(a["expr"]))
        assert used and used <= names, (a["alert"], sorted(used - names))
        assert _balanced(a["expr"]), a["expr"]
        assert re.match(r"^\d+[smh]$", a["for"]), a
        assert a["labels"]["severity"] in ("critical", "warning")
        assert a["annotations"]["summary"] and a["annotations"]["description"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool")
def test_promtool_accepts_the_rules() -> None:
    proc = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_and_grafana_configs_parse_and_point_at_the_files() -> None:
    scrape: dict[str, Any] = yaml.safe_load(SCRAPE.read_text(encoding="utf-8"))
    assert [Path(f).name for f in scrape["rule_files"]] == [ALERTS.name]
    job = scrape["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == [
        "dashboard:8000"
    ]
    # the dashboard's token guards /metrics: Prometheus sends the compose file's token
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    token = compose["services"]["dashboard"]["environment"]["TASKPIPE_DASHBOARD_TOKEN"]
    assert job["authorization"]["credentials"] == token
    for path in GRAFANA_YAML:
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["apiVersion"] == 1
