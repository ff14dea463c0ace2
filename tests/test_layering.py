"""Import hygiene: every module imports on its own, no runtime import cycle, imports point down.

The layer order is DESIGN §1 (docs/architecture.md), read from the source with ``ast``:

    0 errors, durations, limits, states   (no taskpipe imports but errors)
    1 connection
    2 thoonk/
    3 app, task, publishing, results, serialization, context, callbacks, loading, cron
    4 worker/, scheduler
    5 inspection/                         (the operators' read layer over channels and workers)
    6 cli/, contrib/, testing, __main__, the ``taskpipe`` facade

A module may import its own layer or any layer below it, at module level or inside a function.
Imports under ``if TYPE_CHECKING:`` are annotations only and are not checked.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import taskpipe

PKG = Path(taskpipe.__file__).parent

LAYERS: list[tuple[int, str]] = [  # (layer, module prefix); the longest matching prefix wins
    (0, "taskpipe.errors"),
    (0, "taskpipe.durations"),
    (0, "taskpipe.limits"),
    (0, "taskpipe.states"),
    (1, "taskpipe.connection"),
    (1, "taskpipe.broker_url"),
    (1, "taskpipe.list_waiter"),
    (1, "taskpipe.broker_retry"),
    (2, "taskpipe.thoonk"),
    (3, "taskpipe.app"),
    (3, "taskpipe.task"),
    (3, "taskpipe.results"),
    (3, "taskpipe.serialization"),
    (3, "taskpipe.context"),
    (3, "taskpipe.callbacks"),
    (3, "taskpipe.loading"),
    (3, "taskpipe.sharding"),
    (3, "taskpipe.aio"),
    (3, "taskpipe.eager"),
    (3, "taskpipe.cron"),
    (3, "taskpipe.publishing"),
    (3, "taskpipe.flow"),
    (3, "taskpipe.workflows"),
    (3, "taskpipe.aliases"),
    (3, "taskpipe.history"),
    (3, "taskpipe.middleware"),
    (3, "taskpipe.events"),
    (3, "taskpipe.extensions"),
    (3, "taskpipe.definition"),
    (3, "taskpipe.lifecycle"),
    (4, "taskpipe.worker"),
    (4, "taskpipe.scheduler"),
    (5, "taskpipe.inspection"),
    (6, "taskpipe.cli"),
    (6, "taskpipe.contrib"),
    (6, "taskpipe.testing"),
    (6, "taskpipe.__main__"),
    (6, "taskpipe"),
]

# Upward imports that remain, each with the issue that removes it. Keep this list shrinking.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def _modules() -> list[str]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


MODULES = _modules()


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for layer, prefix in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > best[0]:
                best = (len(prefix), layer)
    return None if best is None else best[1]


def _path_of(module: str) -> Path:
    rel = Path(*module.split("."))
    pkg = PKG.parent / rel / "__init__.py"
    return pkg if pkg.exists() else (PKG.parent / rel).with_suffix(".py")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(module: str, *, module_level_only: bool) -> set[str]:
    """taskpipe modules ``module`` imports when it runs (``from a import b`` -> ``a.b`` if a module)."""
    found = _imports(module, module_level_only=module_level_only)
    return {m for m in found if m == "taskpipe" or m.startswith("taskpipe.")}


def _imports(module: str, *, module_level_only: bool) -> set[str]:
    """Every module ``module`` imports when it runs, taskpipe's or not (not under TYPE_CHECKING)."""
    path = _path_of(module)
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit_stmt(sub)
                continue
            if module_level_only and isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            ):
                continue
            visit_stmt(child)

    def visit_stmt(child: ast.AST) -> None:
        if isinstance(child, ast.Import):
            found.update(a.name for a in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (child.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in child.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
        visit(child)

    visit(tree)
    return found


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if _layer(m) is None] == []
    assert len(MODULES) > 40  # the walk found the package


def test_imports_point_down() -> None:
    upward = []
    for module in MODULES:
        for target in _runtime_imports(module, module_level_only=False):
            if target == module or target not in MODULES:
                continue
            if module.startswith(target + "."):  # a package's own __init__ (runs first anyway)
                continue
            src, dst = _layer(module), _layer(target)
            assert src is not None and dst is not None
            if dst > src and (module, target) not in ALLOWED_UPWARD:
                upward.append(f"{module} (layer {src}) imports {target} (layer {dst})")
    assert upward == []


def test_allowed_upward_imports_still_exist() -> None:
    # an exception that is no longer needed must leave the list
    for module, target in ALLOWED_UPWARD:
        assert target in _runtime_imports(module, module_level_only=False), (module, target)


# private names another package may import, and why
ALLOWED_PRIVATE = {
    ("taskpipe.context", "_set_current"): "the worker sets current_job; users only read it",
    ("taskpipe.context", "_reset_current"): "the worker sets current_job; users only read it",
}


def test_no_private_names_imported_across_packages() -> None:
    crossing = []
    for module in MODULES:
        tree = ast.parse(_path_of(module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("taskpipe"):
                src_pkg = module.split(".")[:2]
                dst_pkg = (node.module or "").split(".")[:2]
                for alias in node.names:
                    if (
                        alias.name.startswith("_")
                        and src_pkg != dst_pkg
                        and (node.module, alias.name) not in ALLOWED_PRIVATE
                    ):
                        crossing.append(f"{module} imports {node.module}.{alias.name}")
    assert crossing == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    return found


def test_no_module_level_import_cycle() -> None:
    graph = {}
    for module in MODULES:
        # edges into a package's own __init__ are how Python imports submodules, not a cycle
        graph[module] = {
            t
            for t in _runtime_imports(module, module_level_only=True)
            if t in MODULES
            and t != module
            and not module.startswith(t + ".")
            and not t.startswith(module + ".")
        }
    assert _cycles(graph) == []


def test_cycle_detector_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


_IMPORT_EACH = """
import importlib, sys, traceback

def loaded():
    return {m for m in sys.modules if m == "taskpipe" or m.startswith("taskpipe.")}

import taskpipe  # every "import taskpipe.x" runs the package's __init__ first, and only then x
base = loaded()
failed = []
for name in sys.argv[1:]:
    for extra in loaded() - base:
        del sys.modules[extra]
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] != "taskpipe":
            print("skipped", name, "- optional dependency missing:", exc.name, file=sys.stderr)
            continue  # an extra that is not installed (pip install -e '.[test]' has them all)
        failed.append(name + ": " + traceback.format_exc(limit=-2))
    except Exception as exc:
        if type(exc).__name__ in ("ImproperlyConfigured", "AppRegistryNotReady"):
            # a Django app's models/admin module: Django imports it after django.setup()
            print("skipped", name, "- needs configured Django settings", file=sys.stderr)
            continue
        failed.append(name + ": " + traceback.format_exc(limit=-2))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


# where os.fork exists, test_every_module_imports_in_a_fresh_interpreter checks the same, in a
# really fresh state (this check cannot undo what an earlier module did to a package it shares)
_FORK_CHECK_RUNS = pytest.mark.skipif(
    hasattr(os, "fork"), reason="the fresh-interpreter (fork) check covers it"
)


@_FORK_CHECK_RUNS
def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, as in a fresh interpreter, with no other taskpipe module loaded.

    In a fresh interpreter ``import taskpipe.x`` first runs ``taskpipe/__init__.py`` (which loads
    a fixed set of modules, always in the same order) and only then ``x``. So one interpreter
    imports ``taskpipe`` once and, before each module, drops every taskpipe module loaded since:
    the same state a fresh interpreter would be in, for one interpreter start instead of fifty.
    """
    modules = [m for m in MODULES if m != "taskpipe.__main__"]  # that one runs the CLI
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *modules], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@_FORK_CHECK_RUNS
def test_the_import_check_sees_a_broken_module(tmp_path: Path) -> None:
    (tmp_path / "tp_broken_probe.py").write_text("import taskpipe\nraise ImportError('boom')\n")
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, "taskpipe.loading", "tp_broken_probe"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 1 and "tp_broken_probe: " in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["claim_from", "wait_and_claim"])
def test_claiming_names_still_importable_from_job(name: str) -> None:
    from taskpipe.thoonk import claiming, job

    assert getattr(job, name) is getattr(claiming, name)
    with pytest.raises(AttributeError):
        job.no_such_name  # noqa: B018


def test_load_app_lives_in_the_app_layer() -> None:
    import importlib

    from taskpipe.loading import load_app

    assert importlib.import_module("taskpipe.cli.main").load_app is load_app


# DESIGN §1, top to bottom reversed: each group's modules sit in a higher layer than the last's
DESIGN_ORDER: list[tuple[str, ...]] = [
    ("taskpipe.connection",),
    ("taskpipe.thoonk",),
    ("taskpipe.app", "taskpipe.task", "taskpipe.results", "taskpipe.serialization"),
    ("taskpipe.worker", "taskpipe.scheduler"),
    ("taskpipe.cli", "taskpipe.contrib"),
]


def test_layers_keep_the_order_of_design_section_1() -> None:
    layers: list[set[int]] = []
    for group in DESIGN_ORDER:
        found = {m: _layer(m) for m in group}
        assert None not in found.values(), f"not in LAYERS: {found}"
        layers.append({layer for layer in found.values() if layer is not None})
    for lower, upper in zip(layers, layers[1:]):
        assert max(lower) < min(upper), (lower, upper)
    assert _layer("taskpipe.errors") == 0 and _layer("taskpipe.durations") == 0


def test_architecture_page_lists_the_same_layers() -> None:
    """docs/architecture.md's table and LAYERS agree for every module the page names."""
    page = (PKG.parent / "docs" / "architecture.md").read_text()
    named = 0
    for row in page.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].isdigit():
            continue
        for module in re.findall(r"`(taskpipe(?:\.\w+)*)`", cells[1]):
            named += 1
            assert _layer(module) == int(cells[0]), (module, cells[0])
    assert named >= 10


