"""Errors a person can fix from the message alone, and the one line the command-line tools print
for them instead of a traceback.

They are `ValueError`s (bad flags, bad files: every library check raises one, `CheckpointError`
included) and `OSError`s (a path that is missing, not a directory, not writable; a full disk).
A `KeyboardInterrupt` or any other exception is a bug or an interruption and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from typing import Callable, TypeVar

USER_ERRORS = (ValueError, OSError)

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)

T = TypeVar("T")


def one_line(error: BaseException, flag: str | None = None) -> str:
  """The error as one line naming the file and the fix. `flag` names the flag of the path the
  tool writes, for the fix of a full disk."""
  elsewhere = f" or point {flag} at another disk" if flag else " or write elsewhere"
  if isinstance(error, OSError) and error.errno is not None:
    where = f" writing {error.filename}" if error.filename else ""
    if error.errno in _FULL:
      return (f"error: the disk is full{where} ({error.strerror}); free some space{elsewhere}, "
              "then run the same command again")
    if error.errno in _DENIED:
      return (f"error: cannot write {error.filename or 'a file'} ({error.strerror}); choose a "
              "path you may write to")
    if error.filename:
      return f"error: {error.filename}: {error.strerror}"
  text = str(error).strip() or type(error).__name__
  return "error: " + (text.splitlines()[0] if isinstance(error, OSError) else text)


def exit_on_user_error(function: Callable[[], T], flag: str | None = None) -> T:
  """`function()`, or exit with `one_line` of a user error it raised."""
  try:
    return function()
  except USER_ERRORS as error:
    sys.exit(one_line(error, flag))
