"""System calls the sandbox launcher makes through the C library, and their numbers per machine.

Imported by the launcher's modules as a top-level module (the launcher runs as a script and puts
this directory on `sys.path` while it imports them); standard library only.
"""

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


def check(result: int, what: str) -> None:
  if result != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, arg: int, arg2: int = 0) -> int:
  return libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg2), ctypes.c_ulong(0),
                     ctypes.c_ulong(0))


class Arch:
  """The audit architecture of a machine and the numbers of the system calls the sandbox names."""

  def __init__(self, audit: int, x32_bit: int = 0, **numbers: int):
    self.audit, self.x32_bit = audit, x32_bit
    self.__dict__.update(numbers)


# Calls numbered alike on every architecture (the new-style table, Linux >= 5.1).
_COMMON = dict(clone3=435, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
               mount_setattr=442, memfd_secret=447)
ARCHES = {
    "x86_64": Arch(0xC000003E, x32_bit=0x40000000, unshare=272, setns=308, clone=56,
                   pivot_root=155, socket=41, prctl=157, add_key=248, request_key=249, keyctl=250,
                   memfd_create=319, shmget=29, msgget=68, mq_open=240, **_COMMON),
    "aarch64": Arch(0xC00000B7, unshare=97, setns=268, clone=220, pivot_root=41, socket=198,
                    prctl=167, add_key=217, request_key=218, keyctl=219, memfd_create=279,
                    shmget=194, msgget=186, mq_open=180, **_COMMON),
}


def arch() -> Arch:
  machine = os.uname().machine
  if machine not in ARCHES:
    raise OSError(f"no system call table for {machine} (seccomp filter, pivot_root)")
  return ARCHES[machine]


def has_syscall_table() -> bool:
  return os.uname().machine in ARCHES