_FORK_EACH = """
import gc, importlib, importlib.machinery, importlib.util, os, sys, traceback

deps, modules = sys.argv[1].split(","), sys.argv[2:]

# The third-party modules taskpipe imports at module level, never taskpipe itself: every child
# starts from a state that is a fresh interpreter's as far as taskpipe is concerned.
for dep in filter(None, deps):
    try:
        importlib.import_module(dep)
    except Exception:  # noqa: BLE001 - an extra not installed, or Django without settings
        pass
assert not [m for m in sys.modules if m == "taskpipe" or m.startswith("taskpipe.")]

# every child would compile the package from source again where no bytecode is written
# (PYTHONDONTWRITEBYTECODE): compile it once here, and let the imports take these code
# objects. Only the compiling is shared; every module imported is still executed.
spec = importlib.util.find_spec("taskpipe")  # finds the package without importing it
compiled = {}
for root, _dirs, files in os.walk(os.path.dirname(spec.origin)) if sys.dont_write_bytecode else ():
    for file in files:
        if file.endswith(".py"):
            path = os.path.join(root, file)
            with open(path, "rb") as f:
                compiled[path] = compile(f.read(), path, "exec", dont_inherit=True)
_source_to_code = importlib.machinery.SourceFileLoader.source_to_code


def source_to_code(self, data, path, *, _optimize=-1):
    code = compiled.get(path)
    return code if code is not None else _source_to_code(self, data, path, _optimize=_optimize)


importlib.machinery.SourceFileLoader.source_to_code = source_to_code


def loaded():
    return {m for m in sys.modules if m == "taskpipe" or m.startswith("taskpipe.")}


# In a fresh interpreter "import taskpipe.x" runs taskpipe/__init__.py to its end before it
# looks at x, and that __init__ always loads the same modules in the same order. So this one
# "import taskpipe" is what a fresh interpreter does first for EVERY module: a module it loads
# imports first exactly as here, and every other module is imported first, in a child of its
# own, from the state this leaves (the state in which a fresh interpreter would import it).
try:
    import taskpipe  # noqa: F401
except BaseException:  # noqa: BLE001 - every module needs it: they all fail
    print("taskpipe: " + traceback.format_exc(limit=-3))
    print("failed: taskpipe")
    sys.exit(1)
base = loaded()
gc.freeze()  # the children's collections leave the parent's objects (and pages) alone

PARALLEL = 2  # children at once
failed = []
running = {}  # pid -> module name
for name in [m for m in modules if m not in base]:
    if len(running) >= PARALLEL:
        pid, status = os.wait()
        if os.waitstatus_to_exitcode(status) != 0:
            failed.append(running[pid])
        del running[pid]
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not exc.name or exc.name.split(".")[0] == "taskpipe":
                print(name + ": " + traceback.format_exc(limit=-3))
                code = 1
        except Exception as exc:
            # a Django app's models/admin module: Django imports it after django.setup()
            if type(exc).__name__ not in ("ImproperlyConfigured", "AppRegistryNotReady"):
                print(name + ": " + traceback.format_exc(limit=-3))
                code = 1
        sys.stdout.flush()
        os._exit(code)
    running[pid] = name
for pid, name in running.items():
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        failed.append(name)
print("forked:", len([m for m in modules if m not in base]), "of", len(modules))
print("failed:", " ".join(sorted(failed)))
sys.exit(1 if failed else 0)
"""


