"""A local stand-in for an OpenAI-compatible chat-completions server (Ollama, LM Studio, llama.cpp, vLLM).

The scripted server of :mod:`fake_http` with OpenAI's answers and request view. Usage::

    from fake_openai import FakeOpenAI, reply_json, error   # tests/ is on sys.path under pytest

    with FakeOpenAI([error(429, retry_after=3), reply_json({"scenes": [...]})]) as server:
        options = OpenAIOptions(base_url=server.url, model="m", backoff=0)
        ...
        assert server.requests[0].path == "/v1/chat/completions"
        assert server.requests[0].messages()[0]["role"] == "system"

Steps: :func:`reply_text` / :func:`reply_json` (a ``chat.completion``), :func:`refusal`, :func:`no_choices`,
:func:`error` (OpenAI's error body, optionally ``Retry-After``), and from :mod:`fake_http` :func:`raw` and
:func:`delayed`; a callable ``f(request) -> step`` decides from the request (:func:`auto_annotation`).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from fake_gemini import annotation_answer
from fake_http import FakeServer, RecordedRequest, delayed, raw

__all__ = [
    "FakeOpenAI",
    "OpenAIRequest",
    "auto_annotation",
    "delayed",
    "error",
    "no_choices",
    "raw",
    "refusal",
    "reply_json",
    "reply_text",
]


def reply_text(text: str | None, *, finish_reason: str = "stop", model: str = "m", refusal: str | None = None):
    """A ``chat.completion`` whose single choice holds ``text``."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if refusal is not None:
        message["refusal"] = refusal
    return {
        "status": 200,
        "body": {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        },
    }


def reply_json(data: Any, **kwargs: Any) -> dict[str, Any]:
    """An answer whose text is ``json.dumps(data)`` (what structured output returns)."""
    return reply_text(json.dumps(data), **kwargs)


def refusal(text: str = "I can't help with that.") -> dict[str, Any]:
    """A structured-output refusal: ``message.refusal`` set, no content."""
    return reply_text(None, refusal=text)


def no_choices() -> dict[str, Any]:
    return {"status": 200, "body": {"id": "chatcmpl-fake", "object": "chat.completion", "choices": []}}


def error(code: int, message: str | None = None, *, retry_after: float | str | None = None) -> dict[str, Any]:
    """An HTTP error with OpenAI's JSON error body (what Ollama, LM Studio, llama.cpp and vLLM send)."""
    step: dict[str, Any] = {
        "status": code,
        "body": {"error": {"message": message or f"fake error {code}", "type": "fake_error", "code": code}},
    }
    if retry_after is not None:
        step["headers"] = {"Retry-After": retry_after if isinstance(retry_after, str) else f"{retry_after:g}"}
    return step


def auto_annotation(shared: int = 1, caption: str = "A test subject in a test room, medium shot, eye level") -> Any:
    """A step (use it as ``default``) that annotates however many images a request holds (see
    :func:`fake_gemini.annotation_answer`)."""

    def answer(request: OpenAIRequest) -> dict[str, Any]:
        return reply_json(annotation_answer(len(request.images()), shared, caption))

    return answer


class OpenAIRequest(RecordedRequest):
    """A recorded ``/chat/completions`` request with accessors for OpenAI's fields."""

    @property
    def model(self) -> str:
        return (self.body or {}).get("model", "")

    def messages(self) -> list[dict[str, Any]]:
        return (self.body or {}).get("messages", [])

    def roles(self) -> list[str]:
        return [m.get("role", "") for m in self.messages()]

    def texts(self) -> list[str]:
        """The text of every message in order (content parts' text joined by message)."""
        out = []
        for message in self.messages():
            content = message.get("content")
            if isinstance(content, list):
                out.extend(p["text"] for p in content if p.get("type") == "text")
            else:
                out.append(content)
        return out

    def images(self) -> list[tuple[str, bytes]]:
        """``(mime_type, data)`` of every ``data:`` URL image part, in order."""
        out = []
        for message in self.messages():
            content = message.get("content")
            for part in content if isinstance(content, list) else []:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    head, data = url.split(",", 1)
                    assert head.startswith("data:") and head.endswith(";base64"), head
                    out.append((head[5:-7], base64.b64decode(data, validate=True)))
        return out

    def schema(self) -> Any:
        return (self.body or {}).get("response_format", {}).get("json_schema", {}).get("schema")


class FakeOpenAI(FakeServer):
    """Scripted local OpenAI-compatible server; :attr:`url` is its ``/v1`` base URL."""

    request_type = OpenAIRequest
    name = "fake-openai"

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1"

    def exhausted(self, call: int) -> dict[str, Any]:
        return error(500, f"fake OpenAI server: no scripted answer left for call {call}")
