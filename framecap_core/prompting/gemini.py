"""Gemini backend: a story to a timeline, and sampled clip frames to frame-level captions, through ``google-genai``.

One request path serves both (:func:`generate_json`): structured output with a JSON schema and a system
instruction; retries with exponential backoff on rate limits (429), server errors (500, 502, 503, 504) and
timeouts; no retry on errors that will not go away (bad key, unknown model, refusal); an invalid answer is sent
back once with its validation error so the model can correct it.

The API key comes only from the environment (:data:`API_KEY_ENV_VARS`) and never appears in a message or log:
every error text built here is passed through :func:`_redact`. ``google.genai`` is imported on first use, so
importing :mod:`framecap_core.prompting` stays cheap.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import FrameCapError, PromptBuildError
from ..limits import check_int, check_number
from ..timeline import Timeline, frames_for_seconds, num_latents, parse_timeline
from .offline import DEFAULT_MAX_CAPTION_TOKENS, DEFAULT_MIN_SCENE_SECONDS, truncate_words
from .templates import (
    annotation_schema,
    annotation_system_instruction,
    annotation_user_prompt,
    correction_prompt,
    parse_annotation_answer,
    story_schema,
    story_system_instruction,
    story_user_prompt,
)

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

logger = logging.getLogger("framecap_core.prompting")

API_KEY_ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
DEFAULT_MODEL = "gemini-2.5-pro"
# A request may wait up to an hour, and be retried up to 10 times (each wait at most max_backoff).
MAX_TIMEOUT_SECONDS = 3600.0
MAX_RETRIES = 10
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Finish reasons that mean "will not answer this", not "answered badly".
_REFUSALS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE", "OTHER"}
)

T = TypeVar("T")


@dataclass
class GeminiOptions:
    """How to reach Gemini. ``timeout`` is per request in seconds; ``retries`` counts extra attempts after a rate
    limit, server error or timeout, waiting ``backoff * 2**i`` seconds (at most ``max_backoff``, at least a
    ``retryDelay`` the server asks for); ``sleep`` is injectable so tests do not wait."""

    model: str = DEFAULT_MODEL
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 2.0
    max_backoff: float = 60.0
    base_url: str | None = None
    api_version: str | None = "v1beta"  # structured output (responseJsonSchema) lives in v1beta
    temperature: float | None = None
    sleep: Callable[[float], None] | None = field(default=None, repr=False)  # None: time.sleep

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise PromptBuildError(f"model must be a Gemini model name like {DEFAULT_MODEL!r}, got {self.model!r}.")
        check_number(self.timeout, "timeout", 0, MAX_TIMEOUT_SECONDS, "use e.g. 120 (seconds per request)",
                     low_inclusive=False, error=PromptBuildError)
        check_int(self.retries, "retries", 0, MAX_RETRIES, "use e.g. 3", PromptBuildError)
        if not isinstance(self.backoff, (int, float)) or self.backoff < 0:
            raise PromptBuildError(f"backoff must be a number of seconds >= 0, got {self.backoff!r}.")


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The first non-empty of ``GEMINI_API_KEY`` and ``GOOGLE_API_KEY``; raise a :class:`PromptBuildError` if none."""
    environ = os.environ if environ is None else environ
    for name in API_KEY_ENV_VARS:
        value = environ.get(name, "").strip()
        if value:
            return value
    raise PromptBuildError(
        "No Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment (keys are never read from "
        'settings or files), or use the offline backend (backend="offline", `framecap prompt --backend offline`), '
        "which needs no key or network."
    )


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _redact(text: str, key: str) -> str:
    return text.replace(key, "[redacted]") if key else text


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

    attempts = options.retries + 1
    last = ""
    for attempt in range(1, attempts + 1):
        wait = min(options.max_backoff, options.backoff * 2 ** (attempt - 1))
        try:
            return client.models.generate_content(model=options.model, contents=contents, config=config)
        except genai_errors.APIError as exc:
            message = _redact(str(getattr(exc, "message", "") or exc), key)
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
            last = f"HTTP {code} {status}".strip() + (f": {message}" if message else "")
            wait = min(options.max_backoff, max(wait, _retry_delay(exc)))
        except json.JSONDecodeError as exc:
            # A 200 whose body is not JSON: a proxy page or a cut-off answer; worth another try.
            last = f"an unreadable HTTP answer (not JSON: {exc.msg})"
        except timeouts:
            last = f"no answer within the {options.timeout:g} s timeout"
        except (*transport, OSError) as exc:
            # Connection refused, DNS failure, no route: retrying will not help, say so at once.
            raise PromptBuildError(
                f"Cannot reach Gemini at {_where(options)} ({type(exc).__name__}: {_redact(str(exc), key)}). Check "
                f"the network connection (and a proxy), or use the offline backend, which needs no network."
            ) from None
        if attempt < attempts:
            logger.warning("Gemini: %s; retrying in %.3g s (attempt %d of %d)", last, wait, attempt + 1, attempts)
            (options.sleep or _sleep)(wait)
    raise PromptBuildError(
        f"Gemini failed {attempts} time(s) in a row; last: {last}. Try again later, raise the number of retries or "
        f"the timeout, or use the offline backend."
    )


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


