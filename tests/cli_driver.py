"""Runs the main() of absl tools on many command lines in one process, for tests of their error
messages (one process instead of one per case: JAX is imported once).

  python -m tests.cli_driver CASES.json

CASES.json is a list of {"module", "argv", optional "patch", optional "write": {path: text}}.
For each case it writes the files, applies the patch, parses the flags, calls the module's
main(), and prints one JSON line: the exit code or message (`exit`), everything written to
stdout and stderr (`stdout`, `stderr`), and the traceback of any other exception that escaped
(`traceback`).
"""

import builtins
import errno
import importlib
import json
import os
import sys
import tempfile
import traceback

from absl import flags


class _FullDiskFile:
  """A file whose writes fail as on a full disk."""

  def __init__(self, f):
    self._f = f

  def write(self, _):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  def __getattr__(self, name):
    return getattr(self._f, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()


def _full_disk_results():
  """The results file's writes fail (after the run's config.json, versions.json and lock)."""
  from dllm_jax.eval import runner  # pylint: disable=import-outside-toplevel

  def full_open(path, mode="r", *args, **kwargs):
    f = builtins.open(path, mode, *args, **kwargs)
    return _FullDiskFile(f) if os.path.basename(path).startswith("results") and "a" in mode else f

  runner.open = full_open
  return lambda: delattr(runner, "open")


def _full_disk_orbax():
  from dllm_jax import checkpoint  # pylint: disable=import-outside-toplevel
  real = checkpoint.ocp.partial.save

  def full(path, *_args, **_kwargs):  # what Orbax raises (seen on a full tmpfs)
    raise ValueError(f'RESOURCE_EXHAUSTED: Failed writing: "{path}/state/d/0": Failed to write '
                     "416219 bytes to file 7: No space left on device [os_error_code='28']")

  checkpoint.ocp.partial.save = full
  return lambda: setattr(checkpoint.ocp.partial, "save", real)


PATCHES = {"full_disk_results": _full_disk_results, "full_disk_orbax": _full_disk_orbax}


def _run_case(case):
  for path, text in case.get("write", {}).items():
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
  module = importlib.import_module(case["module"])
  undo = PATCHES[case["patch"]]() if case.get("patch") else None
  result = {}
  saved = os.dup(1), os.dup(2)
  with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
    sys.stdout.flush()
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    try:
      flags.FLAGS.unparse_flags()
      flags.FLAGS([case["module"], *case["argv"]])
      module.main([case["module"]])
      result["exit"] = 0
    except SystemExit as e:
      result["exit"] = e.code
    except BaseException:  # pylint: disable=broad-except
      result["traceback"] = traceback.format_exc()
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
        os.close(copy)
      if undo:
        undo()
    out.seek(0)
    err.seek(0)
    result["stdout"], result["stderr"] = out.read(), err.read()
  return result


def _forget_flags(module_name):
  """Removes a tool's flags, so that the next tool can define its own of the same names."""
  for flag in list(flags.FLAGS.flags_by_module_dict().get(module_name, [])):
    for name in {flag.name, flag.short_name} - {None}:
      if name in flags.FLAGS:
        delattr(flags.FLAGS, name)


def main():
  with open(sys.argv[1], encoding="utf-8") as f:
    cases = json.load(f)
  current = None
  for case in cases:
    if current not in (None, case["module"]):
      _forget_flags(current)
      sys.modules.pop(current, None)
    current = case["module"]
    print(json.dumps(_run_case(case)), flush=True)


if __name__ == "__main__":
  main()
