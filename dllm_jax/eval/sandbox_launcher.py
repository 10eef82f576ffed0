"""The code that runs inside a sandbox process: confine itself, then run one untrusted program.

This file is executed as a script (`python -I -S sandbox_launcher.py key=value ...`) by
`dllm_jax.eval.sandbox`; it is never imported by the library. It imports only the few standard
modules it needs, so that it starts quickly; `site` is skipped, and the caller passes the
site-packages directories, which go on `sys.path` without their `.pth` files being run. It runs in
the new process *before* any untrusted code, so it may use privileges the caller handed it (root,
or root inside a fresh user namespace) to set up the confinement, and then gives them up for good:

1. Reads the program (before the file system is rearranged).
2. In the namespace modes (the caller started us with `unshare` in new mount, pid, network and ipc
   namespaces): assembles a new root on a small tmpfs holding only bind mounts of the system
   library directories, the interpreter's directories, a few devices and /proc, plus the
   size-limited scratch tmpfs at /tmp (also at /var/tmp and /dev/shm), pivots into it, detaches
   the old root, and makes every mount read-only and nosuid except the scratch tmpfs. The working
   directory is /tmp/work; all of it disappears with the mount namespace.
3. Sets the resource limits (address space, CPU time, file size, processes, open files, no core).
4. Drops privileges: `no_new_privs`, an empty capability bounding set, and either a switch to the
   unique unprivileged uid chosen by the caller (when started as real root) or an empty capability
   set (when started as root of a user namespace, which maps to the caller's own uid); then a
   seccomp filter that refuses new namespaces (`unshare`, `setns`, `clone` with CLONE_NEW*).
5. In the plain modes (no namespaces): only the limits and the uid switch apply, plus a Python-level
   guard that disables sockets and signal sending. The guard is a speed bump, not a wall.
6. Executes the program in a fresh `__main__` module. Only if it returns normally (no exception, no
   `SystemExit`, no `os._exit`) does the launcher read the completion token from an inherited pipe
   (it is not in the process's memory while the program runs) and write `PASS <token>` to the
   result pipe. With role "solution" it then serves the calls of a second launcher, role "tests",
   which runs the tests against stand-ins of the solution's functions (see "tests in their own
   process" below). See `dllm_jax.eval.sandbox` for what each proves.
"""

import builtins
import ctypes
import os
import resource
import sys
import time

# Exit status for a failure of the confinement itself (reported by the caller as an infrastructure
# error, not a test failure).
SETUP_FAILED_EXIT = 97
# Exit status of the plain-mode guardian when it stopped the program at its deadline.
TIMEOUT_EXIT = 124
FAILED_EXIT = 1

_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture (new-style syscall table)
_PR_CAPBSET_DROP = 24
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_MNT_DETACH = 2
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
_CLONE_NEW_FLAGS = 0x7E020080

_SCRATCH = "/tmp"
_WORKDIR = "/tmp/work"
# The scratch tmpfs is also seen at these (world-writable in a usual root).
_WRITABLE_SHARED = ("/var/tmp", "/dev/shm")
# Where the new root is assembled (any existing directory of the old root).
_NEW_ROOT = "/tmp"
# What the new root holds besides the interpreter's directories: system libraries and programs
# (symbolic links such as /lib -> usr/lib are recreated), the dynamic linker's cache, and devices.
_SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
_SYSTEM_FILES = ("/etc/ld.so.cache",)
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
  _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
              ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class _CapHeader(ctypes.Structure):
  _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
  _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
              ("inheritable", ctypes.c_uint32)]


def _check(result: int, what: str) -> None:
  if result != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
  enc = lambda s: None if s is None else s.encode()
  _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
         f"mount {source} on {target}")


def _mount_setattr(path: str, attr_set: int, attr_clr: int, recursive: bool) -> None:
  attr = _MountAttr(attr_set, attr_clr, 0, 0)
  flags = _AT_RECURSIVE if recursive else 0
  result = _libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD),
                         path.encode(), ctypes.c_uint(flags), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr)))
  _check(result, f"mount_setattr {path}")


