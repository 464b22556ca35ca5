"""A scripted local HTTP server for tests of clients that talk to remote LLM services (Gemini, OpenAI-compatible).

It listens on 127.0.0.1 on a free port, records every request (path, headers, JSON body) and answers each call with
the next scripted *step*; when the script runs out it repeats ``default`` (or answers :meth:`FakeServer.exhausted`,
an HTTP 500, so a test that calls more often than planned fails loudly instead of hanging).

A step is a plain dict: ``{"status": 200, "body": {...}}`` (sent as JSON), or ``{"raw": bytes, "content_type": ...}``
(:func:`raw`), with optional ``"headers"`` (a dict) and ``"delay"`` (seconds to wait first, :func:`delayed`); or a
callable ``f(request) -> step`` that decides from the request. :mod:`fake_gemini` and :mod:`fake_openai` build the
steps and request views of each service on top of this.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeServer", "RecordedRequest", "delayed", "local_only", "raw"]


def local_only(monkeypatch) -> list[str]:
    """Make every host name lookup other than the local server's fail; return the list of hosts that were tried
    (a test asserts it stays empty: nothing leaves the machine)."""
    real = socket.getaddrinfo
    foreign: list[str] = []

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", b"127.0.0.1"):
            foreign.append(host)
            raise socket.gaierror(f"test: no network to {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return foreign


def raw(body: bytes | str, status: int = 200, content_type: str = "text/html") -> dict[str, Any]:
    """A non-JSON HTTP body (a proxy's HTML error page, a truncated answer)."""
    return {"status": status, "raw": body.encode() if isinstance(body, str) else body, "content_type": content_type}


def delayed(seconds: float, step: dict[str, Any]) -> dict[str, Any]:
    """``step`` sent after ``seconds`` (a client timeout shorter than the wait sees a timeout)."""
    step = dict(step)
    step["delay"] = seconds
    return step


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON (None if the body was empty or not JSON)
    raw: bytes = field(repr=False, default=b"")


class FakeServer:
    """Scripted local server (see the module docstring). Use as a context manager or call start/stop; subclasses
    set ``request_type`` (a :class:`RecordedRequest` with the service's accessors) and :meth:`exhausted`."""

    request_type: type[RecordedRequest] = RecordedRequest
    name = "fake-server"

    def __init__(self, steps: Iterable[Any] = (), *, default: Any = None) -> None:
        self._steps: list[Any] = list(steps)
        self.default = default
        self.requests: list[Any] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def exhausted(self, call: int) -> dict[str, Any]:
        """The answer when the script has run out and there is no default."""
        return {"status": 500, "body": {"error": f"{self.name}: no scripted answer left for call {call}"}}

    # -- control ----------------------------------------------------------------------------------------------------

    def script(self, *steps: Any):
        """Append steps to the script."""
        with self._lock:
            self._steps.extend(steps)
        return self

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def calls(self) -> int:
        return len(self.requests)

    def start(self):
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wake handlers sleeping in a delay
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------------------------

    def _next_step(self, request: RecordedRequest) -> dict[str, Any]:
        with self._lock:
            self.requests.append(request)
            if self._steps:
                step = self._steps.pop(0)
            elif self.default is not None:
                step = self.default
            else:
                step = self.exhausted(len(self.requests))
        if callable(step):
            step = step(request)
        return step


def _make_handler(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            request = fake.request_type(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                raw=raw,
            )
            step = fake._next_step(request)
            if step.get("delay"):
                if fake._stopping.wait(step["delay"]):
                    return
            payload = step["raw"] if "raw" in step else json.dumps(step.get("body", {})).encode("utf-8")
            try:
                self.send_response(int(step.get("status", 200)))
                self.send_header("Content-Type", step.get("content_type", "application/json; charset=UTF-8"))
                self.send_header("Content-Length", str(len(payload)))
                for name, value in step.get("headers", {}).items():
                    self.send_header(name, str(value))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) before the answer

        do_POST = _handle
        do_GET = _handle

    return Handler
