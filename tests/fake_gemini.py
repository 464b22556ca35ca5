"""A local stand-in for the Gemini REST API, for tests that run the real ``google-genai`` client.

It listens on 127.0.0.1 on a free port, records every request (path, headers, JSON body) and answers each call with
the next scripted *step*; when the script runs out it repeats ``default`` (or answers 500 if there is none, so a
test that calls more often than planned fails loudly instead of hanging).

Usage::

    from fake_gemini import FakeGemini, reply_json, error, refusal   # tests/ is on sys.path under pytest

    with FakeGemini([error(429), reply_json({"scenes": [...]})]) as server:
        options = GeminiOptions(base_url=server.base_url, backoff=0)   # point the client here
        ...
        assert server.requests[0].path == "/v1beta/models/gemini-2.5-pro:generateContent"
        assert server.requests[1].system_instruction().startswith("You turn")

Steps (plain dicts, built by the helpers below; ``delay`` works with any of them):

- :func:`reply_json` / :func:`reply_text` — a normal answer (``finishReason`` STOP unless given);
- :func:`error` — an HTTP error with Google's error body (429 RESOURCE_EXHAUSTED, 500 INTERNAL, 503 UNAVAILABLE,
  403 PERMISSION_DENIED ...), optionally a ``retryDelay``;
- :func:`refusal` — a candidate stopped for SAFETY (or another finish reason) with no text;
- :func:`blocked` — ``promptFeedback.blockReason`` and no candidates;
- :func:`empty` — no candidates at all;
- :func:`raw` — a body that is not JSON (a proxy's HTML page), with any status;
- :func:`delayed` — wait before answering (a client timeout shorter than the wait sees a timeout);
- a callable ``f(request) -> step`` — decide from the request; :func:`auto_annotation` is one that answers a
  valid frame annotation for however many images the request holds (handy as ``default`` in dataset tests).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "FakeGemini",
    "auto_annotation",
    "RecordedRequest",
    "blocked",
    "delayed",
    "empty",
    "error",
    "raw",
    "refusal",
    "reply_json",
    "reply_text",
]

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


# -- steps ------------------------------------------------------------------------------------------------------------


def reply_text(text: str, *, finish_reason: str = "STOP", model: str = "gemini-2.5-pro") -> dict[str, Any]:
    """A ``generateContent`` answer whose single candidate holds ``text``."""
    return {
        "status": 200,
        "body": {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": finish_reason, "index": 0}
            ],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 10, "totalTokenCount": 20},
            "modelVersion": model,
        },
    }


def reply_json(data: Any, **kwargs: Any) -> dict[str, Any]:
    """An answer whose text is ``json.dumps(data)`` (what structured output returns)."""
    return reply_text(json.dumps(data), **kwargs)


def error(code: int, message: str | None = None, *, status: str | None = None, retry_delay: float | None = None):
    """An HTTP error with Google's JSON error body."""
    body: dict[str, Any] = {
        "error": {
            "code": code,
            "message": message or f"fake error {code}",
            "status": status or _STATUS.get(code, "UNKNOWN"),
        }
    }
    if retry_delay is not None:
        body["error"]["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_delay:g}s"}
        ]
    return {"status": code, "body": body}


def refusal(finish_reason: str = "SAFETY") -> dict[str, Any]:
    """A candidate that stopped for ``finish_reason`` without text (a safety refusal by default)."""
    return {
        "status": 200,
        "body": {
            "candidates": [
                {
                    "content": {"role": "model", "parts": []},
                    "finishReason": finish_reason,
                    "index": 0,
                    "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}],
                }
            ]
        },
    }


def blocked(reason: str = "SAFETY") -> dict[str, Any]:
    """The prompt itself was blocked: ``promptFeedback.blockReason`` and no candidates."""
    return {"status": 200, "body": {"promptFeedback": {"blockReason": reason}}}


def empty() -> dict[str, Any]:
    """An answer with an empty candidate list."""
    return {"status": 200, "body": {"candidates": []}}


