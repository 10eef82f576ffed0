"""Run untrusted Python programs (model-written code and a benchmark's tests) in confined processes.

Every program runs in its own process, never in the caller's. `run_program` runs one;
`run_many` runs many with a pool of threads that each drive one subprocess at a time.

What is enforced, and how
-------------------------
Isolation mode "namespaces" (the default where it works: Linux with util-linux `unshare`, run as
root or with unprivileged user namespaces allowed, kernel >= 5.12 for `mount_setattr`). The
program runs under `unshare --pid --mount --net --ipc --fork --kill-child` (plus `--user
--map-root-user` when the caller is not root), and `sandbox_launcher.py` confines itself before it
runs any untrusted code:

* no network: a new network namespace with no interface up (not even loopback), so connections to
  127.0.0.1 or anywhere else fail; abstract unix sockets are per namespace too, and no directory
  holding service sockets (/run, the host's /tmp) is in the sandbox's root.
* file system: a new root (pivot_root) that holds only what the interpreter needs: /usr and the
  /lib* and /bin directories, /etc/ld.so.cache, the interpreter's own directories (its prefix and
  `sys.path`, the caller's site-packages), /dev/null, zero, full, random and urandom, the pid
  namespace's /proc, and a fresh tmpfs at /tmp (also seen at /var/tmp and /dev/shm) of
  `scratch_mb`; the working directory is /tmp/work on it. Everything but the tmpfs is read-only and
  nosuid. The host's other files (the checkout, /etc, home directories) are not there at all; the
  tmpfs exists only in the sandbox's mount namespace and vanishes with it.
* no new namespaces: a seccomp filter refuses `unshare`, `setns`, and `clone` with any CLONE_NEW*
  flag (`clone3` reports ENOSYS, so the C library falls back to `clone`), so the program cannot
  make a user namespace and hold capabilities there (x86_64 and aarch64; elsewhere the namespace
  mode reports a setup error and "auto" falls back to plain mode). The filter applies in plain
  mode too.
* processes: a new pid namespace. The program cannot see or signal processes outside it (the
  caller included), and when its first process exits or is killed the kernel kills every other
  process in it, however they were started (setsid, double fork).
* privileges: as root, the program runs as a fresh unprivileged uid picked at random per run from
  the top of the uid range, so RLIMIT_NPROC (a per-uid count) is a per-run limit and root-owned
  files are out of reach (interpreter directories it cannot traverse are bind-mounted back
  read-only). Not as root, it runs as root of a user namespace mapped to the caller's uid but
  with no capabilities, and RLIMIT_NPROC is counted per user namespace (Linux >= 5.14). In both
  cases: `no_new_privs` and an empty capability bounding set.

Isolation mode "plain" (fallback, chosen with a warning when the namespace probe fails): the
resource limits and a fresh temporary directory (deleted afterwards) as the working directory; as
root, the switch to a fresh uid (the interpreter must then be readable by any user) and, after the
run, SIGKILL to every process of that uid; a launcher parent that stays behind as a child
subreaper and kills the whole process tree, including processes that left the process group; and a
Python-level guard that disables `socket` and `os.kill`. The guard can be bypassed (ctypes,
subprocess), nothing stops reading or writing what the uid may read or write (/tmp, and as a
non-root caller the caller's own files), and as a non-root caller the program runs under the
caller's uid: RLIMIT_NPROC then counts all of the caller's processes (it is set to their current
number plus `max_processes`), and a program that gets around the guard can signal the caller's
processes. Use plain mode only for code you would run anyway.

In both modes: a wall-clock timeout after which the whole process group (and the pid namespace) is
killed with SIGKILL; RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE (also bounds captured output),
RLIMIT_NPROC, RLIMIT_NOFILE, RLIMIT_MSGQUEUE 0, no core files; stdin is /dev/null; the environment
is minimal; the interpreter runs with `-I -S`, and the caller's site-packages directories are put
on `sys.path` (without running `.pth` files) when the sandbox runs the caller's interpreter;
stdout and stderr are captured to files and truncated. Also in both modes:

* memory of the whole run: where the caller can make memory cgroups (as root, with cgroup v1's
  memory controller or a cgroup v2 that delegates it; `memory_cgroup_available()`), each run has
  one with `memory_mb` as its limit and no swap, so all of its processes together, with the
  memory they hold outside their address space (tmpfs pages), stay under it; the kernel kills a
  process of the run that goes over ("memory limit ... reached" in the message). Without one,
  `memory_mb` bounds each process's address space only: several processes may hold
  `max_processes` x `memory_mb`. In both cases the filter refuses the ways to hold memory that no
  process maps: `memfd_create`, `memfd_secret`, System V shared memory and message queues, POSIX
  message queues (`sandbox_filter`).
* the kernel's other doors (`sandbox_filter`): key calls (`add_key`, `request_key`, `keyctl`;
  the launcher first joins a new, empty session keyring, so not even the keyring it holds is the
  grader's), io_uring, AF_VSOCK sockets. In namespace mode /proc's files about the kernel
  (`/proc/kallsyms`, `modules`, `keys`, ...; `sandbox_mounts.MASKED_PROC_FILES`) read as empty.
* the grader's life: when the grading process dies, even by SIGKILL, its sandboxes die with it.
  Namespace mode: `unshare` runs under `setpriv --pdeathsig KILL` (util-linux; without setpriv
  this guarantee is lost) and its `--kill-child` kills the namespace's first process, and so the
  namespace; plain mode: the launcher's guardian gets SIGTERM at the grader's death and kills
  the whole tree. Each launcher re-arms its parent-death signal after the uid switch (which clears
  it), the filter refuses `prctl(PR_SET_PDEATHSIG)`, and a lifeline pipe (write end held by the
  grader only) closes the race with a grader that died before the signal was armed. The signal
  follows the *thread* that started the run: the functions here start and wait for each run on
  one thread. Working directories live in one scratch folder per grading process, locked for its
  life; the first run of a later process removes the folders (and memory cgroups) of processes
  that died (`remove_stale_scratch`).

How a pass is decided
---------------------
Tests (`run_tests`, what `code_grader` uses): the solution and the tests run in two sandboxes of
their own (two uids, two sets of namespaces), joined by a pair of pipes. The solution's process
runs the solution, then serves calls; the tests' process runs the benchmark's tests with a
stand-in for each function and class the solution defined (and its imported modules, imported
afresh). Plain data (numbers, strings, bytes, and lists, tuples, sets and dicts of them; subclasses
arrive as their exact base type) crosses by value; any other object stays with the solution and
the tests hold a handle that forwards attribute access, calls, iteration and truth tests but
refuses comparison. A run passes only if the tests' process exits with status 0 *and* its result
pipe carries `PASS <token>` (128 random bits, handed to that process only; see below). No code of
the solution ever runs in the tests' process, so it cannot skip or rewrite the asserts (an early
exit, `sys.settrace`, patched builtins, a redefined `check`), reach that process's pipes, or pass
with an object whose `__eq__` always returns True: the only thing it controls is what it returns.

One program (`run_program`, `run_many`): it passes only if the process exits with status 0 *and*
the result pipe carries `PASS <token>`. The launcher writes that line only after the whole program
returned without an exception, reading the token from an inherited pipe only then: `sys.exit(0)`
or `os._exit(0)` half-way, or printing a fake success line, fail. But the program runs in the
same interpreter as the launcher, so a program written to attack this can read the token's pipe
itself (its fd number is in /proc/self/cmdline) and forge a pass: this mode says whether an
honest program ran to the end, not whether an adversary's did. Grade untrusted code with
`run_tests`.
"""

