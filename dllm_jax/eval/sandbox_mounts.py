"""The sandbox's file system: a new root that holds only what the interpreter needs.

Run by the launcher in a fresh mount namespace, before it gives up its privileges. The new root is
a small tmpfs holding read-only, nosuid bind mounts of the system library directories, the
interpreter's own directories, a few devices and the pid namespace's /proc, plus the size-limited
scratch tmpfs at /tmp (also at /var/tmp and /dev/shm); the launcher pivots into it and detaches
the old root. Files of /proc that describe the kernel rather than the sandbox's processes
(`MASKED_PROC_FILES`: kernel symbols and modules, keys, timers, memory maps of the machine) are
covered with /dev/null. Everything disappears with the mount namespace.
"""

import ctypes
import os
import sys

import sandbox_syscalls as sc

_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MNT_DETACH = 2

SCRATCH = "/tmp"
WORKDIR = "/tmp/work"
# The scratch tmpfs is also seen at these (world-writable in a usual root).
_WRITABLE_SHARED = ("/var/tmp", "/dev/shm")
# Where the new root is assembled (any existing directory of the old root).
_NEW_ROOT = "/tmp"
# What the new root holds besides the interpreter's directories: system libraries and programs
# (symbolic links such as /lib -> usr/lib are recreated), the dynamic linker's cache, and devices.
_SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
_SYSTEM_FILES = ("/etc/ld.so.cache",)
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# Files of /proc about the kernel and the machine, not the sandbox's own processes.
MASKED_PROC_FILES = ("kallsyms", "kcore", "modules", "keys", "key-users", "timer_list",
                     "sched_debug", "iomem", "ioports", "vmallocinfo", "slabinfo", "latency_stats",
                     "config.gz", "kpagecount", "kpageflags", "kpagecgroup", "sysrq-trigger")


class _MountAttr(ctypes.Structure):
  _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
              ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
  enc = lambda s: None if s is None else s.encode()
  sc.check(sc.libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {source} on {target}")


def _mount_setattr(path: str, attr_set: int, attr_clr: int, recursive: bool) -> None:
  attr = _MountAttr(attr_set, attr_clr, 0, 0)
  flags = _AT_RECURSIVE if recursive else 0
  result = sc.libc.syscall(ctypes.c_long(sc.arch().mount_setattr), ctypes.c_int(_AT_FDCWD),
                           path.encode(), ctypes.c_uint(flags), ctypes.byref(attr),
                           ctypes.c_size_t(ctypes.sizeof(attr)))
  sc.check(result, f"mount_setattr {path}")


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


def set_up_mounts(run_as_uid: int | None, scratch_bytes: int) -> None:
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
  for path in (SCRATCH, *_WRITABLE_SHARED):
    os.makedirs(root + path, mode=0o755, exist_ok=True)
  _mount("tmpfs", root + SCRATCH, "tmpfs", _MS_NOSUID | _MS_NODEV,
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
  null = os.open(root + "/dev/null", os.O_PATH)
  for name in MASKED_PROC_FILES:  # (directories such as /proc/sys stay: read-only below)
    if os.path.isfile(f"{root}/proc/{name}"):
      _mount(f"/proc/self/fd/{null}", f"{root}/proc/{name}", None, _MS_BIND)
  os.close(null)
  for fd in [*sources.values(), *devices.values(), proc]:
    os.close(fd)
  for path in _WRITABLE_SHARED:
    _mount(root + SCRATCH, root + path, None, _MS_BIND)

  os.chdir(root)  # pivot_root(".", ".") stacks the old root under the new one; then detach it
  sc.check(sc.libc.syscall(ctypes.c_long(sc.arch().pivot_root), b".", b"."), "pivot_root")
  sc.check(sc.libc.umount2(b".", ctypes.c_int(_MNT_DETACH)), "umount old root")
  os.chdir("/")
  _mount_setattr("/", _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, recursive=True)
  for path in (SCRATCH, *_WRITABLE_SHARED):
    _mount_setattr(path, 0, _MOUNT_ATTR_RDONLY, recursive=False)
  os.mkdir(WORKDIR, 0o700)
  if run_as_uid is not None:
    os.chown(WORKDIR, run_as_uid, run_as_uid)
