"""Outgoing HTTP for agents: calling models and tools.

Requests go through the host (``wasi:http/outgoing-handler``), which allows only the hosts in
the deployment's ``allowed_hosts``; anything else raises :class:`Denied`. Calls block until the
answer arrives or the host's per-request timeout cuts them off::

    from gust import http

    answer = http.post(
        "https://api.example.com/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "m", "messages": []},
    )
    answer.raise_for_status()
    completion = answer.json()

The deployment's ``outbound_timeout_s`` bounds each request whole, reading the answer
included. ``timeout=`` sets shorter bounds within it, as in ``requests``: a number bounds the
connect and each wait to read, ``(connect, read)`` bounds them apart. A read bound applies to
the answer's head and to every gap in its body, so a streamed answer that keeps coming is read
to its end, and one that stalls fails early.
"""

import json as _json
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import urlsplit

from componentize_py_types import Err, Ok
from wit_world.imports import outgoing_handler, types
from wit_world.imports.streams import StreamError_Closed

__all__ = ["HttpError", "Denied", "Response", "request", "get", "post", "put", "delete"]

Timeout = Union[float, Tuple[Optional[float], Optional[float]], None]

# Writes to a WASI output stream take at most 4096 bytes at a time.
_WRITE_CHUNK = 4096
_READ_CHUNK = 64 * 1024
_MAX_NANOS = 2**64 - 1
# The longest bound in seconds: what a u64 of nanoseconds holds.
_LONGEST_S = _MAX_NANOS / 1e9

_METHODS = {
    "GET": types.Method_Get,
    "HEAD": types.Method_Head,
    "POST": types.Method_Post,
    "PUT": types.Method_Put,
    "DELETE": types.Method_Delete,
    "PATCH": types.Method_Patch,
    "OPTIONS": types.Method_Options,
}


class HttpError(Exception):
    """A request that got no answer: invalid, refused, timed out or broken off."""


class Denied(HttpError):
    """The host refused the destination: it is not in the deployment's ``allowed_hosts``, or
    it is a private address."""


class Response:
    """An answer: ``status``, ``headers`` (names in lower case) and ``body`` (bytes)."""

    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        """The first value of a header, or None."""
        wanted = name.lower()
        return next((v for n, v in self.headers if n == wanted), None)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.body)

    def raise_for_status(self) -> "Response":
        """Raises :class:`HttpError` unless the status is 2xx; returns the response."""
        if not self.ok:
            raise HttpError(f"the answer was HTTP {self.status}: {self.text()[:200]}")
        return self


def get(url: str, **kwargs: Any) -> Response:
    return request("GET", url, **kwargs)


def post(url: str, **kwargs: Any) -> Response:
    return request("POST", url, **kwargs)


def put(url: str, **kwargs: Any) -> Response:
    return request("PUT", url, **kwargs)


def delete(url: str, **kwargs: Any) -> Response:
    return request("DELETE", url, **kwargs)


def request(
    method: str,
    url: str,
    *,
    headers: Optional[Dict[str, str]] = None,
    body: Union[bytes, str, None] = None,
    json: Any = None,
    timeout: Timeout = None,
) -> Response:
    """Sends a request and returns the whole answer.

    ``json`` serializes a value as the body and sets ``Content-Type: application/json``.
    ``timeout`` is seconds: a number for the connect and each read, or ``(connect, read)``.
    """
    entries = [(name.lower(), str(value).encode()) for name, value in (headers or {}).items()]
    if json is not None:
        body = _json.dumps(json).encode()
        if not any(name == "content-type" for name, _ in entries):
            entries.append(("content-type", b"application/json"))
    payload = body.encode() if isinstance(body, str) else (body or b"")

    scheme, authority, path = _split_url(url)
    options = _options(timeout)
    try:
        fields = types.Fields.from_list(entries)
    except Err as e:
        raise HttpError(f"a header is not allowed: {type(e.value).__name__}") from None
    outgoing = types.OutgoingRequest(fields)
    _set(outgoing.set_method, _METHODS.get(method.upper(), lambda: types.Method_Other(method.upper()))(), "method")
    _set(outgoing.set_scheme, scheme, "scheme")
    _set(outgoing.set_authority, authority, "host")
    _set(outgoing.set_path_with_query, path, "path")
    outgoing_body = outgoing.body()

    # Sent first, written after: the host streams the body as it is written.
    try:
        pending = outgoing_handler.handle(outgoing, options)
    except Err as e:
        raise _error(e.value, method, url) from None
    # When the body cannot be sent (the host refused the request, or the server answered
    # without reading it all), the answer or the reason is still in `pending`: wait for it.
    body_failed = False
    with outgoing_body.write() as stream:
        for at in range(0, len(payload), _WRITE_CHUNK):
            try:
                stream.blocking_write_and_flush(payload[at : at + _WRITE_CHUNK])
            except Err:
                body_failed = True
                break
    if body_failed:
        outgoing_body.__exit__(None, None, None)
    else:
        try:
            types.OutgoingBody.finish(outgoing_body, None)
        except Err:
            body_failed = True

    with pending:
        with pending.subscribe() as ready:
            ready.block()
        outcome = pending.get()
    if outcome is None or isinstance(outcome, Err):
        raise HttpError(f"{method} {url}: " + ("sending the body failed" if body_failed else "no answer"))
    if isinstance(outcome.value, Err):
        raise _error(outcome.value.value, method, url)
    with outcome.value.value as response:
        return _read(response, method, url)