import concurrent.futures
import dataclasses
import enum
import fcntl
import math
import os
import pathlib
import secrets
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence

from dllm_jax.eval import sandbox_cgroup, sandbox_host
from dllm_jax.eval.sandbox_host import remove_stale_scratch  # pylint: disable=unused-import

_LAUNCHER = pathlib.Path(__file__).with_name("sandbox_launcher.py")
# Must match sandbox_launcher.SETUP_FAILED_EXIT and TIMEOUT_EXIT.
_SETUP_FAILED_EXIT = 97
_GUARDIAN_TIMEOUT_EXIT = 124
# Plain mode: the launcher's guardian ends the run at the deadline; ours is a backstop.
_PLAIN_MODE_GRACE_S = 2.0
_PROBE_PROGRAM = "import collections, fractions, heapq, math, re\nassert math.gcd(4, 6) == 2\n"
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


class Status(str, enum.Enum):
  """How a run ended."""
  PASSED = "passed"  # exited 0 after the whole program ran (completion token seen)
  FAILED = "failed"  # an exception, an early exit, a crash, or a resource limit other than time
  TIMEOUT = "timeout"  # wall-clock or CPU time limit
  ERROR = "error"  # the sandbox itself could not be set up; says nothing about the program


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """Limits for one program run. `isolation` is "auto", "namespaces" or "plain"."""
  timeout_s: float = 10.0
  memory_mb: int = 1024
  cpu_s: int | None = None  # None: the wall-clock timeout rounded up
  max_processes: int = 64  # processes and threads
  max_file_mb: int = 16
  max_open_files: int = 256
  scratch_mb: int = 64  # size of the tmpfs holding the working directory (namespace mode)
  max_output_bytes: int = 4096  # kept per stream
  isolation: str = "auto"
  python: str = sys.executable

  def __post_init__(self):
    for name in ("timeout_s", "memory_mb", "max_processes", "max_file_mb", "max_open_files",
                 "scratch_mb", "max_output_bytes"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
    if self.cpu_s is not None and self.cpu_s <= 0:
      raise ValueError(f"cpu_s must be > 0 or None, got {self.cpu_s}")
    if self.isolation not in ("auto", "namespaces", "plain"):
      raise ValueError(f"isolation must be 'auto', 'namespaces' or 'plain', got {self.isolation!r}")


@dataclasses.dataclass(frozen=True)
class RunResult:
  """The outcome of one program; `message` is a short reason fit for a log line."""
  passed: bool
  status: Status
  message: str
  returncode: int | None
  wall_s: float
  stdout: str = ""
  stderr: str = ""


class SandboxUnavailableError(RuntimeError):
  """Raised when no isolation mode can run even a trivial program."""


class _UidPool:
  """Unprivileged uids for runs started as root: random, unused by other live runs of this process.

  They are drawn from the top of the largest range in /proc/self/uid_map (capped at 2**31), far
  from real accounts; another process using this module picks its own at random, so a collision
  (which would only make two runs share one RLIMIT_NPROC budget) is very unlikely.
  """

  _SPAN = 1 << 20

  def __init__(self):
    self._lock = threading.Lock()
    self._in_use: set[int] = set()
    self.low, self.high = self._range()

  def _range(self) -> tuple[int, int]:
    best = (0, 65536)
    with open("/proc/self/uid_map") as f:
      for line in f:
        inner, _, count = (int(x) for x in line.split())
        if count > best[1] - best[0]:
          best = (inner, inner + count)
    high = min(best[1], 1 << 31) - 2  # never (uid_t)-1 or -2
    low = max(best[0] + 1000, high - self._SPAN)
    if low >= high:
      raise SandboxUnavailableError(f"no spare uids in /proc/self/uid_map range {best}")
    return low, high

  def acquire(self) -> int:
    rng = secrets.SystemRandom()
    with self._lock:
      while True:
        uid = rng.randrange(self.low, self.high)
        if uid not in self._in_use and uid not in (65534, 65535):
          self._in_use.add(uid)
          return uid

  def release(self, uid: int) -> None:
    with self._lock:
      self._in_use.discard(uid)


_uid_pool: _UidPool | None = None
_mode_lock = threading.Lock()
_resolved_modes: dict[tuple[str, str], str] = {}



def memory_cgroup_available() -> bool:
  """Whether runs get a memory cgroup (all their processes together held to `memory_mb`)."""
  return sandbox_host.host().cgroups is not None


def _is_root() -> bool:
  return os.geteuid() == 0


def _get_uid_pool() -> _UidPool:
  global _uid_pool
  with _mode_lock:
    if _uid_pool is None:
      _uid_pool = _UidPool()
    return _uid_pool


def _same_interpreter(python: str) -> bool:
  return os.path.abspath(python) == os.path.abspath(sys.executable)


def sandbox_uid_range() -> range | None:
  """The uids that runs started as root switch to (one per run); None when not running as root."""
  if not _is_root():
    return None
  pool = _get_uid_pool()
  return range(pool.low, pool.high)


def _site_dirs(python: str) -> list[str]:
  """site-packages directories of the caller's interpreter, when the sandbox runs the same one."""
  if not _same_interpreter(python):
    return []
  dirs = site.getsitepackages()
  if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
    dirs.append(site.getusersitepackages())
  return [d for d in dirs if os.path.isdir(d)]


def _command(mode: str, python: str, launcher_cfg: dict) -> list[str]:
  args = [f"{key}={'' if value is None else value}" for key, value in launcher_cfg.items()]
  # Skipping `site` saves a few ms per run; another interpreter runs its own `site` instead.
  launch = [python, "-I", *(["-S"] if _same_interpreter(python) else []), str(_LAUNCHER), *args]
  if mode.startswith("plain"):
    return launch
  unshare = shutil.which("unshare", path=_ENV["PATH"]) or "unshare"
  flags = ["--fork", "--kill-child", "--pid", "--mount-proc", "--net", "--ipc"]
  if mode == "ns-user":
    flags.append("--map-root-user")
  # `unshare` dies with the grader (SIGKILL when the thread that started it ends), and its
  # --kill-child takes the pid namespace's first process, and so the whole namespace, with it.
  setpriv = shutil.which("setpriv", path=_ENV["PATH"])
  die_with_grader = [setpriv, "--pdeathsig", "KILL"] if setpriv else []
  return [*die_with_grader, unshare, *flags, "--", *launch]


def _kill_run(proc: subprocess.Popen) -> None:
  """SIGKILL the first process of the pid namespace (which takes the namespace with it) and the
  process group."""
  try:
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
      children = [int(pid) for pid in f.read().split()]
  except OSError:
    children = []
  for pid in children:
    try:
      os.kill(pid, signal.SIGKILL)
    except OSError:
      pass
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except OSError:
    pass


def _wait_without_reaping(proc: subprocess.Popen, timeout_s: float) -> bool:
  """Waits until the process exits (True) or the timeout passes (False), leaving it unreaped."""
  try:
    pidfd = os.pidfd_open(proc.pid)
  except (AttributeError, OSError):  # no pidfd (Linux < 5.3): poll for the exit instead
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
        return True
      time.sleep(0.005)
    return False
  try:  # a pidfd becomes readable when the process exits
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))
  finally:
    os.close(pidfd)


