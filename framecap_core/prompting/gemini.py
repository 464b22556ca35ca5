"""Gemini backend, through ``google-genai``: structured output (a JSON schema and a system instruction) for the
story and annotation tasks of :mod:`.llm`.

This module only speaks Gemini's wire format: it builds the client and the contents, and sorts the SDK's failures
into retryable ones (429, 408/5xx, timeouts, unreadable bodies — :class:`~.llm.Retryable`) and final ones (bad key,
unknown model, refusal, no network). Retries, backoff, the one correction round and the tasks live in :mod:`.llm`.

The API key comes only from the environment (:data:`API_KEY_ENV_VARS`) and never appears in a message or log.
``google.genai`` is imported on first use, so importing :mod:`framecap_core.prompting` stays cheap.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import PromptBuildError
from ..timeline import Timeline
from .llm import (
    RETRYABLE_STATUS,
    Ask,
    FrameAnnotation,
    ImageData,
    LLMOptions,
    Part,
    Retryable,
    call_with_retries,
    first_env,
    redact,
    story_timeline,
)
from .llm import annotate_frames as _annotate_frames
from .llm import generate_json as _generate_json
from .offline import DEFAULT_MAX_CAPTION_TOKENS
from .templates import parse_story_answer

__all__ = [
    "API_KEY_ENV_VARS",
    "DEFAULT_MODEL",
    "FrameAnnotation",
    "GeminiOptions",
    "annotate_frames",
    "api_key_from_env",
    "gemini_timeline",
    "generate_json",
    "parse_story_answer",
]

API_KEY_ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
DEFAULT_MODEL = "gemini-2.5-pro"
# Finish reasons that mean "will not answer this", not "answered badly".
_REFUSALS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE", "OTHER"}
)

T = TypeVar("T")


@dataclass
class GeminiOptions(LLMOptions):
    """How to reach Gemini (see :class:`~.llm.LLMOptions` for timeout, retries and backoff); ``base_url`` is another
    endpoint (a proxy, a test server)."""

    model: str = DEFAULT_MODEL
    api_version: str | None = "v1beta"  # structured output (responseJsonSchema) lives in v1beta

    def label(self) -> str:
        return "Gemini"

    def api_key(self) -> str:
        return api_key_from_env()

    def start(self, parts: Sequence[Part], *, system_instruction: str, schema: dict[str, Any], key: str) -> Ask:
        from google.genai import types

        client = _client(key, self)
        config = types.GenerateContentConfig(
            system_instruction=system_instruction,
            response_mime_type="application/json",
            response_json_schema=schema,
            temperature=self.temperature,
        )
        user = types.Content(role="user", parts=[_part(p) for p in parts])

        def ask(followups: list[tuple[str, str]]) -> str:
            contents = [user] + [types.Content(role=role, parts=[types.Part(text=text)]) for role, text in followups]
            return _answer_text(_call(client, contents, config, self, key))

        return ask


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The first non-empty of ``GEMINI_API_KEY`` and ``GOOGLE_API_KEY``; raise a :class:`PromptBuildError` if none."""
    key = first_env(API_KEY_ENV_VARS, environ)
    if key:
        return key
    raise PromptBuildError(
        "No Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment (keys are never read from "
        'settings or files), or use the offline backend (backend="offline", `framecap prompt --backend offline`), '
        "which needs no key or network."
    )


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _part(part: Any) -> Any:
    """A ``types.Part`` for a prompt part: text, an :class:`~.llm.ImageData`, or a ``types.Part`` already."""
    from google.genai import types

    if isinstance(part, str):
        return types.Part(text=part)
    if isinstance(part, ImageData):
        return types.Part.from_bytes(data=part.data, mime_type=part.mime_type)
    return part


# -- one request, with retries --------------------------------------------------------------------------------------


def _retry_delay(exc: Any) -> float:
    """Seconds a 429 answer asks to wait (``RetryInfo.retryDelay`` like ``"7s"``), or 0."""
    details = getattr(exc, "details", None)
    found = re.search(r'"retryDelay"\s*:\s*"([\d.]+)s"', json.dumps(details, default=str)) if details else None
    return float(found.group(1)) if found else 0.0


def _client(key: str, options: GeminiOptions) -> Any:
    from google import genai
    from google.genai import types

    http_options = types.HttpOptions(
        base_url=options.base_url,
        api_version=options.api_version,
        # The SDK takes milliseconds; it applies them to connect and read.
        timeout=max(1, int(math.ceil(options.timeout * 1000))),
    )
    return genai.Client(api_key=key, http_options=http_options)


def _where(options: GeminiOptions) -> str:
    return options.base_url or "https://generativelanguage.googleapis.com"


def _http_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """Timeout and transport exception classes of the HTTP libraries the SDK may use (httpx2 and/or httpx)."""
    timeouts: list[type[BaseException]] = []
    transport: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transport.append(module.TransportError)
    return tuple(timeouts), tuple(transport)


