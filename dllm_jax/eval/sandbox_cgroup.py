"""Memory cgroups for sandbox runs: one per run, bounding the memory of all its processes together.

RLIMIT_AS bounds one process's address space; it does not count memory a process holds without
mapping it (anonymous files, shared memory, tmpfs pages) nor the sum over several processes. A
memory cgroup counts all of it. The caller makes one per run under its own memory cgroup
(`<own cgroup>/dllm_sandbox_<pid>_<random>/run_<n>`, the first part named like the caller's
scratch folder), with the run's `memory_mb` as its limit and no swap; the launcher moves itself
into it before it runs anything else, so every process of the run is in it.

It works where the caller may make child cgroups of its own: as root, with cgroup v1's memory
controller, or with cgroup v2 when the caller's cgroup already delegates the memory controller
to its children (a cgroup v2 with processes of its own cannot, so on most v2 systems the caller
would first have to move itself into a leaf: not done here). Elsewhere `find_base` returns None,
and the limits are per process (see `dllm_jax.eval.sandbox`).
"""

import errno
import os
import secrets
import signal
import time


def _mounts() -> list[tuple[str, str, str, list[str]]]:
  """(root, mount point, file system type, super options) of each mount of this process."""
  found = []
  with open("/proc/self/mountinfo") as f:
    for line in f:
      fields = line.split()
      sep = fields.index("-")
      found.append((fields[3], fields[4], fields[sep + 1], fields[sep + 3].split(",")))
  return found


def _directory(cgroup_path: str, fstype: str, option: str | None) -> str | None:
  for root, mount_point, kind, options in _mounts():
    if kind != fstype or (option and option not in options):
      continue
    if cgroup_path == root or cgroup_path.startswith(root.rstrip("/") + "/"):
      return os.path.join(mount_point, cgroup_path[len(root.rstrip("/")):].lstrip("/"))
  return None


def _own_memory_cgroup() -> tuple[str, int] | None:
  """The directory of this process's memory cgroup, and the cgroup version."""
  with open("/proc/self/cgroup") as f:
    lines = [line.rstrip("\n").split(":", 2) for line in f]
  for hierarchy, controllers, path in lines:
    if "memory" in controllers.split(","):
      directory = _directory(path, "cgroup", "memory")
      if directory:
        return directory, 1
  for hierarchy, controllers, path in lines:
    if hierarchy == "0" and not controllers:
      directory = _directory(path, "cgroup2", None)
      if directory:
        with open(os.path.join(directory, "cgroup.subtree_control")) as f:
          if "memory" in f.read().split():
            return directory, 2
  return None


def _write(path: str, value: str) -> None:
  with open(path, "w") as f:
    f.write(value)


class RunCgroups:
  """The cgroups of this process's runs, under one parent named `name`."""

  def __init__(self, base: str, version: int, name: str):
    self.version = version
    self.parent = os.path.join(base, name)
    os.mkdir(self.parent, 0o755)
    if version == 2:
      _write(os.path.join(self.parent, "cgroup.subtree_control"), "+memory")
    self._count = 0

  def create(self, memory_bytes: int) -> str:
    self._count += 1
    path = os.path.join(self.parent, f"run_{self._count}_{secrets.token_hex(4)}")
    os.mkdir(path, 0o755)
    try:
      if self.version == 1:
        _write(os.path.join(path, "memory.limit_in_bytes"), str(memory_bytes))
        try:  # memory + swap, where swap is accounted
          _write(os.path.join(path, "memory.memsw.limit_in_bytes"), str(memory_bytes))
        except OSError:
          pass
      else:
        _write(os.path.join(path, "memory.max"), str(memory_bytes))
        try:
          _write(os.path.join(path, "memory.swap.max"), "0")
        except OSError:
          pass
    except BaseException:
      remove(path)
      raise
    return path

  def oom_kills(self, path: str) -> int:
    """How many processes of the run the kernel killed for going over the limit."""
    name = "memory.oom_control" if self.version == 1 else "memory.events"
    try:
      with open(os.path.join(path, name)) as f:
        for line in f:
          key, _, value = line.partition(" ")
          if key == "oom_kill":
            return int(value)
    except OSError:
      pass
    return 0

  def close(self) -> None:
    remove_tree(self.parent)


def remove(path: str, timeout_s: float = 2.0) -> bool:
  """Removes an empty cgroup, killing what is still in it; False if it stayed (busy)."""
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      os.rmdir(path)
      return True
    except FileNotFoundError:
      return True
    except OSError as error:
      if error.errno != errno.EBUSY or time.monotonic() > deadline:
        return False
    try:
      with open(os.path.join(path, "cgroup.procs")) as f:
        pids = [int(pid) for pid in f.read().split()]
    except OSError:
      pids = []
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        pass
    time.sleep(0.01)


def remove_tree(path: str) -> None:
  if not os.path.isdir(path):
    return
  for entry in os.listdir(path):
    child = os.path.join(path, entry)
    if entry.startswith("run_") and os.path.isdir(child):
      remove(child)
  remove(path)


def find_base() -> tuple[str, int] | None:
  """Where this process can make memory cgroups for its runs (directory, version), or None."""
  if os.geteuid() != 0:
    return None
  try:
    found = _own_memory_cgroup()
    if found is None:
      return None
    directory, version = found
    probe = os.path.join(directory, f"dllm_probe_{os.getpid()}_{secrets.token_hex(4)}")
    os.mkdir(probe, 0o755)
    try:
      limit = "memory.limit_in_bytes" if version == 1 else "memory.max"
      _write(os.path.join(probe, limit), str(64 << 20))
    finally:
      os.rmdir(probe)
    return found
  except OSError:
    return None


def stale_parents(base: str, is_stale) -> list[str]:
  """The run parents under `base` whose owner `is_stale(name)` says is gone."""
  try:
    names = os.listdir(base)
  except OSError:
    return []
  return [os.path.join(base, name) for name in names if is_stale(name)]