def generate_json(
    parts: Sequence[Any],
    *,
    system_instruction: str,
    schema: dict[str, Any],
    validate: Callable[[str], T],
    options: GeminiOptions | None = None,
    api_key: str | None = None,
) -> T:
    """Send ``parts`` (strings or ``google.genai.types.Part``) as one user turn, validate the JSON answer.

    An answer that ``validate`` rejects (any :class:`FrameCapError` or ``ValueError``) is sent back once with the
    error; a second invalid answer raises :class:`PromptBuildError` with both errors.
    """
    options = options or GeminiOptions()
    key = api_key or api_key_from_env()
    from google.genai import types

    client = _client(key, options)
    config = types.GenerateContentConfig(
        system_instruction=system_instruction,
        response_mime_type="application/json",
        response_json_schema=schema,
        temperature=options.temperature,
    )
    user = types.Content(role="user", parts=[types.Part(text=p) if isinstance(p, str) else p for p in parts])
    contents: list[Any] = [user]
    errors: list[str] = []
    for _round in range(2):
        text = _answer_text(_call(client, contents, config, options, key))
        try:
            return validate(text)
        except (FrameCapError, ValueError) as exc:
            error = _redact(str(exc), key)
            errors.append(error)
            logger.warning("Gemini: invalid answer (%s)", error)
            contents = contents + [
                types.Content(role="model", parts=[types.Part(text=text)]),
                types.Content(role="user", parts=[types.Part(text=correction_prompt(error))]),
            ]
    raise PromptBuildError(
        f"Gemini's answer was invalid twice: first {errors[0]}; then {errors[1]}. Try again, shorten the story, "
        f"or use the offline backend."
    )


# -- story -> timeline ------------------------------------------------------------------------------------------------


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PromptBuildError(f"{what} must be a number of seconds, got {value!r}.")
    return float(value)


