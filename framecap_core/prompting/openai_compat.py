"""OpenAI-compatible backend: the LLM server the user already runs (Ollama, LM Studio, llama.cpp's server, vLLM).

One ``POST {base_url}/chat/completions`` per attempt, with the system instruction, the user turn (text, or text and
images as base64 ``data:`` URLs for a vision model) and the answer schema as
``response_format={"type": "json_schema", ...}`` — the same instruction, schema, validation, correction round,
timeouts and backoff as Gemini (all in :mod:`.llm`); this module only speaks the wire format, over the standard
library's ``urllib`` (no SDK).

A server that ignores ``response_format`` and answers prose or a fenced JSON block still works: the JSON is taken
out of the answer (:func:`~.templates.extract_json`) and validated like any other.

Nothing here runs unless asked: ``backend="openai"`` (``auto`` never picks it). An API key, for servers that want
one, comes only from ``OPENAI_API_KEY``; it is sent as ``Authorization: Bearer`` and never appears in a message or
log. Requests to a loopback address bypass any ``HTTP(S)_PROXY`` of the environment (a local server is local).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from ..errors import PromptBuildError
from .llm import (
    RETRYABLE_STATUS,
    Ask,
    ImageData,
    LLMOptions,
    Part,
    Retryable,
    call_with_retries,
    first_env,
    redact,
    sentence_case,
)

__all__ = [
    "API_KEY_ENV_VAR",
    "DEFAULT_BASE_URL",
    "DEFAULT_OPENAI_MODEL",
    "DEFAULT_OPENAI_VISION_MODEL",
    "OpenAIOptions",
    "openai_api_key_from_env",
]

API_KEY_ENV_VAR = "OPENAI_API_KEY"
DEFAULT_BASE_URL = "http://127.0.0.1:11434/v1"  # Ollama's OpenAI-compatible endpoint
DEFAULT_OPENAI_MODEL = "qwen2.5:7b"  # an Ollama tag; LM Studio / llama.cpp / vLLM name models their own way
DEFAULT_OPENAI_VISION_MODEL = "qwen2.5vl:7b"  # for dataset annotation (frames as images)
SCHEMA_NAME = "framecap_answer"
_MAX_ERROR_CHARS = 300


@dataclass
class OpenAIOptions(LLMOptions):
    """How to reach an OpenAI-compatible server (see :class:`~.llm.LLMOptions` for timeout, retries and backoff):
    ``base_url`` up to and including ``/v1`` (``None``: Ollama's :data:`DEFAULT_BASE_URL`), ``model`` as the server
    names it."""

    model: str = DEFAULT_OPENAI_MODEL

    def __post_init__(self) -> None:
        super().__post_init__()
        url = (self.base_url or DEFAULT_BASE_URL).strip().rstrip("/")
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise PromptBuildError(
                f"base_url must be the server's http(s) URL up to /v1, like {DEFAULT_BASE_URL!r} (Ollama), "
                f"'http://127.0.0.1:1234/v1' (LM Studio) or 'http://127.0.0.1:8080/v1' (llama.cpp); got "
                f"{self.base_url!r}."
            )
        self.base_url = url

    def label(self) -> str:
        return f"the model {self.model!r} at {self.base_url}"

    def api_key(self) -> str:
        return openai_api_key_from_env()

    def start(self, parts: Sequence[Part], *, system_instruction: str, schema: dict[str, Any], key: str) -> Ask:
        base = {
            "model": self.model,
            "stream": False,
            "response_format": {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema}},
        }
        if self.temperature is not None:
            base["temperature"] = self.temperature
        first = [{"role": "system", "content": system_instruction}, {"role": "user", "content": _content(parts)}]

        def ask(followups: list[tuple[str, str]]) -> str:
            messages = first + [
                {"role": "assistant" if role == "model" else "user", "content": text} for role, text in followups
            ]
            return _answer_text(_post(self, {**base, "messages": messages}, key), self)

        return ask


def openai_api_key_from_env(environ: Mapping[str, str] | None = None) -> str:
    """``OPENAI_API_KEY`` from the environment, or "" (local servers need no key)."""
    return first_env((API_KEY_ENV_VAR,), environ)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _content(parts: Sequence[Part]) -> str | list[dict[str, Any]]:
    """The user turn: plain text when there is no image (what every server accepts), else OpenAI content parts
    with the images as base64 ``data:`` URLs."""
    if all(isinstance(p, str) for p in parts):
        return "\n\n".join(parts)
    content: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, ImageData):
            url = f"data:{part.mime_type};base64,{b64encode(part.data).decode('ascii')}"
            content.append({"type": "image_url", "image_url": {"url": url}})
        elif isinstance(part, str):
            content.append({"type": "text", "text": part})
        else:
            raise PromptBuildError(f"A prompt part must be text or an image, got {type(part).__name__}.")
    return content


# -- one request, with retries ----------------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _opener(url: str) -> urllib.request.OpenerDirector:
    host = urllib.parse.urlsplit(url).hostname or ""
    return urllib.request.build_opener(urllib.request.ProxyHandler({})) if _is_loopback(host) else (
        urllib.request.build_opener()
    )


def _retry_after(headers: Any) -> float:
    """Seconds a ``Retry-After`` header (seconds or an HTTP date) asks to wait, or 0."""
    value = (headers.get("Retry-After") if headers is not None else None) or ""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return 0.0


def _error_message(body: bytes, key: str) -> str:
    """The server's own words from an error body: OpenAI's ``{"error": {"message"}}``, Ollama's ``{"error": "..."}``,
    vLLM's ``{"detail"|"message": ...}``, or the text itself; shortened and redacted."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        found = data.get("error", data.get("detail", data.get("message")))
        if isinstance(found, dict):
            found = found.get("message", found)
        if found is not None:
            text = found if isinstance(found, str) else json.dumps(found)
    text = " ".join(redact(text, key).split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def _cannot_reach(options: OpenAIOptions, why: str) -> PromptBuildError:
    return PromptBuildError(
        f"Cannot reach the LLM server at {options.base_url} ({why}). Start the server (Ollama: `ollama serve`; LM "
        f"Studio: its local server; llama.cpp: `llama-server`; vLLM: `vllm serve`) and check --base-url, or pick "
        f"another backend (gemini, offline)."
    )


def _post(options: OpenAIOptions, body: dict[str, Any], key: str) -> dict[str, Any]:
    """POST ``body`` to ``{base_url}/chat/completions`` with retries; the parsed JSON answer."""
    url = f"{options.base_url}/chat/completions"
    data = json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    opener = _opener(url)

    def send() -> dict[str, Any]:
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with opener.open(request, timeout=options.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            code = exc.code
            message = _error_message(exc.read() or b"", key)
            what = f"HTTP {code}" + (f": {message}" if message else "")
            if code in RETRYABLE_STATUS:
                raise Retryable(what, _retry_after(exc.headers)) from None
            if code in (401, 403):
                raise PromptBuildError(
                    f"The LLM server at {options.base_url} refused the request ({what}). If it needs an API key, "
                    f"set {API_KEY_ENV_VAR} in the environment (never a flag or a widget)."
                ) from None
            if code == 404:
                raise PromptBuildError(
                    f"The LLM server at {options.base_url} answered {what}. Either it has no model "
                    f"{options.model!r} (Ollama: `ollama pull {options.model}`; pick one the server lists with "
                    f"--model) or the base URL is wrong (it usually ends in /v1)."
                ) from None
            raise PromptBuildError(
                f"The LLM server at {options.base_url} rejected the request for model {options.model!r} ({what}). "
                f"If it does not support response_format json_schema, update it or pick another server or backend."
            ) from None
        except TimeoutError:
            raise Retryable(f"no answer within the {options.timeout:g} s timeout") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise Retryable(f"no answer within the {options.timeout:g} s timeout") from None
            if isinstance(reason, ConnectionRefusedError):
                raise _cannot_reach(options, "connection refused: nothing listens there") from None
            raise _cannot_reach(options, f"{type(reason).__name__}: {redact(str(reason), key)}") from None
        except (http.client.RemoteDisconnected, ConnectionResetError, http.client.IncompleteRead) as exc:
            # The server dropped the connection mid-answer (a crash, a restart, a model reload): try again.
            raise Retryable(f"the server closed the connection ({type(exc).__name__})") from None
        except ConnectionRefusedError:
            raise _cannot_reach(options, "connection refused: nothing listens there") from None
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise Retryable(f"an unreadable HTTP answer (not JSON: {getattr(exc, 'msg', exc)})") from None
        if not isinstance(answer, dict):
            raise Retryable("an unreadable HTTP answer (not a JSON object)")
        return answer

    return call_with_retries(send, options=options, sleep=options.sleep or _sleep)


def _answer_text(answer: dict[str, Any], options: OpenAIOptions) -> str:
    """The first choice's text, or a PromptBuildError for a refusal, a filtered or an empty answer."""
    who = sentence_case(options.label())
    choices = answer.get("choices") or []
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise PromptBuildError(
            f"{who} returned no answer (no choices). Check that the base URL is an "
            f"OpenAI-compatible /v1 endpoint, or use another backend."
        )
    choice = choices[0]
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    refusal = message.get("refusal")
    if refusal or finish == "content_filter":
        raise PromptBuildError(
            f"{who} refused to answer ({refusal or 'finish reason content_filter'}). Rephrase "
            f"the story or use the offline backend."
        )
    content = message.get("content")
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise PromptBuildError(
            f"{who} returned an empty answer (finish reason {finish or 'none'}). Try again, "
            f"pick another model, or use the offline backend."
        )
    return content

