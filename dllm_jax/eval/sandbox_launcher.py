"""The code that runs inside a sandbox process: confine itself, then run one untrusted program.

This file is executed as a script (`python -I -S sandbox_launcher.py key=value ...`) by
`dllm_jax.eval.sandbox`; it is never imported by the library. It imports only a few standard
modules and its sibling modules (`sandbox_syscalls`, `sandbox_mounts`, `sandbox_limits`,
`sandbox_filter`, `sandbox_protocol`, found through this file's directory, which leaves
`sys.path` again before anything else runs), so that it starts quickly; `site` is skipped, and
the caller passes the site-packages directories, which go on `sys.path` without their `.pth`
files being run. It runs in the new process *before* any untrusted code, so it may use
privileges the caller handed it (root, or root inside a fresh user namespace) to set up the
confinement, and then gives them up for good:

1. Joins the run's memory cgroup, when the caller made one.
2. Reads the program (before the file system is rearranged).
3. In the namespace modes (the caller started us with `unshare` in new mount, pid, network and ipc
   namespaces, itself under a parent-death signal): builds the new root (`sandbox_mounts`).
4. Sets the resource limits and drops privileges, then installs the seccomp filter
   (`sandbox_limits`, `sandbox_filter`).
5. In the plain modes (no namespaces): the process first forks; the parent stays behind as a
   guardian that ends the whole process tree at the deadline or when the grader dies, and the
   child goes on with the limits, the uid switch and a Python-level guard that disables sockets
   and signal sending (a speed bump, not a wall).
6. Executes the program in a fresh `__main__` module. Only if it returns normally (no exception, no
   `SystemExit`, no `os._exit`) does the launcher read the completion token from an inherited pipe
   (it is not in the process's memory while the program runs) and write `PASS <token>` to the
   result pipe. With role "solution" it then serves the calls of a second launcher, role "tests",
   which runs the tests against stand-ins of the solution's functions (`sandbox_protocol`). See
   `dllm_jax.eval.sandbox` for what each proves.
"""

import builtins
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
  import sandbox_limits  # pylint: disable=wrong-import-position
  import sandbox_mounts  # pylint: disable=wrong-import-position
  import sandbox_protocol  # pylint: disable=wrong-import-position
  import sandbox_syscalls as sc  # pylint: disable=wrong-import-position
finally:  # the program must not import the library's other modules by their bare names
  del sys.path[0]

# Exit status for a failure of the confinement itself (reported by the caller as an infrastructure
# error, not a test failure).
SETUP_FAILED_EXIT = 97
# Exit status of the plain-mode guardian when it stopped the program at its deadline.
TIMEOUT_EXIT = 124
FAILED_EXIT = 1


def _descendants(root: int) -> list[int]:
  found, frontier = [], [root]
  while frontier:
    pid = frontier.pop()
    try:
      for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
          children = [int(child) for child in f.read().split()]
        found += children
        frontier += children
    except OSError:  # it exited meanwhile
      pass
  return found


def _kill_descendants() -> None:
  """SIGKILL and reap every descendant; as a subreaper we inherit the orphans of those we kill.

  Each round first stops every process it can see (a stopped process cannot fork), so a fork
  bomb cannot refill the tree as fast as it is emptied.
  """
  import signal  # pylint: disable=import-outside-toplevel  (plain mode only; it is slow to import)
  end = time.monotonic() + 10.0
  while time.monotonic() < end:
    procs = _descendants(os.getpid())
    if not procs:
      return
    for sig in (signal.SIGSTOP, signal.SIGKILL):
      for pid in procs:
        try:
          os.kill(pid, sig)
        except ProcessLookupError:
          pass
    try:
      while os.waitpid(-1, os.WNOHANG)[0]:
        pass
    except ChildProcessError:
      pass
    time.sleep(0.001)


def _run_as_guardian(timeout_s: float, lifeline_fd: int) -> None:
  """Plain modes: stay behind as a subreaper parent that ends the whole process tree.

  Without a pid namespace nothing else finds the processes that left the process group
  (setsid, double fork). The guardian ends the tree at the deadline, and also when the grader
  dies (its parent-death signal, SIGTERM). Returns in the child, which goes on to run the
  program; the parent never returns and exits with the child's status.
  """
  import signal  # pylint: disable=import-outside-toplevel
  watched = {signal.SIGCHLD, signal.SIGTERM}
  signal.pthread_sigmask(signal.SIG_BLOCK, watched)  # kept pending for sigtimedwait below
  sandbox_limits.die_with_parent(signal.SIGTERM, lifeline_fd)
  sc.check(sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1), "prctl(CHILD_SUBREAPER)")
  child = os.fork()
  if child == 0:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
    sandbox_limits.die_with_parent(signal.SIGKILL, lifeline_fd)
    return
  try:  # the out-of-memory killer picks the program, never the guardian (root only)
    with open("/proc/self/oom_score_adj", "w") as f:
      f.write("-1000")
  except OSError:
    pass
  deadline = time.monotonic() + timeout_s
  status = None
  while (left := deadline - time.monotonic()) > 0:
    info = signal.sigtimedwait(watched, left)
    if info is None:  # the deadline
      break
    if info.si_signo == signal.SIGTERM:  # the grader died (or the program signalled us)
      _kill_descendants()
      os._exit(FAILED_EXIT)
    pid, child_status = os.waitpid(child, os.WNOHANG)
    if pid:
      status = child_status
      break
  _kill_descendants()
  if status is None:
    os._exit(TIMEOUT_EXIT)
  if os.WIFSIGNALED(status):  # die the same way, so that the caller sees the signal
    signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
  os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else FAILED_EXIT)


