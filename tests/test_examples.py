"""Every ``examples/*.py`` runs as a script (on the embedded ``memory://`` broker) and prints what
its docstring promises. The examples run in parallel processes to keep this file fast: each is
forked from one interpreter that has loaded the third-party dependencies (not taskpipe), so
that twelve processes do not import redis-py and fakeredis again (see ``_RUN_EACH``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# example name -> lines (regular expressions) its output must contain, in this order
EXPECTED: dict[str, list[str]] = {
    "quickstart": [
        r"^add\(2, 3\) = 5$",
        r"^resize -> \{'image_count': 3\} \| log: \[.*resized cat\.png to 64px \{\"size\": 64\}.*"
        r"resized cat\.png to 256px.*'WARNING resize: done with cat\.png'\]$",
        r"^divide\(1, 0\) failed: TaskFailed - ZeroDivisionError: division by zero$",
        r"^states: finished finished failed$",
    ],
    "results": [
        r"^no worker yet: get\(timeout=0\.1\) raised ResultTimeout$",
        r"^square\(7\) = 49 state: finished$",
        r"^fail\(\) -> ValueError bad input \| traceback lines: [1-9]\d*$",
        r"^square\(8\): result expired after its 100ms TTL$",
        r"^no-such-id: unknown$",
    ],
    "callbacks": [
        r"^on_finish callable got: 20$",
        r"^follow-up task returned: stored 21 bytes in bucket-1$",
    ],
    "delays": [
        r"^delayed job state: delayed$",
        r"^'500ms' ran after (\d+\.\d\d)s$",
        r"^eta \+1s ran after (\d+\.\d\d)s$",
    ],
    "kinetik": [
        r"^task 'send email' on tag 'notifications': Sends one transactional email\.$",
        r"^sent 'Hello Universe' to ford@example\.com$",
        r"^events: progress 1/2, progress 2/2, complete, progress 1/2, fail: ValueError$",
        r"^log: taskpipe: created \(task send email, channel notifications\)$",
        r"^log: taskpipe: started \(attempt 1\)$",
        r"^log: Email sent \{\"receipt\": \"r-42\"\}$",
        r"^log: taskpipe: completed in \d+\.\d{3}s$",
        r"^failed job's last line: taskpipe: failed: ValueError: not an address: nobody$",
    ],
    "middleware": [
        r"^divide\(1, 4\) -> success \(header seen: yes\)$",
        r"^divide\(1, 0\) -> failure \(header seen: yes\)$",
        r"^1/4 = 0\.25$",
        r"^1/0 failed: ZeroDivisionError$",
        r"^reported to the error tracker: ZeroDivisionError in task divide$",
    ],
    "workflows": [
        r"^chain \(1 \+ 2\) \+ 10 \+ 100 = 113$",
        r"^group: \[0, 2, 4, 6, 8\] completed: 5$",
        r"^chord total of 0\.\.9 = 45$",
        r"^allow_failure ran with: 0$",
        r"^dependant of a failed parent: DependencyFailed$",
        r"^on_failure task: __main__\.fail failed with ValueError$",
        r"^aborted job state: aborted$",
    ],
    "history": [
        r"^state: failed \| task __main__\.charge \| args 1, card='4242' \| attempts 3 \| code E_DECLINED$",
        r"^error: CardDeclined: card 4242 declined$",
        r"^found by task and error: \[True\]$",
        r"^breakdown: \{'succeeded': 1, 'failed': 1, 'timeout': 0, 'aborted': 0\}$",
        r"^after requeue: order 1 charged \| requeues: 1$",
        r"^edited waiting job: \(3,\) \{'card': '5555'\} state: delayed$",
    ],
    "priorities": [
        r"^ran in order: high-1, default-priority, default-1, default-2$",
    ],
    "sharding": [
        r"^events has 4 shards; round robin used 4$",
        r"^status: events available=23 over 4 shards$",
        r"^ann: ran in order \[0, 1, 2, 3, 4\]$",
        r"^bob: ran in order \[0, 1, 2, 3, 4\]$",
        r"^cyd: ran in order \[0, 1, 2, 3, 4\]$",
        r"^keyed jobs used 3 shard\(s\)$",
    ],
    "flow_control": [
        r"^priorities ran in order: urgent, normal, nightly$",
        r"^peak concurrent syncs per user: \{'ann': 2, 'bob': 2\}$",
        r"^last of 5 rate-limited calls started >= 150 ms after publishing: True$",
        r"^second publish deduplicated: True, same job: True$",
    ],
    "cron": [
        r"^heartbeat from cron: job cron:heartbeat:\d+$",
        r"^heartbeat from cron: job cron:heartbeat:\d+$",
        r"^heartbeat\s+\* \* \* \* \* \*\s+next \S+\s+last \S+",
        r"^weekday-report\s+0 9 \* \* 1-5\s+next \S+\s+last -\s+\(never\)$",
    ],
}


# Runs each example given as an argument as ``python <example>`` would, in a process of its own
# forked from this one once it has imported the third-party modules (never taskpipe: each
# example imports taskpipe itself, as a script does): ``__name__ == "__main__"``, its own
# ``sys.argv`` and ``sys.path[0]``, its stdout and stderr to files, and the ordinary end of an
# interpreter (non-daemon threads joined, atexit handlers run) with the script's exit status.
_RUN_EACH = """
import gc, importlib, json, os, runpy, sys