def _prctl(option: int, arg: int, arg2: int = 0) -> int:
  return _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg2), ctypes.c_ulong(0),
                     ctypes.c_ulong(0))


def _is_inside(path: str, root: str) -> bool:
  return path == root or path.startswith(root.rstrip("/") + "/")


def _interpreter_paths() -> list[str]:
  """Directories the program's interpreter may still need to read: imports and the executable."""
  candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path,
                os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))]
  paths = []
  for candidate in candidates:
    if not candidate or not os.path.isdir(candidate):
      continue
    for p in (os.path.abspath(candidate), os.path.realpath(candidate)):
      if p not in paths:
        paths.append(p)
  return paths


def _outermost(paths: list[str]) -> list[str]:
  """A bind mount of a parent already carries its children."""
  return [p for p in paths if not any(q != p and _is_inside(p, q) for q in paths)]


def _system_paths() -> list[str]:
  """What the interpreter and the libraries it loads read outside its own prefix."""
  paths = [p for p in _SYSTEM_DIRS if os.path.isdir(p) and not os.path.islink(p)]
  return paths + [p for p in _SYSTEM_FILES if os.path.isfile(p)]


def _set_up_mounts(run_as_uid: int | None, scratch_bytes: int) -> None:
  """Builds a new root holding only the system library directories, the interpreter's own
  directories, a minimal /dev, the namespace's /proc and the scratch tmpfs, and moves into it."""
  os.umask(0o022)
  binds = _outermost(_system_paths() + _interpreter_paths())
  sources = {p: os.open(p, os.O_PATH | (os.O_DIRECTORY if os.path.isdir(p) else 0)) for p in binds}
  devices = {d: os.open(d, os.O_PATH) for d in _DEVICES if os.path.exists(d)}
  links = {p: os.readlink(p) for p in _SYSTEM_DIRS if os.path.islink(p)}  # /lib -> usr/lib, ...
  proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)

  root = _NEW_ROOT  # any existing directory: the new root's tmpfs is mounted over it
  _mount("tmpfs", root, "tmpfs", _MS_NOSUID, "mode=0755,size=1m,nr_inodes=8192")
  # The scratch goes first, so an interpreter that lives under /tmp (a virtual environment in a
  # checkout there) is bound over it, not hidden by it.
  for path in (_SCRATCH, *_WRITABLE_SHARED):
    os.makedirs(root + path, mode=0o755, exist_ok=True)
  _mount("tmpfs", root + _SCRATCH, "tmpfs", _MS_NOSUID | _MS_NODEV,
         f"mode=1777,size={scratch_bytes}")
  for path, fd in sorted(sources.items()):
    target = root + path
    if os.path.isdir(f"/proc/self/fd/{fd}"):
      os.makedirs(target, mode=0o755, exist_ok=True)
    else:
      os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
      open(target, "w").close()  # pylint: disable=consider-using-with
    _mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
  for path, link in links.items():
    if not os.path.lexists(root + path):
      os.symlink(link, root + path)
  os.makedirs(root + "/dev", mode=0o755, exist_ok=True)
  for path, fd in devices.items():
    open(root + path, "w").close()  # pylint: disable=consider-using-with
    _mount(f"/proc/self/fd/{fd}", root + path, None, _MS_BIND)
  for name, link in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
    os.symlink(link, f"{root}/dev/{name}")
  os.makedirs(root + "/proc", mode=0o555, exist_ok=True)
  _mount(f"/proc/self/fd/{proc}", root + "/proc", None, _MS_BIND | _MS_REC)
  for fd in [*sources.values(), *devices.values(), proc]:
    os.close(fd)
  for path in _WRITABLE_SHARED:
    _mount(root + _SCRATCH, root + path, None, _MS_BIND)

  os.chdir(root)  # pivot_root(".", ".") stacks the old root under the new one; then detach it
  _check(_libc.syscall(ctypes.c_long(_arch().pivot_root), b".", b"."), "pivot_root")
  _check(_libc.umount2(b".", ctypes.c_int(_MNT_DETACH)), "umount old root")
  os.chdir("/")
  _mount_setattr("/", _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, recursive=True)
  for path in (_SCRATCH, *_WRITABLE_SHARED):
    _mount_setattr(path, 0, _MOUNT_ATTR_RDONLY, recursive=False)
  os.mkdir(_WORKDIR, 0o700)
  if run_as_uid is not None:
    os.chown(_WORKDIR, run_as_uid, run_as_uid)