def _call(client: Any, contents: list[Any], config: Any, options: GeminiOptions, key: str) -> Any:
    """``generate_content`` with retries on 429 / 5xx / timeouts; other failures become a PromptBuildError."""
    from google.genai import errors as genai_errors

    timeouts, transport = _http_errors()

    def send() -> Any:
        try:
            return client.models.generate_content(model=options.model, contents=contents, config=config)
        except genai_errors.APIError as exc:
            message = redact(str(getattr(exc, "message", "") or exc), key)
            code = int(getattr(exc, "code", 0) or 0)
            status = getattr(exc, "status", None) or ""
            if code in (401, 403) or "API_KEY" in message.upper() or "API key" in message:
                raise PromptBuildError(
                    f"Gemini rejected the API key (HTTP {code} {status}: {message}). Check GEMINI_API_KEY / "
                    f"GOOGLE_API_KEY, or use the offline backend."
                ) from None
            if code == 404:
                raise PromptBuildError(
                    f"Gemini does not know the model {options.model!r} (HTTP 404: {message}). Use a model name such "
                    f"as {DEFAULT_MODEL!r}."
                ) from None
            if code not in RETRYABLE_STATUS:
                raise PromptBuildError(f"Gemini rejected the request (HTTP {code} {status}: {message}).") from None
            reason = f"HTTP {code} {status}".strip() + (f": {message}" if message else "")
            raise Retryable(reason, _retry_delay(exc)) from None
        except json.JSONDecodeError as exc:
            # A 200 whose body is not JSON: a proxy page or a cut-off answer; worth another try.
            raise Retryable(f"an unreadable HTTP answer (not JSON: {exc.msg})") from None
        except timeouts:
            raise Retryable(f"no answer within the {options.timeout:g} s timeout") from None
        except (*transport, OSError) as exc:
            # Connection refused, DNS failure, no route: retrying will not help, say so at once.
            raise PromptBuildError(
                f"Cannot reach Gemini at {_where(options)} ({type(exc).__name__}: {redact(str(exc), key)}). Check "
                f"the network connection (and a proxy), or use the offline backend, which needs no network."
            ) from None

    return call_with_retries(send, options=options, sleep=options.sleep or _sleep)


def _answer_text(response: Any) -> str:
    """The answer's text, or a PromptBuildError for a blocked prompt, a refusal or an empty answer."""
    feedback = getattr(response, "prompt_feedback", None)
    reason = getattr(feedback, "block_reason", None) if feedback is not None else None
    if reason:
        name = getattr(reason, "value", str(reason))
        raise PromptBuildError(
            f"Gemini blocked the request (block reason {name}). Rephrase the story or use the offline backend."
        )
    candidates = getattr(response, "candidates", None) or []
    if not candidates:
        raise PromptBuildError("Gemini returned no answer (no candidates). Try again or use the offline backend.")
    candidate = candidates[0]
    finish = getattr(candidate, "finish_reason", None)
    finish = getattr(finish, "value", finish)
    parts = getattr(getattr(candidate, "content", None), "parts", None) or []
    text = "".join(p.text for p in parts if getattr(p, "text", None) and not getattr(p, "thought", False))
    if finish in _REFUSALS:
        raise PromptBuildError(
            f"Gemini refused to answer (finish reason {finish}). Rephrase the story or use the offline backend."
        )
    if not text.strip():
        raise PromptBuildError(
            f"Gemini returned an empty answer (finish reason {finish or 'none'}). Try again or use the offline backend."
        )
    return text


# -- the tasks, through Gemini ----------------------------------------------------------------------------------------


def generate_json(parts, *, system_instruction, schema, validate, options: GeminiOptions | None = None,
                  api_key: str | None = None):
    """:func:`.llm.generate_json` with Gemini (``parts``: strings, :class:`~.llm.ImageData` or
    ``google.genai.types.Part``)."""
    return _generate_json(parts, system_instruction=system_instruction, schema=schema, validate=validate,
                          options=options or GeminiOptions(), api_key=api_key)


def gemini_timeline(story: str, *, options: GeminiOptions | None = None, **settings: Any) -> Timeline:
    """Ask Gemini to split ``story`` into timed, self-contained scene captions; validate into a :class:`Timeline`.
    ``settings``: ``seconds`` and the optional ``fps``, ``negative``, ``max_caption_tokens``, ``min_scene_seconds``
    of :func:`.llm.story_timeline`."""
    return story_timeline(story, options=options or GeminiOptions(), **settings)


def annotate_frames(
    images: Sequence[Any],
    *,
    model: str | None = None,
    timestamps: Sequence[float] | None = None,
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS,
    max_side: int = 768,
    options: LLMOptions | None = None,
) -> FrameAnnotation:
    """Frame-level captions of one clip's sampled frames (paper section 3), via Gemini by default or the backend
    of ``options`` (an :class:`~.openai_compat.OpenAIOptions` for a local vision model).

    ``images`` in time order; ``model`` (if given) wins over ``options.model``. Invalid answers are retried once
    with the error, then raise :class:`PromptBuildError`.
    """
    options = (options or GeminiOptions()).with_model(model)
    return _annotate_frames(images, options=options, timestamps=timestamps, max_caption_tokens=max_caption_tokens,
                            max_side=max_side)