def parse_story_answer(
    answer: str | dict[str, Any],
    *,
    seconds: float,
    fps: int = 16,
    negative: str = "",
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS,
    min_scene_seconds: float = DEFAULT_MIN_SCENE_SECONDS,
) -> Timeline:
    """Validate a ``{"scenes": [{"start", "end", "caption"}]}`` answer (seconds) into a :class:`Timeline`.

    Scenes must start at 0, follow each other within a quarter second, end within half a second (or 5 %) of the
    video's end, and last at least half of ``min_scene_seconds``. Boundaries move to the nearest latent start (pixel
    frame ``4j - 3``) so every scene maps onto whole latents; captions are cut to ``max_caption_tokens`` words.
    """
    num_frames = frames_for_seconds(seconds, fps)
    duration = num_frames / fps
    if isinstance(answer, str):
        try:
            data = json.loads(answer)
        except json.JSONDecodeError as exc:
            raise PromptBuildError(
                f"the answer is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from None
    else:
        data = answer
    if not isinstance(data, dict) or not isinstance(data.get("scenes"), list) or not data["scenes"]:
        raise PromptBuildError('the answer must be a JSON object with a non-empty "scenes" list')
    tolerance, end_tolerance = 0.25, max(0.5, 0.05 * duration)
    bounds: list[tuple[float, float]] = []
    captions: list[str] = []
    for number, scene in enumerate(data["scenes"], 1):
        if not isinstance(scene, dict):
            raise PromptBuildError(f"scene {number} is not an object with start, end and caption")
        start = _number(scene.get("start"), f"scene {number} start")
        end = _number(scene.get("end"), f"scene {number} end")
        caption = scene.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise PromptBuildError(f"scene {number} ({start:g}-{end:g} s) has an empty caption")
        if end <= start:
            raise PromptBuildError(f"scene {number} ends at {end:g} s, not after its start {start:g} s")
        expected = bounds[-1][1] if bounds else 0.0
        if abs(start - expected) > tolerance:
            what = "the video starts at 0 s" if not bounds else f"scene {number - 1} ends at {expected:g} s"
            raise PromptBuildError(f"scene {number} starts at {start:g} s but {what}; scenes must be contiguous")
        if end - start < 0.5 * min_scene_seconds:
            raise PromptBuildError(
                f"scene {number} lasts only {end - start:g} s; each scene must last at least {min_scene_seconds:g} s"
            )
        bounds.append((start, end))
        captions.append(" ".join(caption.split()))
    if abs(bounds[-1][1] - seconds) > end_tolerance and abs(bounds[-1][1] - duration) > end_tolerance:
        raise PromptBuildError(
            f"the last scene ends at {bounds[-1][1]:g} s but the video lasts {seconds:g} s; the scenes must cover "
            f"0 to {seconds:g} s"
        )
    total = num_latents(num_frames)
    latent_starts = [0]
    for number, (start, _) in enumerate(bounds[1:], 2):
        latent = min(total - 1, max(1, round((start * fps + 3) / 4)))
        if latent <= latent_starts[-1]:
            raise PromptBuildError(
                f"scene {number - 1} is too short for the video's latent grid (4 frames at {fps} fps); make every "
                f"scene at least {min_scene_seconds:g} s long"
            )
        latent_starts.append(latent)
    frames = [0] + [4 * j - 3 for j in latent_starts[1:]] + [num_frames]
    scenes = []
    for i, caption in enumerate(captions):
        words = len(caption.split())
        if words > max_caption_tokens:
            logger.info("Gemini: scene %d caption has %d words; cut to %d", i + 1, words, max_caption_tokens)
            caption = truncate_words(caption, max_caption_tokens)
        scenes.append({"start": frames[i], "end": frames[i + 1], "caption": caption})
    return parse_timeline({"fps": fps, "num_frames": num_frames, "negative": negative, "scenes": scenes})


def gemini_timeline(
    story: str,
    *,
    seconds: float,
    fps: int = 16,
    negative: str = "",
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS,
    min_scene_seconds: float = DEFAULT_MIN_SCENE_SECONDS,
    options: GeminiOptions | None = None,
) -> Timeline:
    """Ask Gemini to split ``story`` into timed, self-contained scene captions; validate into a :class:`Timeline`."""
    if not isinstance(story, str) or not story.strip():
        raise PromptBuildError("The story is empty; write what should happen in the video.")
    key = api_key_from_env()
    instruction = story_system_instruction(
        seconds=seconds, fps=fps, max_words=max_caption_tokens, min_scene_seconds=min_scene_seconds
    )

    def validate(text: str) -> Timeline:
        return parse_story_answer(
            text,
            seconds=seconds,
            fps=fps,
            negative=negative,
            max_caption_tokens=max_caption_tokens,
            min_scene_seconds=min_scene_seconds,
        )

    return generate_json(
        [story_user_prompt(story, seconds=seconds)],
        system_instruction=instruction,
        schema=story_schema(),
        validate=validate,
        options=options,
        api_key=key,
    )


# -- frames -> annotation ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameAnnotation:
    """Captions of one clip: one per sampled frame (shared captions repeated) and one for the whole clip."""

    captions: list[str]
    video_caption: str


def _image_part(image: Any, max_side: int) -> Any:
    """A ``types.Part`` holding ``image`` (PIL image, ``[H, W, 3]`` uint8 array, encoded bytes or a path) as JPEG."""
    from google.genai import types

    if isinstance(image, (bytes, bytearray)):
        mime = "image/png" if bytes(image[:8]) == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        return types.Part.from_bytes(data=bytes(image), mime_type=mime)
    from PIL import Image

    if isinstance(image, (str, Path)):
        image = Image.open(image)
    elif not isinstance(image, Image.Image):
        import numpy as np

        array = np.asarray(image)
        if array.ndim != 3 or array.shape[-1] not in (3, 4) or array.dtype != np.uint8:
            raise PromptBuildError(
                f"A frame must be an [H, W, 3] uint8 array, a PIL image, encoded bytes or a path; got an array of "
                f"shape {tuple(array.shape)} and dtype {array.dtype}."
            )
        image = Image.fromarray(array)
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return types.Part.from_bytes(data=buffer.getvalue(), mime_type="image/jpeg")


def annotate_frames(
    images: Sequence[Any],
    *,
    model: str = DEFAULT_MODEL,
    timestamps: Sequence[float] | None = None,
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS,
    max_side: int = 768,
    options: GeminiOptions | None = None,
) -> FrameAnnotation:
    """Frame-level captions of one clip's sampled frames (paper section 3), via Gemini.

    ``images`` in time order; ``options`` (base URL, timeout, retries) override the defaults, ``model`` wins over
    ``options.model``. Invalid answers are retried once with the error, then raise
    :class:`~framecap_core.prompting.templates.AnnotationError`-derived :class:`PromptBuildError`.
    """
    images = list(images)
    if not images:
        raise PromptBuildError("annotate_frames needs at least one frame.")
    if timestamps is not None and len(timestamps) != len(images):
        raise PromptBuildError(f"{len(timestamps)} timestamps for {len(images)} frames; give one per frame.")
    options = options or GeminiOptions()
    if model != options.model:
        options = GeminiOptions(**{**options.__dict__, "model": model})
    key = api_key_from_env()
    n = len(images)
    parts: list[Any] = [annotation_user_prompt(n, timestamps=timestamps)]
    for index, image in enumerate(images):
        parts.append(f"Frame {index}:")
        parts.append(_image_part(image, max_side))

    def validate(text: str) -> FrameAnnotation:
        captions, video_caption = parse_annotation_answer(text, n)
        return FrameAnnotation([truncate_words(c, max_caption_tokens) for c in captions], video_caption)

    return generate_json(
        parts,
        system_instruction=annotation_system_instruction(max_caption_tokens),
        schema=annotation_schema(n),
        validate=validate,
        options=options,
        api_key=key,
    )
