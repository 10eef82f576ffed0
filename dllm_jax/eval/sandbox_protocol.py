"""Tests in their own process: the solution's side serves calls, the tests' side holds stand-ins.

Role "solution" runs the solution and then serves calls from role "tests", which runs the tests
with a stand-in for each function or class the solution defined. Plain data (None, bool, int,
float, complex, str, bytes, and lists, tuples, sets, frozensets and dicts of them; exact types
only, so no subclass with a rigged __eq__) crosses by value; any other object stays in the
solution's process and the tests get a handle that forwards attribute access, calls and
iteration, and refuses comparison and truth tests. The tests never run the solution's code, so
the verdict (the tests' process ran to the end) cannot be forged from the solution's side.

Imported by the launcher as a top-level module; standard library only.
"""

import builtins
import sys

_MAX_DEPTH = 64


class _ProtocolError(Exception):
  __module__ = "__main__"  # a traceback names it without this module's name


class SolutionError(Exception):
  """The solution raised (or could not be loaded); raised in the tests' process."""
  __module__ = "__main__"  # a traceback names it without this module's name


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


class Channel:
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


def exports(namespace: dict) -> list:
  """What the solution defined for the tests to use: its top-level functions and classes, and
  the modules it imported (by module name; the tests' process imports them itself)."""
  callables = sorted(name for name, value in namespace.items()
                     if not name.startswith("__") and callable(value) and
                     not isinstance(value, type(sys)))
  modules = {name: value.__name__ for name, value in namespace.items()
             if not name.startswith("__") and isinstance(value, type(sys))}
  return [callables, modules]


def usable_exports(hello: list, entry_point: str) -> tuple[list[str], dict[str, str]] | None:
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


def serve(channel: Channel, namespace: dict) -> None:
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


def client(channel: Channel, names: list[str], modules: dict[str, str]) -> dict:
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