def raw(body: bytes | str, status: int = 200, content_type: str = "text/html") -> dict[str, Any]:
    """A non-JSON HTTP body (a proxy's HTML error page, a truncated answer)."""
    return {"status": status, "raw": body.encode() if isinstance(body, str) else body, "content_type": content_type}


def auto_annotation(shared: int = 1, caption: str = "A test subject in a test room, medium shot, eye level") -> Any:
    """A step (use it as ``default``) that annotates whatever frames a request holds: it counts the images and
    answers a valid annotation whose segments each share one caption over ``shared`` consecutive frames
    (``"<caption>, frames 0-1."``), plus a video caption naming the frame count."""

    def answer(request: RecordedRequest) -> dict[str, Any]:
        n = len(request.images())
        segments = [
            {
                "first_frame": i,
                "last_frame": min(n, i + shared) - 1,
                "caption": f"{caption}, frames {i}-{min(n, i + shared) - 1}.",
            }
            for i in range(0, n, shared)
        ]
        return reply_json({"segments": segments, "video_caption": f"{caption}, {n} frames."})

    return answer


def delayed(seconds: float, step: dict[str, Any] | None = None) -> dict[str, Any]:
    """``step`` (default: an empty JSON object answer) sent after ``seconds``."""
    step = dict(step or reply_json({}))
    step["delay"] = seconds
    return step


# -- recorded requests ------------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON (None if the body was empty or not JSON)
    raw: bytes = field(repr=False, default=b"")

    def _parts(self) -> list[dict[str, Any]]:
        contents = (self.body or {}).get("contents", [])
        return [part for content in contents for part in content.get("parts", [])]

    def texts(self) -> list[str]:
        """Text parts of all turns in order (user prompt, earlier answers, corrections)."""
        return [part["text"] for part in self._parts() if "text" in part]

    def roles(self) -> list[str]:
        return [content.get("role", "") for content in (self.body or {}).get("contents", [])]

    def images(self) -> list[tuple[str, bytes]]:
        """``(mime_type, data)`` of every inline image / blob part, in order."""
        out = []
        for part in self._parts():
            blob = part.get("inlineData") or part.get("inline_data")
            if blob:
                data = blob["data"]
                # google-genai sends URL-safe base64 without padding; accept both alphabets
                data = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
                out.append((blob.get("mimeType") or blob.get("mime_type"), data))
        return out

    def system_instruction(self) -> str:
        instruction = (self.body or {}).get("systemInstruction") or {}
        return "".join(part.get("text", "") for part in instruction.get("parts", []))

    def generation_config(self) -> dict[str, Any]:
        return (self.body or {}).get("generationConfig", {})

    def schema(self) -> Any:
        config = self.generation_config()
        return config.get("responseJsonSchema", config.get("responseSchema"))

    @property
    def model(self) -> str:
        """Model name from the path ``/v1beta/models/<model>:generateContent``."""
        tail = self.path.split("/models/", 1)[-1]
        return tail.split(":", 1)[0]


# -- server -----------------------------------------------------------------------------------------------------------


class FakeGemini:
    """Scripted local Gemini server (see the module docstring). Use as a context manager or call start/stop."""

    def __init__(self, steps: Iterable[Any] = (), *, default: Any = None) -> None:
        self._steps: list[Any] = list(steps)
        self.default = default
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ----------------------------------------------------------------------------------------------------

    def script(self, *steps: Any) -> FakeGemini:
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

    def start(self) -> FakeGemini:
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-gemini", daemon=True
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

    def __enter__(self) -> FakeGemini:
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
                step = error(500, f"fake Gemini: no scripted answer left for call {len(self.requests)}")
        if callable(step):
            step = step(request)
        return step


def _make_handler(fake: FakeGemini) -> type[BaseHTTPRequestHandler]:
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
            request = RecordedRequest(
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
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) before the answer

        do_POST = _handle
        do_GET = _handle

    return Handler
