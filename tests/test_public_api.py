"""The public surface: ``taskpipe.__all__`` resolves, errors are exported, the version is written once."""

from __future__ import annotations

import importlib.metadata
import inspect
from pathlib import Path

import pytest

import taskpipe
from taskpipe import errors

ROOT = Path(__file__).resolve().parent.parent


def test_every_exported_name_resolves() -> None:
    assert len(taskpipe.__all__) == len(set(taskpipe.__all__))
    for name in taskpipe.__all__:
        assert getattr(taskpipe, name) is not None, name


def test_broker_unavailable_is_exported() -> None:
    assert "BrokerUnavailable" in taskpipe.__all__
    assert taskpipe.BrokerUnavailable is errors.BrokerUnavailable


def test_exported_errors_are_documented_taskpipe_errors() -> None:
    exported = [getattr(taskpipe, n) for n in taskpipe.__all__]
    exported_errors = [e for e in exported if inspect.isclass(e) and issubclass(e, BaseException)]
    assert taskpipe.TaskpipeError in exported_errors and len(exported_errors) >= 15
    for exc in exported_errors:
        assert issubclass(exc, taskpipe.TaskpipeError), exc
        assert (exc.__doc__ or "").strip(), f"{exc.__name__} has no docstring"


def test_the_version_is_written_once() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert taskpipe.__version__ == importlib.metadata.version("taskpipe")


def test_changelog_names_the_current_version() -> None:
    assert f"## {taskpipe.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_names_the_docs_import_from_taskpipe_are_exported() -> None:
    import re

    texts = [
        p.read_text()
        for p in [
            ROOT / "README.md",
            *(ROOT / "docs").glob("*.md"),
            *(ROOT / "examples").rglob("*.py"),
        ]
    ]
    names = {
        n.strip()
        for text in texts
        for group in re.findall(r"from taskpipe import ([A-Za-z_, ]+)", text)
        for n in group.split(",")
        if n.strip()
    }
    assert names and names <= set(taskpipe.__all__), names - set(taskpipe.__all__)


def test_all_is_small_and_grouped() -> None:
    source = (ROOT / "taskpipe" / "__init__.py").read_text()
    block = source[source.index("__all__ = [") :]
    assert block.count("    # ") >= 4  # comment groups
    # small: the errors a user catches and the objects they build; helpers stay in their modules
    # (41 after issues 14-16 and 21: the workflow errors and ShardCountChanged)
    assert len(taskpipe.__all__) <= 45