class _Arch:
  def __init__(self, audit: int, unshare: int, setns: int, clone: int, clone3: int,
               pivot_root: int, x32_bit: int = 0):
    self.audit, self.unshare, self.setns, self.clone, self.clone3 = (audit, unshare, setns, clone,
                                                                     clone3)
    self.pivot_root, self.x32_bit = pivot_root, x32_bit


_ARCHES = {
    "x86_64": _Arch(0xC000003E, unshare=272, setns=308, clone=56, clone3=435, pivot_root=155,
                    x32_bit=0x40000000),
    "aarch64": _Arch(0xC00000B7, unshare=97, setns=268, clone=220, clone3=435, pivot_root=41),
}


def _arch() -> _Arch:
  machine = os.uname().machine
  if machine not in _ARCHES:
    raise OSError(f"no system call table for {machine} (seccomp filter, pivot_root)")
  return _ARCHES[machine]


class _SockFilter(ctypes.Structure):
  _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
              ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
  _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _install_seccomp() -> None:
  """A seccomp filter that refuses new namespaces: `unshare` and `setns` (EPERM), `clone` with any
  CLONE_NEW* flag (EPERM), and `clone3` (ENOSYS: its flags sit in memory a filter cannot read,
  and the C library then falls back to `clone`). Other ABIs (x32, i386) get EPERM for everything.
  Without it, a program could create a user namespace and hold a full capability set there."""
  arch = _arch()
  ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
  allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
  code = [(ld, 0, 0, 4),  # seccomp_data.arch
          (jeq, 1, 0, arch.audit),
          (ret, 0, 0, eperm),
          (ld, 0, 0, 0)]  # seccomp_data.nr
  if arch.x32_bit:
    code += [(jge, 0, 1, arch.x32_bit), (ret, 0, 0, eperm)]
  code += [(jeq, 0, 1, arch.unshare), (ret, 0, 0, eperm),
           (jeq, 0, 1, arch.setns), (ret, 0, 0, eperm),
           (jeq, 0, 1, arch.clone3), (ret, 0, 0, enosys),
           (jeq, 0, 3, arch.clone),
           (ld, 0, 0, 16),  # the low half of args[0], clone's flags
           (jset, 0, 1, _CLONE_NEW_FLAGS), (ret, 0, 0, eperm),
           (ret, 0, 0, allow)]
  program = (_SockFilter * len(code))(*[_SockFilter(*c) for c in code])
  fprog = _SockFprog(len(code), program)
  _check(_libc.prctl(_PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(fprog),
                     ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(SET_SECCOMP)")


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


def _set_limits(cfg: dict) -> None:
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
  }
  for which, value in limits.items():
    resource.setrlimit(which, value)


def _drop_privileges(cfg: dict) -> None:
  _check(_prctl(_PR_SET_NO_NEW_PRIVS, 1), "prctl(NO_NEW_PRIVS)")
  mode = cfg["mode"]
  if mode == "plain-user":
    if os.uname().machine in _ARCHES:
      _install_seccomp()
    return
  with open("/proc/sys/kernel/cap_last_cap") as f:
    last_cap = int(f.read())
  for cap in range(last_cap + 1):
    if _prctl(_PR_CAPBSET_DROP, cap) != 0 and mode.startswith("ns"):
      _check(-1, f"prctl(CAPBSET_DROP, {cap})")
  _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
  uid = cfg["uid"]
  if uid is not None:  # real root: become a uid that owns nothing and runs nothing else
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid):
      raise OSError("could not switch to the sandbox uid")
  else:  # root of our own user namespace: keep the uid, lose every capability
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)), data), "capset")
  with open("/proc/self/status") as f:
    cap_eff = [line for line in f if line.startswith("CapEff:")][0].split()[1]
  if int(cap_eff, 16) != 0:
    raise OSError(f"capabilities remain after dropping them: {cap_eff}")
  if mode.startswith("ns") or os.uname().machine in _ARCHES:
    _install_seccomp()


