"""Write gust agents in Python.

An agent is one function from a JSON input to a JSON output, marked with ``@gust.agent``::

    import gust

    @gust.agent
    def run(input, ctx):
        if not input or not input.get("question"):
            raise gust.InvalidInput("`question` is missing")     # HTTP 422
        ctx.info(f"answering {input['question']!r}")              # host log, tagged with the run id
        tone = ctx.config("TONE", "plain")                       # per-deployment configuration
        return {"answer": f"({tone}) you asked: {input['question']}"}

- The input is the request body parsed as JSON (an empty body is ``None``); a body that is not
  JSON is answered as ``invalid_input`` before your function runs.
- What the function returns is sent as JSON (``Content-Type: application/json``).
- ``raise gust.InvalidInput(message)`` answers HTTP 422, ``raise gust.Failed(message)`` HTTP 502.
  Any other exception becomes a ``failed`` error carrying its type, message and traceback.
- Every call runs on a fresh instance: module-level state does not carry from one call to the
  next.
- Streamed output: ``ctx.emit(chunk)`` sends a chunk (``str`` or ``bytes``) at once, and a
  function that returns a generator has each value it yields emitted::

      @gust.agent
      def run(input, ctx):
          return chat(input["question"])     # a generator: each token goes out as it comes

  Callers that stream the call get each chunk as it is emitted; the output (what a plain
  call answers, what a poll shows) is the chunks followed by what the function (or the
  generator) returns. Returning ``None`` after emitting answers the chunks alone, as
  ``text/plain; charset=utf-8``; returning a value answers the chunks then its JSON.
- Import everything at module level. componentize-py runs your module once at build time and
  snapshots the result; a running agent has no file system to import from.

The component is built with componentize-py against the agent world (``wit/``); ``gust build``
runs it for you.
"""

import gc
import inspect
import json
import sys
import traceback
from typing import Any, Callable, Generator, Optional, Union

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, invocation

from . import http

__all__ = ["agent", "Context", "InvalidInput", "Failed", "http"]

# What a function that emitted its output and returns nothing answers.
_TEXT = "text/plain; charset=utf-8"

# The host keeps the first 4 KiB of an error message; of a long traceback, the tail (where it
# failed) matters most, so the SDK shortens it before the host would cut it.
_MAX_ERROR_BYTES = 4000


class InvalidInput(Exception):
    """The caller's input is not acceptable: answered as HTTP 422 ``invalid_input``."""


class Failed(Exception):
    """The flow could not finish (a model or tool failed): answered as HTTP 502 ``failed``."""


_LEVELS = {
    "trace": host.Level.TRACE,
    "debug": host.Level.DEBUG,
    "info": host.Level.INFO,
    "warn": host.Level.WARN,
    "warning": host.Level.WARN,
    "error": host.Level.ERROR,
}