outdir, paths = sys.argv[1], sys.argv[2:]
for dep in ("redis", "fakeredis", "lupa", "msgpack", "croniter", "click"):
    importlib.import_module(dep)
assert not [m for m in sys.modules if m == "taskpipe" or m.startswith("taskpipe.")]
gc.freeze()  # the children's collections leave the parent's objects (and pages) alone
sys.stdout.flush()
sys.stderr.flush()
children = {}
for path in paths:
    name = os.path.splitext(os.path.basename(path))[0]
    pid = os.fork()
    if pid == 0:
        for fd, suffix in ((1, ".out"), (2, ".err")):
            log = os.open(os.path.join(outdir, name + suffix), os.O_WRONLY | os.O_CREAT, 0o600)
            os.dup2(log, fd)
            os.close(log)
        sys.argv[:] = [path]
        sys.path[0] = os.path.dirname(path)
        runpy.run_path(path, run_name="__main__")
        sys.exit(0)  # raised here, the interpreter ends as after a script
    children[pid] = name
codes = {}
for pid, name in children.items():
    _, status = os.waitpid(pid, 0)
    codes[name] = os.waitstatus_to_exitcode(status)
print(json.dumps(codes))
"""


@pytest.fixture(scope="module")
def outputs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    env = {k: v for k, v in os.environ.items() if k != "TASKPIPE_BROKER_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    outdir = tmp_path_factory.mktemp("examples")
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN_EACH, str(outdir), *map(str, EXAMPLES)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its children too are stopped by killpg below
    )
    try:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, out + err
        codes: dict[str, int] = json.loads(out)
        yield {
            name: subprocess.CompletedProcess(
                [sys.executable, f"examples/{name}.py"],
                code,
                (outdir / f"{name}.out").read_text(),
                (outdir / f"{name}.err").read_text(),
            )
            for name, code in codes.items()
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)


def test_examples_exist() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"quickstart", "results", "callbacks", "delays", "priorities"} <= names


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", [p.stem for p in EXAMPLES])
def test_example_runs(name: str, outputs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    assert name in outputs, sorted(outputs)
    proc = outputs[name]
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert lines, f"{name} printed nothing"
    position = 0
    for pattern in EXPECTED.get(name, []):
        for index in range(position, len(lines)):
            if re.search(pattern, lines[index]):
                position = index + 1
                break
        else:
            pytest.fail(
                f"{name}: no line after line {position} matches {pattern!r}:\n" + proc.stdout
            )


def test_delays_example_waits(outputs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    out = outputs["delays"].stdout
    later = re.search(r"'500ms' ran after (\d+\.\d\d)s", out)
    eta = re.search(r"eta \+1s ran after (\d+\.\d\d)s", out)
    assert later and eta, out
    assert float(later.group(1)) >= 0.49  # never early (printed rounded to 10 ms)
    assert float(eta.group(1)) >= 0.99


def test_cron_example_fires_every_second_once(
    outputs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    """The cron example's heartbeat: one job per second, no second twice, no gap (this check
    was a second run of the example in test_scheduler.py)."""
    out = outputs["cron"].stdout
    beats = [
        line.rsplit(":", 1)[1]
        for line in out.splitlines()
        if line.startswith("heartbeat from cron: job cron:heartbeat:")
    ]
    assert len(beats) >= 3 and len(beats) == len(set(beats)), out
    seconds = sorted(int(b) for b in beats)
    assert seconds == list(range(seconds[0], seconds[-1] + 1)), out
    assert any(
        line.startswith("weekday-report") and "(never)" in line for line in out.splitlines()
    ), out