def _install_guard() -> None:
  """Plain modes only: make sockets and signal sending raise (bypassable with ctypes)."""
  import _socket
  import signal
  import socket

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


class _Deadline(Exception):
  pass


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


def _run_as_guardian(timeout_s: float) -> None:
  """Plain modes: stay behind as a subreaper parent that ends the whole process tree.

  Without a pid namespace nothing else finds the processes that left the process group
  (setsid, double fork). Returns in the child, which goes on to run the program; the parent
  never returns and exits with the child's status.
  """
  import signal  # pylint: disable=import-outside-toplevel
  _check(_prctl(_PR_SET_CHILD_SUBREAPER, 1), "prctl(CHILD_SUBREAPER)")
  child = os.fork()
  if child == 0:
    return

  def on_alarm(signum, frame):
    raise _Deadline()

  signal.signal(signal.SIGALRM, on_alarm)
  signal.setitimer(signal.ITIMER_REAL, timeout_s)
  try:
    _, status = os.waitpid(child, 0)
  except _Deadline:
    status = None
  signal.setitimer(signal.ITIMER_REAL, 0)
  _kill_descendants()
  if status is None:
    os._exit(TIMEOUT_EXIT)
  if os.WIFSIGNALED(status):  # die the same way, so that the caller sees the signal
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
  os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else FAILED_EXIT)


def _print_traceback(error: BaseException, skip_frames: int) -> None:
  import traceback  # pylint: disable=import-outside-toplevel  (only failures pay for it)
  tb = error.__traceback__
  for _ in range(skip_frames):
    tb = tb.tb_next if tb is not None else None
  traceback.print_exception(type(error), error, tb)


# --- tests in their own process ------------------------------------------------------------------
# Role "solution" runs the solution and then serves calls from role "tests", which runs the tests
# with a stand-in for each function or class the solution defined. Plain data (None, bool, int,
# float, complex, str, bytes, and lists, tuples, sets, frozensets and dicts of them; exact types
# only, so no subclass with a rigged __eq__) crosses by value; any other object stays in the
# solution's process and the tests get a handle that forwards attribute access, calls and
# iteration, and refuses comparison and truth tests. The tests never run the solution's code, so
# the verdict (the tests' process ran to the end) cannot be forged from the solution's side.

_MAX_DEPTH = 64


class _ProtocolError(Exception):
  pass


class SolutionError(Exception):
  """The solution raised (or could not be loaded); raised in the tests' process."""


_TYPE_NAMES = ("bool", "int", "float", "complex", "str", "bytes", "list", "tuple", "set",
               "frozenset", "dict", "object", "type")