class Context:
    """What the host tells a run about itself, and the host functions it may call."""

    def __init__(self, request: invocation.Request):
        self._request = request
        self._emitted = False

    @property
    def agent(self) -> str:
        """The agent's name, as in the endpoint URL."""
        return self._request.agent

    @property
    def version(self) -> int:
        """The version number of the component that is running."""
        return self._request.version

    @property
    def run_id(self) -> str:
        """The run id, also in the caller's ``gust-run-id`` header and on every log line."""
        return self._request.run_id

    @property
    def mode(self) -> str:
        """``"sync"`` for an inline call, ``"async"`` for a queued run."""
        return "async" if self._request.mode == invocation.Mode.ASYNC else "sync"

    @property
    def attempt(self) -> int:
        """1 on the first attempt; higher when a queued run is executed again."""
        return self._request.attempt

    @property
    def content_type(self) -> str:
        """The caller's ``Content-Type``."""
        return self._request.content_type

    @property
    def deadline(self) -> Optional[float]:
        """When the host cuts this invocation off, in seconds since the Unix epoch (or None)."""
        ms = self._request.deadline_ms
        return None if ms is None else ms / 1000.0

    def config(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """A value of the deployment's ``config`` map, or ``default`` when it is not set."""
        value = host.config(key)
        return default if value is None else value

    def log(self, level: str, message: str) -> None:
        """Logs a line: ``level`` is trace, debug, info, warn or error."""
        lowered = level.lower()
        if lowered not in _LEVELS:
            raise ValueError(f"unknown log level {level!r}; use one of trace, debug, info, warn, error")
        host.log(_LEVELS[lowered], str(message))

    def debug(self, message: str) -> None:
        host.log(host.Level.DEBUG, str(message))

    def info(self, message: str) -> None:
        host.log(host.Level.INFO, str(message))

    def warn(self, message: str) -> None:
        host.log(host.Level.WARN, str(message))

    def error(self, message: str) -> None:
        host.log(host.Level.ERROR, str(message))

    def progress(self, fraction: float, message: str = "") -> None:
        """Reports how far a queued run has come (0.0 to 1.0); pollers see it."""
        host.progress(float(fraction), str(message))

    def emit(self, chunk: Union[str, bytes]) -> None:
        """Sends the next chunk of the output now (``str`` as UTF-8, or ``bytes``).

        Callers that stream the call, and followers of a queued run, get it at once; the
        output is every chunk followed by what the function returns. Past the deployment's
        output limit the run ends here (``output_too_large``). An empty chunk sends nothing.
        """
        if isinstance(chunk, str):
            data = chunk.encode()
        elif isinstance(chunk, (bytes, bytearray, memoryview)):
            data = bytes(chunk)
        else:
            raise TypeError(f"emit takes str or bytes, not {type(chunk).__name__}")
        if data:
            self._emitted = True
            host.emit(data)


def agent(fn: Callable[[Any, Context], Any]) -> Callable[[Any, Context], Any]:
    """Marks the function that handles each run: ``fn(input, ctx)`` returns the output.

    Use it once, in the module ``gust build`` names as the app (``app.py``): it defines the
    ``WitWorld`` class there, which is what componentize-py exports.
    """
    module = sys.modules[fn.__module__]
    if hasattr(module, "WitWorld"):
        raise RuntimeError(f"{fn.__module__} already has an agent; mark exactly one function with @gust.agent")

    class WitWorld(wit_world.WitWorld):
        def run(self, request: invocation.Request) -> invocation.Response:
            return _run(fn, request)

    module.WitWorld = WitWorld
    # This runs at build time, while componentize-py imports the app before it snapshots the
    # heap (so what the module defines below the decorated function is not frozen); every
    # call then starts on a copy-on-write mapping of that snapshot. A cyclic collection
    # during a call (in CPython 3.14.0, which componentize-py 0.25.1 bundles, one starts
    # after about 2,000 new tracked objects and also scans the old generation) writes to the GC
    # header of each object it visits, so the pages of the snapshot it walks become private
    # copies in that instance. Freezing moves everything imported so far out of the
    # collector's reach (as for `fork()`: the gc docs recommend freeze and no collection
    # first, which would leave holes that calls then fill). Measured on a call that builds
    # 20,000 dicts and then waits on a fetch (100 in flight, two runs each): private memory
    # per waiting call 7.8-8.3 MiB before, 5.9-6.4 MiB after; within 50 KiB on a call that
    # allocates little (the test probe's fetch, where no collection runs). Freezing at the
    # start of each call is worse: 3.14's freeze walks the young generation, dirtying it.
    gc.freeze()
    return fn


def _run(fn: Callable[[Any, Context], Any], request: invocation.Request) -> invocation.Response:
    raw = bytes(request.input)
    try:
        value = json.loads(raw) if raw.strip() else None
    except ValueError as e:
        raise Err(invocation.RunError_InvalidInput(f"the input is not valid JSON: {e}"))
    ctx = Context(request)
    try:
        result = fn(value, ctx)
        if inspect.isgenerator(result):
            result = _drain(result, ctx)
        if ctx._emitted and result is None:
            # A streamed answer is its chunks; a trailing `null` would only corrupt it.
            return invocation.Response(output=b"", content_type=_TEXT)
        output = json.dumps(result).encode()
    except InvalidInput as e:
        raise Err(invocation.RunError_InvalidInput(str(e)))
    except Failed as e:
        raise Err(invocation.RunError_Failed(str(e)))
    except BaseException as e:  # noqa: BLE001 - every escape becomes an answer, never a trap
        raise Err(invocation.RunError_Failed(_describe(e)))
    return invocation.Response(output=output, content_type="application/json")


def _drain(generator: Generator[Any, None, Any], ctx: Context) -> Any:
    """Emits every value ``generator`` yields; answers what it returns."""
    while True:
        try:
            chunk = next(generator)
        except StopIteration as stop:
            return stop.value
        ctx.emit(chunk)


def _describe(e: BaseException) -> str:
    """``Type: message`` on the first line, then the traceback (its tail when it is long)."""
    head = f"{type(e).__name__}: {e}"
    trace = "".join(traceback.format_exception(e))
    text = f"{head}\n\n{trace}"
    if len(text.encode()) <= _MAX_ERROR_BYTES:
        return text
    head = head.encode()[:1000].decode(errors="ignore")
    room = _MAX_ERROR_BYTES - len(head.encode()) - 8
    tail = trace.encode()[-room:].decode(errors="ignore")
    return f"{head}\n\n…{tail}"