def _kill_uid(uid: int) -> None:
  """Kill every process of a sandbox uid (plain mode as root, where there is no pid namespace)."""
  kill = shutil.which("kill", path=_ENV["PATH"])
  if kill:
    subprocess.run([kill, "-KILL", "-1"], user=uid, group=uid, extra_groups=[], env=_ENV,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=10)


def _read_head(f, limit: int) -> str:
  f.seek(0)
  data = f.read(limit + 1)
  text = data[:limit].decode("utf-8", errors="replace")
  return text + ("\n[... truncated]" if len(data) > limit else "")


def _read_tail(f, limit: int) -> str:
  size = f.seek(0, os.SEEK_END)
  f.seek(max(0, size - limit))
  text = f.read().decode("utf-8", errors="replace")
  return ("[truncated ...]\n" if size > limit else "") + text


def _read_nonblocking(fd: int, limit: int = 1 << 16) -> bytes:
  data = b""
  while len(data) < limit:
    try:
      chunk = os.read(fd, limit)
    except BlockingIOError:
      break
    if not chunk:
      break
    data += chunk
  return data


def _last_line(text: str, width: int = 200) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1][:width] if lines else ""


def _classify(returncode: int, timed_out: bool, result: bytes, nonce: str, stderr: str,
              config: SandboxConfig) -> tuple[Status, str]:
  if timed_out or returncode == _GUARDIAN_TIMEOUT_EXIT:
    return Status.TIMEOUT, f"wall-clock limit of {config.timeout_s:g} s reached"
  token_seen = ("PASS " + nonce).encode() in result.splitlines()
  if returncode == 0 and token_seen:
    return Status.PASSED, "ran to the end without an exception"
  if returncode == _SETUP_FAILED_EXIT:
    lines = [line for line in result.splitlines() if line.startswith(b"setup-error")]
    if lines:
      return Status.ERROR, lines[0].decode(errors="replace")[:300]
  if returncode < 0:
    sig = -returncode
    name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
    if sig == signal.SIGXCPU:
      return Status.TIMEOUT, f"CPU time limit reached ({name})"
    if sig == signal.SIGXFSZ:
      return Status.FAILED, f"file size limit of {config.max_file_mb} MiB exceeded ({name})"
    if sig == signal.SIGKILL:  # not our timeout: the hard CPU limit, the OOM killer, or itself
      return Status.FAILED, "killed by SIGKILL (hard CPU limit, out of memory or its own doing)"
    return Status.FAILED, f"killed by {name}"
  if returncode == 0:
    return Status.FAILED, "exited with status 0 before the program finished (no completion token)"
  return Status.FAILED, _last_line(stderr) or f"exited with status {returncode}"