def _third_party_imports() -> list[str]:
    """Every module outside taskpipe and the standard library that a taskpipe module imports at
    module level (the fresh-interpreter check's parent loads them once, for all its children)."""
    found: set[str] = set()
    for module in MODULES:
        found |= _imports(module, module_level_only=True)
    return sorted(
        m
        for m in found
        if m.split(".")[0] != "taskpipe" and m.split(".")[0] not in sys.stdlib_module_names
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_in_a_fresh_interpreter() -> None:
    """What a user's ``python -c 'import taskpipe.x'`` does, for every module: taskpipe's own
    modules are imported first in a state no taskpipe module was loaded in (only the
    third-party dependencies, to save their import time), every module the package's
    ``__init__`` does not load in a process of its own (see ``_FORK_EACH``). Catches a runtime
    import cycle that only shows when a module is imported first, and a module that needs
    another imported before it."""
    modules = [m for m in MODULES if m != "taskpipe.__main__"]  # that one runs the CLI
    deps = ",".join(_third_party_imports())
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_EACH, deps, *modules],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("failed:")
    forked = re.search(r"^forked: (\d+) of (\d+)$", proc.stdout, re.M)
    assert forked and 0 < int(forked.group(1)) < int(forked.group(2)), proc.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_the_fresh_import_check_sees_a_broken_module(tmp_path: Path) -> None:
    (tmp_path / "tp_broken_probe.py").write_text("import taskpipe\nraise ImportError('boom')\n")
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_EACH, "redis", "taskpipe.loading", "tp_broken_probe"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 1 and "failed: tp_broken_probe" in proc.stdout, proc.stdout
