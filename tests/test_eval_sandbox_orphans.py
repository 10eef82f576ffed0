"""A grading process killed with SIGKILL takes its sandboxes with it, and the next start removes
the scratch folders it left.

A grader process runs two programs whose processes fork (and leave their session) and sleep for
far longer than the test; the test waits until all of their processes exist, SIGKILLs the grader,
and then waits (bounded) for every one of them to be gone.
"""

import os
import pathlib
import select
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from dllm_jax.eval import sandbox, sandbox_host

from tests.test_eval_sandbox import _config_for

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
CHILDREN = 3  # forked by each program, each in a session of its own
PROGRAMS = 2
_SLEEPER = ("import os, time\nfor _ in range(%d):\n  if os.fork() == 0:\n    os.setsid()\n"
            "    break\ntime.sleep(600)\n" % CHILDREN)
_GRADER = """
import sys
sys.path.insert(0, {repo!r})
from dllm_jax.eval import sandbox, sandbox_host
config = sandbox.SandboxConfig(isolation={isolation!r}, python={python!r}, timeout_s=300,
                               memory_mb=256)
print("mode", sandbox.resolve_isolation(config), flush=True)
sandbox.run_many([{program!r}] * {programs}, workers={programs}, config=config)
"""


def _processes_of(grader_pid: int) -> list[int]:
  """Live (not zombie) processes started for the grader's sandboxes: their command lines name
  the grader's scratch folder, which carries the grader's pid."""
  marker = f"dllm_sandboxes_{grader_pid}_".encode()
  found = []
  for entry in os.listdir("/proc"):
    if not entry.isdigit() or int(entry) == grader_pid:
      continue
    try:
      with open(f"/proc/{entry}/cmdline", "rb") as f:
        cmdline = f.read()
      with open(f"/proc/{entry}/stat", "rb") as f:
        state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
      continue
    if marker in cmdline and state != b"Z":
      found.append(int(entry))
  return found


def _wait_for(condition, timeout_s: float, what: str):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if (value := condition()):
      return value
    time.sleep(0.05)
  pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


@pytest.mark.parametrize("isolation", ["namespaces", "plain"])
def test_sandboxes_die_with_a_killed_grader(isolation):
  config = _config_for(isolation)
  script = _GRADER.format(repo=str(REPO), isolation=isolation, python=config.python,
                          program=_SLEEPER, programs=PROGRAMS)
  grader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  try:
    # The grader says which mode it resolved once its sandbox works (the probe takes < 30 s).
    if not select.select([grader.stdout], [], [], 120)[0]:
      pytest.fail("the grader printed nothing for 120 s")
    line = grader.stdout.readline()
    assert line.startswith("mode"), (line, grader.stderr.read() if grader.poll() else "")
    # Every program's first process plus its CHILDREN forks.
    expected = PROGRAMS * (1 + CHILDREN)
    _wait_for(lambda: len(_processes_of(grader.pid)) >= expected, 60,
              f"{expected} sandbox processes of the grader to start")
    scratch = [p for p in pathlib.Path(tempfile.gettempdir()).glob(f"dllm_sandboxes_{grader.pid}_*")]
    assert scratch, "the grader's scratch folder is missing"
    os.kill(grader.pid, signal.SIGKILL)
    grader.wait(timeout=30)
    start = time.monotonic()
    deadline = start + 10
    while (left := _processes_of(grader.pid)) and time.monotonic() < deadline:
      time.sleep(0.05)
    assert not left, f"{len(left)} sandbox processes outlived the grader by 10 s: {left}"
    print(f"{isolation}: sandboxes gone {time.monotonic() - start:.2f} s after the SIGKILL")
    # The next start (here: this process's next scratch folder) removes what the grader left.
    cgroups = sandbox_host.host().cgroups  # (also starts this process's own scratch folder)
    sandbox.remove_stale_scratch()
    assert not [p for p in scratch if p.exists()], scratch
    if cgroups is not None:  # and the memory cgroups of its runs
      base = os.path.dirname(cgroups.parent)
      assert not [p for p in scratch if os.path.exists(os.path.join(base, p.name))]
  finally:
    if grader.poll() is None:
      grader.kill()
      grader.wait()
    for pid in _processes_of(grader.pid):  # (before the fix: clean up what survived)
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        pass


@pytest.mark.parametrize("isolation", ["namespaces", "plain"])
def test_a_grader_that_died_before_the_signal_was_armed_stops_the_launch(isolation):
  """The parent-death signal cannot fire for a parent already dead: the launcher then finds the
  lifeline closed and exits before the program runs (here the lifeline's write end is closed on
  purpose, as the kernel would close it with a dead grader)."""
  config = _config_for(isolation)
  host = sandbox_host.host()
  dead_read, dead_write = os.pipe()
  os.close(dead_write)
  live = host.lifeline
  try:
    host.lifeline = dead_read
    result = sandbox.run_program("print('ran')\n", config)
  finally:
    host.lifeline = live
    os.close(dead_read)
  assert not result.passed and "ran" not in result.stdout, result
  assert sandbox.run_program("print('ran')\n", config).stdout == "ran\n"  # a live lifeline
