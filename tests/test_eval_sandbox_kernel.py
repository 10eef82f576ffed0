"""The sandbox against kernel surface beyond files and network: memory that RLIMIT_AS does not
count, keyrings, vsock, io_uring, kernel symbol files, and the parent-death signal.

Each hostile program passes only if it got what it tried (it asserts its own success), so a
passing run is an escape. All of them run in one batch per isolation mode.
"""

import ctypes
import os
import sys

import pytest

from dllm_jax.eval import sandbox
from dllm_jax.eval.sandbox import SandboxConfig, Status

from tests.test_eval_sandbox import _config_for

pytestmark = pytest.mark.slow

_MACHINE = os.uname().machine
# (x86_64, aarch64) system call numbers the hostile programs call directly.
_NR = {
    "add_key": {"x86_64": 248, "aarch64": 217},
    "keyctl": {"x86_64": 250, "aarch64": 219},
    "shmget": {"x86_64": 29, "aarch64": 194},
    "msgget": {"x86_64": 68, "aarch64": 186},
}
NR = {name: numbers.get(_MACHINE, numbers["x86_64"]) for name, numbers in _NR.items()}
LIMITS = dict(timeout_s=20, memory_mb=192, max_processes=16, max_file_mb=16, max_open_files=256)

_LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def _hostile_programs() -> dict[str, str]:
  return {
      "control": "print('fine')\n",
      # 40 memfds of 16 MiB (the file size limit) each: 640 MiB held under a 192 MiB limit,
      # none of it mapped, so none of it in the address space.
      "memfd_pages": ("import os\nfds = []\nfor _ in range(40):\n"
                      "  fd = os.memfd_create('hog')\n"
                      "  for i in range(16):\n    os.pwrite(fd, b'x' * (1 << 20), i << 20)\n"
                      "  fds.append(fd)\nprint(len(fds))\n"),
      # Four processes of 120 MiB each, together 480 MiB: each is under RLIMIT_AS.
      "several_processes": (
          "import os\nr, w = os.pipe()\npids = []\nfor _ in range(4):\n"
          "  pid = os.fork()\n  if pid == 0:\n    os.close(r)\n    hog = b'x' * (120 << 20)\n"
          "    os.write(w, b'1')\n    os.read(os.open('/dev/zero', os.O_RDONLY), 1)\n"
          "    import time\n    time.sleep(3)\n    os._exit(0)\n  pids.append(pid)\n"
          "os.close(w)\nheld = 0\nwhile held < 4 and os.read(r, 1):\n  held += 1\n"
          "statuses = [os.waitpid(pid, 0)[1] for pid in pids]\n"
          "assert held == 4 and statuses == [0] * 4, (held, statuses)\n"),
      # System V segments outlive every process that attached them (removed at once here).
      "sysv_shm": (_LIBC + f"shm = libc.syscall({NR['shmget']}, 0, 1 << 20, 0o1600)\n"
                   "assert shm >= 0, ctypes.get_errno()\n"
                   "libc.shmctl(shm, 0, None)\n"),
      "sysv_msg": (_LIBC + f"q = libc.syscall({NR['msgget']}, 0, 0o1600)\n"
                   "assert q >= 0, ctypes.get_errno()\nlibc.msgctl(q, 0, None)\n"),
      "posix_mqueue": (_LIBC + "libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, "
                       "ctypes.c_int, ctypes.c_void_p]\n"
                       "q = libc.mq_open(b'/hog', os.O_CREAT | os.O_RDWR, 0o600, None)\n"
                       "assert q >= 0, ctypes.get_errno()\nlibc.mq_unlink(b'/hog')\n"),
      # Keys: describe the inherited session keyring (-3), add a key to a process keyring (-2).
      "read_session_keyring": (_LIBC + "buf = ctypes.create_string_buffer(256)\n"
                               f"n = libc.syscall({NR['keyctl']}, 6, -3, buf, 256)\n"
                               "assert n > 0, ctypes.get_errno()\nprint(buf.value)\n"),
      "add_key": (_LIBC + f"k = libc.syscall({NR['add_key']}, b'user', b'h', b'secret', 6, -2)\n"
                  "assert k > 0, ctypes.get_errno()\n"),
      "vsock_socket": "import socket\nsocket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n",
      "io_uring_setup": (_LIBC + "params = (ctypes.c_uint8 * 120)()\n"
                         "fd = libc.syscall(425, 8, params)\nassert fd >= 0, ctypes.get_errno()\n"),
      "io_uring_register": (_LIBC + "r = libc.syscall(427, 0, 0, None, 0)\n"
                            "assert ctypes.get_errno() != 38, 'no such call'\n"),
      "read_kallsyms": "text = open('/proc/kallsyms').read(4096)\nassert text, 'empty'\n",
      "read_proc_modules": "text = open('/proc/modules').read(4096)\nassert text, 'empty'\n",
      # Clearing the parent-death signal would let a process outlive the grader.
      "clear_parent_death_signal": (_LIBC + "assert libc.prctl(1, 0, 0, 0, 0) == 0, "
                                    "ctypes.get_errno()\n"),
  }


@pytest.fixture(scope="module", params=["namespaces", "plain"])
def hostile(request):
  config = _config_for(request.param, **LIMITS)
  programs = _hostile_programs()
  results = sandbox.run_many(list(programs.values()), workers=4, config=config)
  return dict(zip(programs, results)), request.param


def test_control_passes(hostile):
  results, _ = hostile
  assert results["control"].passed, results["control"].stderr


@pytest.mark.parametrize("name", ["memfd_pages", "sysv_shm", "sysv_msg", "posix_mqueue"])
def test_memory_outside_the_address_space_is_refused(hostile, name):
  results, _ = hostile
  result = results[name]
  assert not result.passed and result.status is Status.FAILED, (name, result)


def test_several_processes_share_one_memory_limit(hostile):
  results, isolation = hostile
  if not sandbox.memory_cgroup_available():
    pytest.skip("no memory cgroup can be made here: the limit is per process "
                "(see the sandbox docstring)")
  result = results["several_processes"]
  assert not result.passed and result.status is Status.FAILED, result
  assert "memory" in result.message, result


@pytest.mark.parametrize("name", ["read_session_keyring", "add_key"])
def test_keyrings_are_out_of_reach(hostile, name):
  results, _ = hostile
  result = results[name]
  assert not result.passed and result.status is Status.FAILED, (name, result)


@pytest.mark.parametrize("name", ["vsock_socket", "io_uring_setup", "io_uring_register",
                                  "clear_parent_death_signal"])
def test_kernel_interfaces_are_refused(hostile, name):
  results, _ = hostile
  result = results[name]
  assert not result.passed and result.status is Status.FAILED, (name, result)


@pytest.mark.parametrize("name", ["read_kallsyms", "read_proc_modules"])
def test_kernel_information_files_are_hidden(hostile, name):
  results, isolation = hostile
  if isolation == "plain":
    pytest.skip("plain mode does not hide the file system (see the sandbox docstring)")
  result = results[name]
  assert not result.passed and result.status is Status.FAILED, (name, result)
