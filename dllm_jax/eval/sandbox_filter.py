"""The seccomp filter the sandbox launcher installs last, just before the untrusted program runs.

Refused (the call fails with the error given; everything else is allowed):

* new namespaces: `unshare` and `setns` (EPERM), `clone` with any CLONE_NEW* flag (EPERM), and
  `clone3` (ENOSYS: its flags sit in memory a filter cannot read, and the C library then falls
  back to `clone`). Without this a program could create a user namespace and hold a full
  capability set there.
* memory that RLIMIT_AS does not count: `memfd_create` and `memfd_secret` (anonymous files),
  System V shared memory and message queues (`shmget`, `msgget`: their objects outlive every
  process that made them) and POSIX message queues (`mq_open`), all EPERM.
* the kernel's key store: `add_key`, `request_key`, `keyctl` (EPERM).
* io_uring: `io_uring_setup`, `io_uring_enter`, `io_uring_register` (ENOSYS, as on a kernel
  built without it; its operations bypass this filter).
* `socket(AF_VSOCK, ...)` (EAFNOSUPPORT): vsock addresses the host and other virtual machines,
  outside the network namespace.
* `prctl(PR_SET_PDEATHSIG, ...)` (EPERM): the launcher arms a parent-death signal that ties the
  program's life to the grader's; the program may not clear it.
* every call of another ABI (x32, i386 on x86_64): EPERM.
"""

import ctypes

import sandbox_syscalls as sc

_EPERM, _ENOSYS, _EAFNOSUPPORT = 1, 38, 97
_AF_VSOCK = 40
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
CLONE_NEW_FLAGS = 0x7E020080

# BPF instructions and seccomp return values.
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_ARCH_OFFSET, _NR_OFFSET, _ARG0_OFFSET = 4, 0, 16  # in struct seccomp_data (low half of args[0])

_REFUSED = (("unshare", _EPERM), ("setns", _EPERM), ("clone3", _ENOSYS),
            ("memfd_create", _EPERM), ("memfd_secret", _EPERM), ("shmget", _EPERM),
            ("msgget", _EPERM), ("mq_open", _EPERM),
            ("add_key", _EPERM), ("request_key", _EPERM), ("keyctl", _EPERM),
            ("io_uring_setup", _ENOSYS), ("io_uring_enter", _ENOSYS),
            ("io_uring_register", _ENOSYS))


class _SockFilter(ctypes.Structure):
  _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
              ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
  _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _arg_rule(nr: int, test: int, value: int, errno: int) -> list[tuple[int, int, int, int]]:
  """Refuse `nr` with `errno` when the low half of its first argument passes `test` (JEQ: equals
  `value`, JSET: has a bit of `value`); allow it otherwise. Skipped for other calls."""
  return [(_JEQ, 0, 4, nr),
          (_LD, 0, 0, _ARG0_OFFSET),
          (test, 0, 1, value), (_RET, 0, 0, _ERRNO | errno),
          (_RET, 0, 0, _ALLOW)]


def filter_program() -> list[tuple[int, int, int, int]]:
  """The filter as (code, jt, jf, k) instructions for this machine."""
  arch = sc.arch()
  code = [(_LD, 0, 0, _ARCH_OFFSET),
          (_JEQ, 1, 0, arch.audit),
          (_RET, 0, 0, _ERRNO | _EPERM),
          (_LD, 0, 0, _NR_OFFSET)]
  if arch.x32_bit:
    code += [(_JGE, 0, 1, arch.x32_bit), (_RET, 0, 0, _ERRNO | _EPERM)]
  for name, errno in _REFUSED:
    code += [(_JEQ, 0, 1, getattr(arch, name)), (_RET, 0, 0, _ERRNO | errno)]
  code += _arg_rule(arch.clone, _JSET, CLONE_NEW_FLAGS, _EPERM)
  code += _arg_rule(arch.socket, _JEQ, _AF_VSOCK, _EAFNOSUPPORT)
  code += _arg_rule(arch.prctl, _JEQ, sc.PR_SET_PDEATHSIG, _EPERM)
  return code + [(_RET, 0, 0, _ALLOW)]


def install() -> None:
  """Installs the filter on the calling thread (and so on everything it starts afterwards).
  `no_new_privs` must be set first."""
  code = filter_program()
  program = (_SockFilter * len(code))(*[_SockFilter(*c) for c in code])
  fprog = _SockFprog(len(code), program)
  sc.check(sc.libc.prctl(sc.PR_SET_SECCOMP, ctypes.c_ulong(2),  # SECCOMP_MODE_FILTER
                         ctypes.byref(fprog), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           "prctl(SET_SECCOMP)")