def _launcher_config(mode: str, workdir: str, program_path: str, nonce_fd: int, result_fd: int,
                     uid: int | None, config: SandboxConfig, role: str,
                     peer_fds: tuple[int, int], entry_point: str, lifeline_fd: int,
                     cgroup: str) -> dict:
  return {
      "mode": mode,
      "role": role,
      "entry_point": entry_point,
      "workdir": workdir,
      "program_path": program_path,
      "nonce_fd": nonce_fd,
      "result_fd": result_fd,
      "peer_in_fd": peer_fds[0],
      "peer_out_fd": peer_fds[1],
      "lifeline_fd": lifeline_fd,
      "cgroup": cgroup,
      "uid": uid,
      "memory_bytes": config.memory_mb << 20,
      "cpu_seconds": config.cpu_s if config.cpu_s is not None else math.ceil(config.timeout_s),
      "max_processes": config.max_processes,
      "max_file_bytes": config.max_file_mb << 20,
      "max_open_files": config.max_open_files,
      "scratch_bytes": config.scratch_mb << 20,
      "timeout_s": config.timeout_s,
      "site_dirs": os.pathsep.join(_site_dirs(config.python)),
  }


class _Launch:
  """One launcher process: its working directory, uid, pipes and captured output."""

  def __init__(self, source: str, mode: str, config: SandboxConfig, role: str = "program",
               peer_fds: tuple[int, int] = (-1, -1), entry_point: str = ""):
    self.mode, self.config, self.role = mode, config, role
    self.nonce = secrets.token_hex(16)
    self.uid = _get_uid_pool().acquire() if mode.endswith("root") else None
    host = sandbox_host.host()
    self.workdir = tempfile.mkdtemp(prefix="run_", dir=host.scratch)
    self.cgroups = host.cgroups
    self.cgroup = self.cgroups.create(config.memory_mb << 20) if self.cgroups else ""
    self.fds: list[int] = []
    self.out, self.err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    self.proc: subprocess.Popen | None = None
    program_path = os.path.join(self.workdir, "program.py")
    with open(program_path, "w", encoding="utf-8") as f:
      f.write(source)
    if mode == "plain-root":  # the working directory belongs to the sandbox uid
      os.chown(self.workdir, self.uid, self.uid)
      os.chown(program_path, self.uid, self.uid)
    inherited = [fd for fd in peer_fds if fd >= 0] + [host.lifeline]
    nonce_read = -1
    if role != "solution":  # the solution's verdict is never asked for: it gets no token
      nonce_read, nonce_write = os.pipe()
      self.fds.append(nonce_read)
      os.write(nonce_write, self.nonce.encode())
      os.close(nonce_write)
      inherited.append(nonce_read)
    self.result_read, result_write = os.pipe()
    self.fds += [self.result_read, result_write]
    fcntl.fcntl(self.result_read, fcntl.F_SETFL,
                fcntl.fcntl(self.result_read, fcntl.F_GETFL) | os.O_NONBLOCK)
    inherited.append(result_write)
    cfg = _launcher_config(mode, self.workdir, program_path, nonce_read, result_write, self.uid,
                           config, role, peer_fds, entry_point, host.lifeline, self.cgroup)
    self.start = time.monotonic()
    self.proc = subprocess.Popen(_command(mode, config.python, cfg), stdin=subprocess.DEVNULL,
                                 stdout=self.out, stderr=self.err, pass_fds=inherited,
                                 start_new_session=True, env=_ENV, cwd=self.workdir)
    for fd in (nonce_read, result_write):
      if fd >= 0:
        os.close(fd)
        self.fds.remove(fd)

  def wait(self, timeout_s: float) -> bool:
    """Waits for the exit (True) or the timeout (False); the process stays unreaped."""
    grace = _PLAIN_MODE_GRACE_S if self.mode.startswith("plain") else 0.0
    return _wait_without_reaping(self.proc, timeout_s + grace)

  def finish(self, timed_out: bool, wall_s: float) -> RunResult:
    """Kills what is left of the run and classifies how it ended."""
    # Not reaped yet, so its pid and process group id cannot have been reused by another run.
    _kill_run(self.proc)
    returncode = self.proc.wait()
    if self.mode == "plain-root":
      _kill_uid(self.uid)
    result = _read_nonblocking(self.result_read)
    stdout = _read_head(self.out, self.config.max_output_bytes)
    stderr = _read_tail(self.err, self.config.max_output_bytes)
    status, message = _classify(returncode, timed_out, result, self.nonce, stderr, self.config)
    if status is Status.FAILED and self.cgroup and (killed := self.cgroups.oom_kills(self.cgroup)):
      message = (f"memory limit of {self.config.memory_mb} MiB reached by the run's processes "
                 f"together (the kernel killed {killed} of them)")
    return RunResult(passed=status is Status.PASSED, status=status, message=message,
                     returncode=returncode, wall_s=wall_s, stdout=stdout, stderr=stderr)

  def close(self) -> None:
    if self.proc is not None and self.proc.returncode is None:
      _kill_run(self.proc)
      self.proc.wait()
    for fd in self.fds:
      os.close(fd)
    self.out.close()
    self.err.close()
    shutil.rmtree(self.workdir, ignore_errors=True)
    if self.cgroup:
      sandbox_cgroup.remove(self.cgroup)
    if self.uid is not None:
      _uid_pool.release(self.uid)


