"""What a grading process keeps for all its sandbox runs, and the removal of what dead ones left.

See `Host`. Used by `dllm_jax.eval.sandbox`; `remove_stale_scratch` runs when a process starts its
first sandbox.
"""

import atexit
import fcntl
import os
import shutil
import tempfile
import threading

from dllm_jax.eval import sandbox_cgroup

# A grading process's scratch folder (holding each run's working directory) starts with this and
# the process's pid.
_SCRATCH_PREFIX = "dllm_sandboxes_"
_lock = threading.Lock()


class Host:
  """What this process keeps for all its runs.

  * a scratch folder `<tmp>/dllm_sandboxes_<pid>_<random>` holding each run's working directory,
    locked (flock) for as long as this process lives: a later process removes the folders whose
    lock nobody holds (`remove_stale_scratch`), those of callers killed before they could;
  * the lifeline, a pipe whose write end only this process holds: each launcher gets the read end
    and, having armed its parent-death signal, exits if the pipe says the grader is gone;
  * the runs' memory cgroups, where this process may make them (`sandbox_cgroup`).
  """

  def __init__(self):
    remove_stale_scratch()
    self.pid = os.getpid()
    self.scratch = tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{self.pid}_")
    os.chmod(self.scratch, 0o711)  # plain mode as root: the sandbox uid reaches its own folder
    self._lock_fd = os.open(self.scratch, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
    self.lifeline, self._lifeline_write = os.pipe()
    self.cgroups = None
    base = sandbox_cgroup.find_base()
    if base is not None:
      try:
        self.cgroups = sandbox_cgroup.RunCgroups(*base, os.path.basename(self.scratch))
      except OSError:
        pass
    atexit.register(self.close)

  def close(self) -> None:
    if os.getpid() != self.pid:  # a forked child: the folder is its parent's
      return
    if self.cgroups is not None:
      self.cgroups.close()
    shutil.rmtree(self.scratch, ignore_errors=True)


_host_state: Host | None = None


def host() -> Host:
  global _host_state
  with _lock:
    if _host_state is None or _host_state.pid != os.getpid():
      _host_state = Host()
    return _host_state


def _owner_alive(name: str) -> bool:
  """Whether the process named in a scratch folder's name still exists (pids may be reused:
  then it is wrongly thought alive, and its folder waits for a later start)."""
  try:
    os.kill(int(name[len(_SCRATCH_PREFIX):].split("_")[0]), 0)
  except ValueError:
    return True
  except ProcessLookupError:
    return False
  except OSError:
    return True
  return True


def remove_stale_scratch() -> list[str]:
  """Removes the scratch folders, and their memory cgroups, of sandbox callers that died without
  removing them (SIGKILL, a crash): the folders whose lock no live process holds. Runs once when
  a process starts its first sandbox; returns the folders removed."""
  tmp = tempfile.gettempdir()
  removed = []
  try:
    entries = [e for e in os.scandir(tmp) if e.name.startswith(_SCRATCH_PREFIX)]
  except OSError:
    entries = []
  for entry in entries:
    try:
      fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
      continue
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its owner lives
    except OSError:
      os.close(fd)
      continue
    try:
      shutil.rmtree(entry.path, ignore_errors=True)
      removed.append(entry.path)
    finally:
      os.close(fd)
  base = sandbox_cgroup.find_base()
  if base is not None:
    gone = {os.path.basename(path) for path in removed}
    stale = lambda name: name.startswith(_SCRATCH_PREFIX) and (
        name in gone or (not os.path.exists(os.path.join(tmp, name)) and not _owner_alive(name)))
    for parent in sandbox_cgroup.stale_parents(base[0], stale):
      sandbox_cgroup.remove_tree(parent)
  return removed

