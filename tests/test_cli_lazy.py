"""``taskpipe <command>`` imports the module of that command only (a worker does not import
the admin, history, dashboard... commands), and ``taskpipe --help`` still lists them all."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest

from taskpipe.cli import cli, main

cli_main = importlib.import_module("taskpipe.cli.main")


def test_the_table_names_every_command_and_its_modules() -> None:
    cli_main._register()
    assert set(cli.commands) == set(cli_main.COMMAND_MODULES)
    for name, command in cli.commands.items():
        modules = {f"taskpipe.cli.{m}" for m in cli_main.COMMAND_MODULES[name]}
        assert command.callback is not None
        assert command.callback.__module__ == f"taskpipe.cli.{cli_main.COMMAND_MODULES[name][0]}"
        subcommands = command.commands.values() if isinstance(command, click.Group) else ()
        for sub in subcommands:
            assert sub.callback is not None and sub.callback.__module__ in modules, (name, sub)


_LOADED_BY = """
import sys
from taskpipe.cli import main
code = main(sys.argv[1:])
print(" ".join(sorted(m for m in sys.modules if m.startswith("taskpipe.cli."))))
sys.exit(code)
"""


@pytest.mark.parametrize(
    ("args", "modules"),
    [
        (["worker", "--help"], "taskpipe.cli.main taskpipe.cli.worker_cmd"),
        (
            ["jobs", "--help"],
            "taskpipe.cli.admin taskpipe.cli.history_cmd taskpipe.cli.interrupt taskpipe.cli.main",
        ),
        (["doctor", "--help"], "taskpipe.cli.doctor_cmd taskpipe.cli.main"),
    ],
)
def test_a_command_imports_its_own_modules_only(args: list[str], modules: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _LOADED_BY, *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == modules
    assert "Usage: taskpipe " + args[0] in proc.stdout


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out.split("Commands:", 1)[1]
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert names == set(cli_main.COMMAND_MODULES)


def test_an_unknown_command_is_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert "No such command 'no-such-command'" in capsys.readouterr().err
