"""Limits and privileges of a sandbox process, set by the launcher before the program runs.

* memory: the launcher joins the memory cgroup the caller made for this run (when it could make
  one; `dllm_jax.eval.sandbox_cgroup`), which bounds all the memory the run's processes hold
  together, page cache and tmpfs included; RLIMIT_AS still bounds each process's address space.
* resource limits: address space, CPU time, file size, processes, open files, POSIX message
  queue bytes (0), no core files.
* privileges: `no_new_privs`, an empty capability bounding set, and either a switch to the
  unique unprivileged uid chosen by the caller (when started as real root) or an empty
  capability set (when started as root of a user namespace, which maps to the caller's own uid);
  a new, empty session keyring; then the seccomp filter (`sandbox_filter`).
* the grader's life: a parent-death signal (re-armed after the uid switch, which clears it; the
  filter keeps the program from clearing it) and a last look at the lifeline pipe, whose write
  end only the grader holds: when it has already died, the launcher exits instead of running
  the program.
* plain modes only: a Python-level guard that disables sockets and signal sending (a speed bump,
  not a wall).
"""

import ctypes
import os
import resource

import sandbox_filter
import sandbox_syscalls as sc

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_KEYCTL_JOIN_SESSION_KEYRING = 1
SIGKILL = 9  # (the `signal` module is slow to import)


class _CapHeader(ctypes.Structure):
  _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
  _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
              ("inheritable", ctypes.c_uint32)]


def join_cgroup(cgroup_dir: str) -> None:
  """Moves this process (and so everything it starts) into the run's cgroup."""
  with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
    f.write("0")  # 0: the writing process


def grader_alive(lifeline_fd: int) -> bool:
  """Whether the grader still holds the lifeline's write end (a read would block, not say EOF)."""
  os.set_blocking(lifeline_fd, False)
  try:
    return os.read(lifeline_fd, 1) != b""
  except BlockingIOError:
    return True


def die_with_parent(sig: int, lifeline_fd: int) -> None:
  """Arms the parent-death signal, then exits at once if the grader is already gone (it may have
  died before the signal was armed)."""
  sc.check(sc.prctl(sc.PR_SET_PDEATHSIG, sig), "prctl(SET_PDEATHSIG)")
  if lifeline_fd >= 0 and not grader_alive(lifeline_fd):
    os._exit(1)


def _count_own_tasks() -> int:
  """Threads and processes of the current real uid (what RLIMIT_NPROC counts outside namespaces)."""
  uid = os.getuid()
  count = 0
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        if os.stat(f"/proc/{entry}").st_uid == uid:
          count += len(os.listdir(f"/proc/{entry}/task"))
      except OSError:
        pass
  return count


def set_limits(cfg: dict) -> None:
  memory = cfg["memory_bytes"]
  cpu = cfg["cpu_seconds"]
  nproc = cfg["max_processes"]
  if cfg["mode"] == "plain-user":  # the limit is per real uid, so leave room for what already runs
    nproc += _count_own_tasks()
  limits = {
      resource.RLIMIT_CORE: (0, 0),
      resource.RLIMIT_AS: (memory, memory),
      resource.RLIMIT_CPU: (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
      resource.RLIMIT_FSIZE: (cfg["max_file_bytes"], cfg["max_file_bytes"]),
      resource.RLIMIT_NPROC: (nproc, nproc),
      resource.RLIMIT_NOFILE: (cfg["max_open_files"], cfg["max_open_files"]),
      resource.RLIMIT_MSGQUEUE: (0, 0),
  }
  for which, value in limits.items():
    resource.setrlimit(which, value)


def _new_session_keyring() -> None:
  """An anonymous session keyring of our own instead of the grader's. Best effort: where the call
  itself is refused (a container's seccomp profile) or over the key quota, the filter still
  refuses every key call to the program, which then cannot reach any keyring at all."""
  sc.libc.syscall(ctypes.c_long(sc.arch().keyctl), ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING),
                  None)


def drop_privileges(cfg: dict) -> None:
  """Gives up every privilege for good and installs the seccomp filter (the last step)."""
  sc.check(sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1), "prctl(NO_NEW_PRIVS)")
  mode = cfg["mode"]
  if mode != "plain-user":
    with open("/proc/sys/kernel/cap_last_cap") as f:
      last_cap = int(f.read())
    for cap in range(last_cap + 1):
      if sc.prctl(sc.PR_CAPBSET_DROP, cap) != 0 and mode.startswith("ns"):
        sc.check(-1, f"prctl(CAPBSET_DROP, {cap})")
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    uid = cfg["uid"]
    if uid is not None:  # real root: become a uid that owns nothing and runs nothing else
      os.setgroups([])
      os.setresgid(uid, uid, uid)
      os.setresuid(uid, uid, uid)
      if os.getresuid() != (uid, uid, uid):
        raise OSError("could not switch to the sandbox uid")
    else:  # root of our own user namespace: keep the uid, lose every capability
      data = (_CapData * 2)()
      sc.check(sc.libc.capset(ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)), data),
               "capset")
    with open("/proc/self/status") as f:
      cap_eff = [line for line in f if line.startswith("CapEff:")][0].split()[1]
    if int(cap_eff, 16) != 0:
      raise OSError(f"capabilities remain after dropping them: {cap_eff}")
  if sc.has_syscall_table():
    _new_session_keyring()
  elif mode.startswith("ns"):
    raise OSError(f"no system call table for {os.uname().machine} (seccomp filter)")
  # A change of uid clears the parent-death signal: arm it (again) now.
  die_with_parent(SIGKILL, cfg["lifeline_fd"])
  if cfg["lifeline_fd"] >= 0:
    os.close(cfg["lifeline_fd"])
  if sc.has_syscall_table():
    sandbox_filter.install()


def install_guard() -> None:
  """Plain modes only: make sockets and signal sending raise (bypassable with ctypes)."""
  import _socket  # pylint: disable=import-outside-toplevel
  import signal  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel

  def refuse(*args, **kwargs):
    raise PermissionError("disabled in this sandbox")

  class RefusedSocket:
    def __init__(self, *args, **kwargs):
      refuse()

  for module in (socket, _socket):
    module.socket = RefusedSocket
  socket.create_connection = socket.socketpair = socket.fromfd = refuse
  for module in (os, __import__("posix")):
    module.kill = module.killpg = refuse
  signal.pthread_kill = refuse
