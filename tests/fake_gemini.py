"""A local stand-in for the Gemini REST API, for tests that run the real ``google-genai`` client.

The scripted server of :mod:`fake_http` with Gemini's answers and request view: it listens on 127.0.0.1 on a free
port, records every request (path, headers, JSON body) and answers each call with the next scripted *step*; when
the script runs out it repeats ``default`` (or answers 500 if there is none, so a test that calls more often than
planned fails loudly instead of hanging).

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
from typing import Any

from fake_http import FakeServer, raw
from fake_http import RecordedRequest as _Request
from fake_http import delayed as _delayed

__all__ = [
    "FakeGemini",
    "annotation_answer",
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


def annotation_answer(n: int, shared: int = 1, caption: str = "A test subject in a test room, medium shot, eye level"):
    """A valid annotation of ``n`` frames whose segments each share one caption over ``shared`` consecutive frames
    (``"<caption>, frames 0-1."``), plus a video caption naming the frame count."""
    spans = [(i, min(n, i + shared) - 1) for i in range(0, n, shared)]
    segments = [{"first_frame": a, "last_frame": b, "caption": f"{caption}, frames {a}-{b}."} for a, b in spans]
    return {"segments": segments, "video_caption": f"{caption}, {n} frames."}


def auto_annotation(shared: int = 1, caption: str = "A test subject in a test room, medium shot, eye level") -> Any:
    """A step (use it as ``default``) that annotates whatever frames a request holds: it counts the images and
    answers :func:`annotation_answer` for them."""

    def answer(request: RecordedRequest) -> dict[str, Any]:
        return reply_json(annotation_answer(len(request.images()), shared, caption))

    return answer


def delayed(seconds: float, step: dict[str, Any] | None = None) -> dict[str, Any]:
    """``step`` (default: an empty JSON object answer) sent after ``seconds``."""
    return _delayed(seconds, step or reply_json({}))


# -- recorded requests ------------------------------------------------------------------------------------------------


class RecordedRequest(_Request):
    """A recorded ``generateContent`` request with accessors for Gemini's fields."""
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


class FakeGemini(FakeServer):
    """Scripted local Gemini server (see the module docstring). Use as a context manager or call start/stop."""

    request_type = RecordedRequest
    name = "fake-gemini"

    def exhausted(self, call: int) -> dict[str, Any]:
        return error(500, f"fake Gemini: no scripted answer left for call {call}")