def _run_in_mode(source: str, mode: str, config: SandboxConfig) -> RunResult:
  launch = _Launch(source, mode, config)
  try:
    timed_out = not launch.wait(config.timeout_s)
    return launch.finish(timed_out, time.monotonic() - launch.start)
  finally:
    launch.close()


def _run_tests_in_mode(solution: str, tests: str, mode: str, config: SandboxConfig,
                       entry_point: str | None = None) -> RunResult:
  """The solution in one sandbox, the tests in another (see `run_tests`)."""
  to_solution_r, to_solution_w = os.pipe()
  to_tests_r, to_tests_w = os.pipe()
  pipes = [to_solution_r, to_solution_w, to_tests_r, to_tests_w]
  launches = []
  try:
    launches.append(_Launch(solution, mode, config, "solution", (to_solution_r, to_tests_w)))
    launches.append(_Launch(tests, mode, config, "tests", (to_tests_r, to_solution_w),
                            entry_point or ""))
    for fd in pipes:  # each end now lives only in the process that uses it
      os.close(fd)
    pipes = []
    solution_run, tests_run = launches
    timed_out = not tests_run.wait(config.timeout_s)
    wall_s = time.monotonic() - tests_run.start
    verdict = tests_run.finish(timed_out, wall_s)
    solution_side = solution_run.finish(False, wall_s)
    if Status.ERROR in (verdict.status, solution_side.status) and not verdict.passed:
      broken = verdict if verdict.status is Status.ERROR else solution_side
      return dataclasses.replace(broken, wall_s=wall_s)  # the sandbox's failure, not the code's
    if not verdict.passed and "the solution's process ended" in verdict.message + verdict.stderr:
      verdict = dataclasses.replace(
          verdict, message=f"{verdict.message} (the solution's process: {solution_side.message})")
    stderr = verdict.stderr
    if solution_side.stderr.strip():
      stderr += "\n--- the solution's process ---\n" + solution_side.stderr
    return dataclasses.replace(verdict, stdout=solution_side.stdout, stderr=stderr)
  finally:
    for fd in pipes:
      os.close(fd)
    for launch in launches:
      launch.close()