def _print_traceback(error: BaseException, skip_frames: int) -> None:
  import traceback  # pylint: disable=import-outside-toplevel  (only failures pay for it)
  tb = error.__traceback__
  for _ in range(skip_frames):
    tb = tb.tb_next if tb is not None else None
  traceback.print_exception(type(error), error, tb)


_INT_KEYS = ("nonce_fd", "result_fd", "peer_in_fd", "peer_out_fd", "lifeline_fd", "memory_bytes",
             "cpu_seconds", "max_processes", "max_file_bytes", "max_open_files", "scratch_bytes")


def _parse_config(argv: list[str]) -> dict:
  cfg = dict(arg.split("=", 1) for arg in argv)
  for key in _INT_KEYS:
    cfg[key] = int(cfg[key])
  cfg["uid"] = int(cfg["uid"]) if cfg["uid"] else None
  cfg.setdefault("role", "program")
  cfg["timeout_s"] = float(cfg["timeout_s"])
  cfg["site_dirs"] = [p for p in cfg["site_dirs"].split(os.pathsep) if p]
  return cfg


def _report_setup_failure(result_fd: int, error: BaseException) -> None:
  os.write(result_fd, f"setup-error {type(error).__name__}: {error}\n".encode())
  os._exit(SETUP_FAILED_EXIT)


def main() -> None:
  cfg = _parse_config(sys.argv[1:])
  # Bound before the program runs, so that patching `os` from the program cannot change them.
  read, write, exit_now = os.read, os.write, os._exit
  nonce_fd, result_fd = cfg["nonce_fd"], cfg["result_fd"]
  if cfg["cgroup"]:
    try:
      sandbox_limits.join_cgroup(cfg["cgroup"])
    except BaseException as error:  # pylint: disable=broad-except
      _report_setup_failure(result_fd, error)
  if cfg["mode"].startswith("plain"):
    _run_as_guardian(cfg["timeout_s"], cfg["lifeline_fd"])
  try:
    sys.path.extend(p for p in cfg["site_dirs"] if p not in sys.path)
    with open(cfg["program_path"], "rb") as f:
      source = f.read()
    if cfg["mode"].startswith("ns"):
      sandbox_mounts.set_up_mounts(cfg["uid"], cfg["scratch_bytes"])
      workdir = sandbox_mounts.WORKDIR
      program_path = os.path.join(workdir, "program.py")
      with open(program_path, "wb") as f:
        f.write(source)
    else:
      workdir = cfg["workdir"]
      program_path = cfg["program_path"]
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    if cfg["mode"].startswith("plain"):
      sandbox_limits.install_guard()  # imports modules, so before the uid may lose access to them
    sandbox_limits.set_limits(cfg)
    sandbox_limits.drop_privileges(cfg)
  except BaseException as error:  # pylint: disable=broad-except
    _report_setup_failure(result_fd, error)
  try:
    code = compile(source, program_path, "exec", dont_inherit=True)
  except (SyntaxError, ValueError) as error:
    _print_traceback(error, skip_frames=1)
    if cfg["role"] == "solution":
      sandbox_protocol.Channel(cfg["peer_in_fd"], cfg["peer_out_fd"], read, write).send(
          ["failed", f"{type(error).__name__}: {error}"[:500]])
    exit_now(FAILED_EXIT)

  module = type(sys)("__main__")
  module.__file__ = program_path
  module.__builtins__ = builtins
  sys.modules["__main__"] = module
  sys.argv = [program_path]
  role = cfg["role"]
  if role != "program":
    channel = sandbox_protocol.Channel(cfg["peer_in_fd"], cfg["peer_out_fd"], read, write)
  if role == "tests":  # the solution says what it defines, or why it could not
    try:
      hello = channel.receive()
    except ValueError:
      hello = ["failed", "it wrote something else into the tests' channel"]
    exports = sandbox_protocol.usable_exports(hello, cfg["entry_point"])
    if exports is None:
      reason = (str(hello[1])[:500] if type(hello) is list and len(hello) == 2 else
                "the solution's process ended before it was ready")
      print(f"SolutionError: the solution failed before the tests ran: {reason}", file=sys.stderr)
      exit_now(FAILED_EXIT)
    module.__dict__.update(sandbox_protocol.client(channel, *exports))
  try:
    exec(code, module.__dict__)  # pylint: disable=exec-used
  except SystemExit as stop:
    try:
      print(f"SystemExit({stop.code!r}) raised before the tests finished", file=sys.stderr)
      if role == "solution":
        channel.send(["failed", f"SystemExit({stop.code!r})"])
    finally:
      exit_now(FAILED_EXIT)
  except BaseException as error:  # pylint: disable=broad-except
    try:
      if isinstance(error, MemoryError):  # no memory left to import `traceback` with
        error.__traceback__ = None
        write(2, b"MemoryError: the memory limit was reached\n")
      else:
        _print_traceback(error, skip_frames=1)  # leave out the launcher's own frame
      if role == "solution":
        channel.send(["failed", f"{type(error).__name__}: {error}"[:500]])
    finally:
      exit_now(FAILED_EXIT)
  if role == "solution":
    channel.send(["ready", *sandbox_protocol.exports(module.__dict__)])
    sandbox_protocol.serve(channel, module.__dict__)
    exit_now(0)
  try:
    sys.stdout.flush()
    sys.stderr.flush()
  except BaseException:  # pylint: disable=broad-except
    pass
  token = b""
  while chunk := read(nonce_fd, 256):
    token += chunk
  write(result_fd, b"PASS " + token + b"\n")
  exit_now(0)


if __name__ == "__main__":
  main()