def _read(response: types.IncomingResponse, method: str, url: str) -> Response:
    status = response.status()
    with response.headers() as fields:
        headers = [(name, value.decode("utf-8", errors="replace")) for name, value in fields.entries()]
    chunks = []
    with response.consume() as incoming:
        with incoming.stream() as stream:
            while True:
                try:
                    chunks.append(stream.blocking_read(_READ_CHUNK))
                except Err as e:
                    if isinstance(e.value, StreamError_Closed):
                        break
                    # The host's reason, e.g. a read timeout ("connection read timeout").
                    why = getattr(e.value, "value", None)
                    detail = f": {why.to_debug_string()}" if why is not None else ""
                    raise HttpError(f"{method} {url}: reading the answer failed{detail}") from None
    return Response(status, headers, b"".join(chunks))


def _options(timeout: Timeout) -> Optional[types.RequestOptions]:
    """The ``wasi:http`` request options for ``timeout``. The host counts the wait for the
    answer's head from the start of the request, so it is given the connect's bound plus the
    read's, as ``requests`` allows for both in turn."""
    if timeout is None:
        return None
    if isinstance(timeout, tuple):
        if len(timeout) != 2:
            raise ValueError(f"timeout must be a number or (connect, read), not {timeout!r}")
        connect, read = timeout
    else:
        connect = read = timeout
    for seconds in (connect, read):
        # As requests (urllib3) does: a bound of zero or less, or not a number, is a mistake.
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not seconds > 0
        ):
            raise ValueError(f"a timeout must be a number of seconds above 0 or None, not {seconds!r}")

    def nanos(seconds: Optional[float]) -> Optional[int]:
        # Nanoseconds in a u64, at least one: longer bounds (infinity, an int too large for a
        # float) are its largest.
        if seconds is None:
            return None
        if seconds >= _LONGEST_S:
            return _MAX_NANOS
        return max(1, round(seconds * 1e9))

    first_byte = None if read is None else min(connect or 0, _LONGEST_S) + min(read, _LONGEST_S)
    options = types.RequestOptions()
    _set(options.set_connect_timeout, nanos(connect), "connect timeout")
    _set(options.set_first_byte_timeout, nanos(first_byte), "read timeout")
    _set(options.set_between_bytes_timeout, nanos(read), "read timeout")
    return options


def _split_url(url: str) -> Tuple[Any, str, str]:
    parts = urlsplit(url)
    scheme = {"http": types.Scheme_Http(), "https": types.Scheme_Https()}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise HttpError(f"`{url}` is not an http or https URL")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, parts.netloc, path


def _set(setter: Any, value: Any, what: str) -> None:
    try:
        setter(value)
    except Err:
        raise HttpError(f"the {what} is not valid") from None


def _error(code: Any, method: str, url: str) -> HttpError:
    if isinstance(code, types.ErrorCode_HttpRequestDenied):
        return Denied(f"{method} {url}: denied (the destination is not in this deployment's allowed_hosts)")
    if isinstance(code, types.ErrorCode_DestinationIpProhibited):
        return Denied(f"{method} {url}: denied (the destination is a private address)")
    name = type(code).__name__.removeprefix("ErrorCode_")
    detail = getattr(code, "value", None)
    return HttpError(f"{method} {url}: {name}" + (f" ({detail})" if detail else ""))