def resolve_isolation(config: SandboxConfig = SandboxConfig()) -> str:
  """The launcher mode runs with `config` will use ("ns-root", "ns-user", "plain-root" or
  "plain-user"), found once per (isolation, python) by running a probe program."""
  suffix = "root" if _is_root() else "user"
  if config.isolation == "namespaces":
    candidates = ["ns"]
  elif config.isolation == "plain":
    candidates = ["plain"]
  else:
    candidates = ["ns", "plain"]
  key = (config.isolation, config.python)
  with _mode_lock:
    if key in _resolved_modes:
      return _resolved_modes[key]
  probe_config = dataclasses.replace(config, timeout_s=max(config.timeout_s, 30.0))
  failures = []
  for kind in candidates:
    mode = f"{kind}-{suffix}"
    result = _run_in_mode(_PROBE_PROGRAM, mode, probe_config)
    if result.passed:
      if failures:
        warnings.warn(f"sandbox: using isolation mode {mode!r}, which is weaker: " +
                      "; ".join(failures), RuntimeWarning, stacklevel=2)
      with _mode_lock:
        _resolved_modes[key] = mode
      return mode
    failures.append(f"{mode} failed ({result.status.value}: {result.message} "
                    f"{_last_line(result.stderr)})")
  raise SandboxUnavailableError("no sandbox mode works here: " + "; ".join(failures))