def _encode(value, ref, depth: int = 0):
  """Plain data as tagged JSON lists; anything else through `ref` (which may refuse). Subclasses
  of the plain types (Counter, OrderedDict, ...) become their plain base type: the receiver only
  ever sees exact types."""
  if depth > _MAX_DEPTH:
    raise ValueError("data nested too deeply")
  if value is None:
    return ["n"]
  if type(value) is bool:  # (bool cannot be subclassed)
    return ["b", value]
  if isinstance(value, int):
    return ["i", int.__repr__(value)]
  if isinstance(value, float):
    return ["f", float.__repr__(value)]
  if isinstance(value, complex):
    return ["c", float.__repr__(value.real), float.__repr__(value.imag)]
  if isinstance(value, str):
    return ["s", str.__str__(value)]
  if isinstance(value, bytes):
    return ["y", bytes.hex(value)]
  for base, tag in ((list, "l"), (tuple, "t"), (set, "S"), (frozenset, "F")):
    if isinstance(value, base):
      return [tag, [_encode(v, ref, depth + 1) for v in base.__iter__(value)]]
  if isinstance(value, dict):
    return ["d", [[_encode(k, ref, depth + 1), _encode(v, ref, depth + 1)]
                  for k, v in dict.items(value)]]
  if isinstance(value, type) and value.__name__ in _TYPE_NAMES and \
      getattr(builtins, value.__name__) is value:
    return ["T", value.__name__]
  return ["r", ref(value)]


def _decode(data, deref, depth: int = 0):
  if depth > _MAX_DEPTH or type(data) is not list or not data or type(data[0]) is not str:
    raise _ProtocolError("malformed value")
  tag, rest = data[0], data[1:]
  if tag == "n" and not rest:
    return None
  if tag == "b" and len(rest) == 1 and type(rest[0]) is bool:
    return rest[0]
  if tag == "i" and len(rest) == 1 and type(rest[0]) is str:
    return int(rest[0])
  if tag == "f" and len(rest) == 1 and type(rest[0]) is str:
    return float(rest[0])
  if tag == "c" and len(rest) == 2:
    return complex(float(rest[0]), float(rest[1]))
  if tag == "s" and len(rest) == 1 and type(rest[0]) is str:
    return rest[0]
  if tag == "y" and len(rest) == 1 and type(rest[0]) is str:
    return bytes.fromhex(rest[0])
  builders = {"l": list, "t": tuple, "S": set, "F": frozenset}
  if tag in builders and len(rest) == 1 and type(rest[0]) is list:
    return builders[tag](_decode(v, deref, depth + 1) for v in rest[0])
  if tag == "d" and len(rest) == 1 and type(rest[0]) is list:
    pairs = [(_decode(k, deref, depth + 1), _decode(v, deref, depth + 1)) for k, v in rest[0]]
    return dict(pairs)
  if tag == "T" and len(rest) == 1 and rest[0] in _TYPE_NAMES:
    return getattr(builtins, rest[0])
  if tag == "r" and len(rest) == 1 and type(rest[0]) is int:
    return deref(rest[0])
  raise _ProtocolError(f"malformed value (tag {tag!r})")


