"""Typed tasks: mypy --strict accepts tests/typing/typed_ok.py and reports exactly the errors
marked ``# E: <code>`` in tests/typing/typed_errors.py (a wrong signature fails, a right one
passes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

HERE = Path(__file__).resolve().parent / "typing"
ROOT = HERE.parent.parent


@pytest.fixture(scope="module")
def report() -> dict[str, set[tuple[int, str]]]:
    out, err, _ = mypy_api.run(
        [
            "--strict",
            "--show-error-codes",
            "--no-error-summary",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            str(HERE / "typed_ok.py"),
            str(HERE / "typed_errors.py"),
        ]
    )
    found: dict[str, set[tuple[int, str]]] = {"typed_ok.py": set(), "typed_errors.py": set()}
    for line in out.splitlines():
        m = re.match(r"^(.*?):(\d+): error: .*\[([a-z-]+)\]$", line)
        if m:
            found.setdefault(Path(m.group(1)).name, set()).add((int(m.group(2)), m.group(3)))
    assert not err, err
    return found


def test_correct_calls_pass(report: dict[str, set[tuple[int, str]]]) -> None:
    assert report["typed_ok.py"] == set()
    assert set(report) == {"typed_ok.py", "typed_errors.py"}, report  # nothing in taskpipe/


def test_wrong_calls_are_type_errors(report: dict[str, set[tuple[int, str]]]) -> None:
    expected = {
        (n, m.group(1))
        for n, line in enumerate((HERE / "typed_errors.py").read_text().splitlines(), 1)
        if (m := re.search(r"# E: ([a-z-]+)$", line))
    }
    assert len(expected) >= 10
    assert report["typed_errors.py"] == expected