def run_program(source: str, config: SandboxConfig = SandboxConfig()) -> RunResult:
  """Runs one Python program in a fresh confined process and reports whether it ran to the end."""
  return _run_in_mode(source, resolve_isolation(config), config)


def run_tests(solution: str, tests: str, config: SandboxConfig = SandboxConfig(),
              entry_point: str | None = None) -> RunResult:
  """Runs `tests` against `solution` with each in its own confined process (see "How a pass is
  decided"). The tests see the solution's functions, classes and imported modules, except that
  it may replace a builtin only with `entry_point`, the function under test."""
  return _run_tests_in_mode(solution, tests, resolve_isolation(config), config, entry_point)


def run_many_tests(cases: Sequence[tuple[str, str, str | None]], workers: int | None = None,
                   config: SandboxConfig = SandboxConfig()) -> list[RunResult]:
  """`run_tests` of many (solution, tests, entry_point) cases, `workers` at a time, in order."""
  if workers is not None and workers < 1:
    raise ValueError(f"workers must be >= 1, got {workers}")
  mode = resolve_isolation(config)
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
    return list(pool.map(lambda case: _run_tests_in_mode(case[0], case[1], mode, config, case[2]),
                         cases))


def default_workers() -> int:
  return max(1, min(8, 2 * (os.cpu_count() or 1)))


def run_many(programs: Sequence[str], workers: int | None = None,
             config: SandboxConfig = SandboxConfig()) -> list[RunResult]:
  """Runs programs concurrently (one subprocess per program, `workers` at a time), in order."""
  if workers is not None and workers < 1:
    raise ValueError(f"workers must be >= 1, got {workers}")
  mode = resolve_isolation(config)  # probe once, before the threads start
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
    return list(pool.map(lambda source: _run_in_mode(source, mode, config), programs))