class _Channel:
  """Length-prefixed JSON messages over a pair of pipes."""

  def __init__(self, in_fd: int, out_fd: int, read, write):
    import json  # pylint: disable=import-outside-toplevel
    self._json, self._in, self._out, self._read, self._write = json, in_fd, out_fd, read, write

  def send(self, message) -> None:
    data = self._json.dumps(message).encode()
    data = len(data).to_bytes(4, "big") + data
    while data:
      data = data[self._write(self._out, data):]

  def _exactly(self, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
      chunk = self._read(self._in, min(n - len(data), 1 << 20))
      if not chunk:
        return None
      data += chunk
    return data

  def receive(self):
    """The next message, or None when the other side has closed its end."""
    header = self._exactly(4)
    if header is None:
      return None
    body = self._exactly(int.from_bytes(header, "big"))
    if body is None:
      return None
    return self._json.loads(body)


def _exports(namespace: dict) -> list:
  """What the solution defined for the tests to use: its top-level functions and classes, and
  the modules it imported (by module name; the tests' process imports them itself)."""
  callables = sorted(name for name, value in namespace.items()
                     if not name.startswith("__") and callable(value) and
                     not isinstance(value, type(sys)))
  modules = {name: value.__name__ for name, value in namespace.items()
             if not name.startswith("__") and isinstance(value, type(sys))}
  return [callables, modules]


def _usable_exports(hello: list, entry_point: str) -> tuple[list[str], dict[str, str]] | None:
  """The names the tests' namespace takes from the solution's `ready` message, or None when it
  is malformed. A builtin's name is taken only for the function under test (MBPP 126 tests its
  own `sum`): the solution cannot replace the `len` or `abs` the tests use."""
  if not (type(hello) is list and len(hello) == 3 and hello[0] == "ready"):
    return None
  callables, modules = hello[1], hello[2]
  if type(callables) is not list or type(modules) is not dict:
    return None
  ok = lambda name: (type(name) is str and name.isidentifier() and not name.startswith("__") and
                     (not hasattr(builtins, name) or name == entry_point))
  dotted = lambda module: type(module) is str and all(p.isidentifier() for p in module.split("."))
  return ([name for name in callables if ok(name)],
          {name: module for name, module in modules.items() if ok(name) and dotted(module)})


def _serve(channel: _Channel, namespace: dict) -> None:
  """Answers the tests' requests until they close the channel."""
  objects: list = []

  def ref(value) -> int:
    objects.append(value)
    return len(objects) - 1

  def deref(index: int):
    if not 0 <= index < len(objects):
      raise _ProtocolError("unknown handle")
    return objects[index]

  while (request := channel.receive()) is not None:
    try:
      op, args = request[0], request[1:]
      if op == "call":
        (kind, target), call_args, call_kwargs = args
        function = namespace[target] if kind == "g" else deref(target)
        result = function(*_decode(call_args, deref), **_decode(call_kwargs, deref))
      elif op == "getattr":
        result = getattr(deref(args[0]), args[1])
      elif op == "setattr":
        setattr(deref(args[0]), args[1], _decode(args[2], deref))
        result = None
      elif op == "iter":
        result = iter(deref(args[0]))
      elif op == "bool":
        result = bool(deref(args[0]))
      elif op == "next":
        try:
          result = next(deref(args[0]))
        except StopIteration:
          channel.send(["stop"])
          continue
      else:
        raise _ProtocolError(f"unknown request {op!r}")
      reply = ["ok", _encode(result, ref)]
    except BaseException as error:  # pylint: disable=broad-except  (the solution's, reported)
      reply = ["raise", type(error).__name__, str(error)[:500]]
    channel.send(reply)


def _client(channel: _Channel, names: list[str], modules: dict[str, str]) -> dict:
  """Stand-ins for the solution's callables, and its modules, to put in the tests' namespace."""

  def request(message):
    channel.send(message)
    reply = channel.receive()
    if reply is None:
      raise SolutionError("the solution's process ended while the tests were calling it")
    if type(reply) is not list or not reply:
      raise _ProtocolError("malformed reply")
    if reply[0] == "ok" and len(reply) == 2:
      return _decode(reply[1], Remote)
    if reply[0] == "raise" and len(reply) == 3:
      raise SolutionError(f"{reply[1]}: {reply[2]}")
    if reply[0] == "stop" and message[0] == "next":
      raise StopIteration
    raise _ProtocolError("malformed reply")

  def encode(value):
    def ref(obj):
      if isinstance(obj, Remote):
        return object.__getattribute__(obj, "_index")
      raise TypeError(f"the tests cannot pass a {type(obj).__name__} to the solution's process")
    return _encode(value, ref)

  def call(target, args, kwargs):
    return request(["call", target, encode(args), encode(kwargs)])

  def refuse(self, *args):
    raise TypeError(f"the solution returned an object that is not plain data ({self!r}); it "
                    "cannot be compared")

  class Remote:
    """An object of the solution's process."""
    __slots__ = ("_index",)

    def __init__(self, index: int):
      object.__setattr__(self, "_index", index)

    def __getattr__(self, name):
      return request(["getattr", object.__getattribute__(self, "_index"), name])

    def __setattr__(self, name, value):
      request(["setattr", object.__getattribute__(self, "_index"), name, encode(value)])

    def __call__(self, *args, **kwargs):
      return call(["r", object.__getattribute__(self, "_index")], args, kwargs)

    def __iter__(self):
      return request(["iter", object.__getattribute__(self, "_index")])

    def __next__(self):
      return request(["next", object.__getattribute__(self, "_index")])

    def __bool__(self):  # a re.Match says whether there was a match
      value = request(["bool", object.__getattribute__(self, "_index")])
      if type(value) is not bool:
        raise _ProtocolError("malformed reply")
      return value

    def __repr__(self):
      return f"<object #{object.__getattribute__(self, '_index')} of the solution>"

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __len__ = refuse
    __hash__ = object.__hash__

  class Function:
    """The solution's top-level function or class `name`."""

    def __init__(self, name: str):
      self.__name__ = self.__qualname__ = name

    def __call__(self, *args, **kwargs):
      return call(["g", self.__name__], args, kwargs)

    def __repr__(self):
      return f"<{self.__name__} of the solution>"

  import importlib  # pylint: disable=import-outside-toplevel
  namespace = {}
  for name, module in modules.items():
    try:
      namespace[name] = importlib.import_module(module)
    except Exception:  # pylint: disable=broad-except  (say, a module the solution made up)
      pass
  return namespace | {name: Function(name) for name in names}


_INT_KEYS = ("nonce_fd", "result_fd", "peer_in_fd", "peer_out_fd", "memory_bytes", "cpu_seconds",
             "max_processes", "max_file_bytes", "max_open_files", "scratch_bytes")


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
  if cfg["mode"].startswith("plain"):
    _run_as_guardian(cfg["timeout_s"])
  try:
    sys.path.extend(p for p in cfg["site_dirs"] if p not in sys.path)
    with open(cfg["program_path"], "rb") as f:
      source = f.read()
    if cfg["mode"].startswith("ns"):
      _set_up_mounts(cfg["uid"], cfg["scratch_bytes"])
      workdir = _WORKDIR
      program_path = os.path.join(workdir, "program.py")
      with open(program_path, "wb") as f:
        f.write(source)
    else:
      workdir = cfg["workdir"]
      program_path = cfg["program_path"]
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    if cfg["mode"].startswith("plain"):
      _install_guard()  # imports modules, so before the uid may lose access to them
    _set_limits(cfg)
    _drop_privileges(cfg)
  except BaseException as error:  # pylint: disable=broad-except
    _report_setup_failure(result_fd, error)
  try:
    code = compile(source, program_path, "exec", dont_inherit=True)
  except (SyntaxError, ValueError) as error:
    _print_traceback(error, skip_frames=1)
    if cfg["role"] == "solution":
      _Channel(cfg["peer_in_fd"], cfg["peer_out_fd"], read, write).send(
          ["failed", f"{type(error).__name__}: {error}"[:500]])
    exit_now(FAILED_EXIT)

  module = type(sys)("__main__")
  module.__file__ = program_path
  module.__builtins__ = builtins
  sys.modules["__main__"] = module
  sys.argv = [program_path]
  role = cfg["role"]
  if role != "program":
    channel = _Channel(cfg["peer_in_fd"], cfg["peer_out_fd"], read, write)
  if role == "tests":  # the solution says what it defines, or why it could not
    try:
      hello = channel.receive()
    except ValueError:
      hello = ["failed", "it wrote something else into the tests' channel"]
    exports = _usable_exports(hello, cfg["entry_point"])
    if exports is None:
      reason = (str(hello[1])[:500] if type(hello) is list and len(hello) == 2 else
                "the solution's process ended before it was ready")
      print(f"SolutionError: the solution failed before the tests ran: {reason}", file=sys.stderr)
      exit_now(FAILED_EXIT)
    module.__dict__.update(_client(channel, *exports))
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
    channel.send(["ready", *_exports(module.__dict__)])
    _serve(channel, module.__dict__)
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
