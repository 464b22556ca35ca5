"""What every LLM backend shares: settings, the retry loop, the validate-and-correct loop, and the two tasks.

A backend (:mod:`.gemini`, :mod:`.openai_compat`) only knows its wire format: it subclasses :class:`LLMOptions`
and implements :meth:`LLMOptions.start`, which returns an :data:`Ask` — one request (with retries, through
:func:`call_with_retries`) that sends the conversation so far and returns the answer's text. Everything else is
here, once:

- :func:`call_with_retries`: retries with exponential backoff (``backoff * 2**i``, at most ``max_backoff``, at least
  the delay a server asks for) on what a backend raises as :class:`Retryable` (rate limits, 408/5xx, timeouts,
  unreadable bodies); any other failure is a :class:`PromptBuildError` at once;
- :func:`generate_json`: the answer (JSON found in it by :func:`~.templates.extract_json`) is validated; an invalid
  one is sent back once with its error (:func:`~.templates.correction_prompt`); a second one raises;
- :func:`story_timeline` and :func:`annotate_frames`: the story and annotation tasks (instruction, schema,
  validation) for any backend.

A backend's API key never appears in an error or log: every message built from server text goes through
:func:`redact`.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import FrameCapError, PromptBuildError
from ..limits import check_int, check_number
from ..timeline import Timeline
from .offline import DEFAULT_MAX_CAPTION_TOKENS, DEFAULT_MIN_SCENE_SECONDS, check_story, truncate_words
from .templates import (
    annotation_schema,
    annotation_system_instruction,
    annotation_user_prompt,
    correction_prompt,
    extract_json,
    parse_annotation_answer,
    parse_story_answer,
    story_schema,
    story_system_instruction,
    story_user_prompt,
)

__all__ = [
    "MAX_RETRIES",
    "MAX_TIMEOUT_SECONDS",
    "RETRYABLE_STATUS",
    "Ask",
    "FrameAnnotation",
    "ImageData",
    "LLMOptions",
    "Retryable",
    "annotate_frames",
    "call_with_retries",
    "encode_image",
    "first_env",
    "generate_json",
    "redact",
    "sentence_case",
    "story_timeline",
]

logger = logging.getLogger("framecap_core.prompting")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A request may wait up to an hour, and be retried up to 10 times (each wait at most max_backoff).
MAX_TIMEOUT_SECONDS = 3600.0
MAX_RETRIES = 10

T = TypeVar("T")
R = TypeVar("R")

Ask = Callable[[list[tuple[str, str]]], str]
"""One request: the follow-up turns after the first user turn (``("model" | "user", text)``) -> the answer text."""


@dataclass(frozen=True)
class ImageData:
    """An encoded image to send in a prompt: ``mime_type`` (``image/jpeg``, ``image/png``) and its bytes."""

    mime_type: str
    data: bytes = field(repr=False)


Part = str | ImageData


@dataclass
class LLMOptions:
    """How to reach an LLM. ``timeout`` is per request in seconds; ``retries`` counts extra attempts after a rate
    limit, server error or timeout, waiting ``backoff * 2**i`` seconds (at most ``max_backoff``, at least the delay
    the server asks for); ``sleep`` is injectable so tests do not wait. Subclasses give ``model`` a default."""

    model: str = ""
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 2.0
    max_backoff: float = 60.0
    base_url: str | None = None
    temperature: float | None = None
    sleep: Callable[[float], None] | None = field(default=None, repr=False)  # None: time.sleep

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise PromptBuildError(f"model must be a model name like {self.example_model()!r}, got {self.model!r}.")
        check_number(self.timeout, "timeout", 0, MAX_TIMEOUT_SECONDS, "use e.g. 120 (seconds per request)",
                     low_inclusive=False, error=PromptBuildError)
        check_int(self.retries, "retries", 0, MAX_RETRIES, "use e.g. 3", PromptBuildError)
        if not isinstance(self.backoff, (int, float)) or self.backoff < 0:
            raise PromptBuildError(f"backoff must be a number of seconds >= 0, got {self.backoff!r}.")

    # -- what a backend provides --------------------------------------------------------------------------------

    def example_model(self) -> str:
        """A model name to suggest in error messages."""
        return type(self).model

    def label(self) -> str:
        """Who answers, for messages and logs: ``"Gemini"``, ``"the model 'm' at http://..."``."""
        raise NotImplementedError

    def api_key(self) -> str:
        """The key from the environment ("" when the backend needs none); raise when a needed key is missing."""
        raise NotImplementedError

    def start(self, parts: Sequence[Part], *, system_instruction: str, schema: dict[str, Any], key: str) -> Ask:
        """Prepare a conversation whose first user turn is ``parts``; return the function that asks it."""
        raise NotImplementedError

    def with_model(self, model: str | None) -> LLMOptions:
        """These options with another model (``None``: unchanged)."""
        if model is None or model == self.model:
            return self
        return type(self)(**{**self.__dict__, "model": model})


def redact(text: str, key: str) -> str:
    return text.replace(key, "[redacted]") if key else text


def first_env(names: Sequence[str], environ: Mapping[str, str] | None = None) -> str:
    """The first non-empty (stripped) value of ``names`` in ``environ`` (default ``os.environ``), or ""."""
    environ = os.environ if environ is None else environ
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return ""


def sentence_case(label: str) -> str:
    """``label`` to start a sentence with (first letter upper-case)."""
    return label[:1].upper() + label[1:]


# -- one request, with retries ----------------------------------------------------------------------------------------


class Retryable(Exception):
    """A failure that another attempt may not see: ``reason`` says what happened (already redacted), ``wait`` is the
    least delay in seconds the server asked for (``Retry-After``, ``retryDelay``), 0 if none."""

    def __init__(self, reason: str, wait: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


def call_with_retries(send: Callable[[], R], *, options: LLMOptions, sleep: Callable[[float], None]) -> R:
    """``send()`` until it returns, retrying on :class:`Retryable` ``options.retries`` times with backoff.

    ``send`` raises :class:`PromptBuildError` for failures that will not go away (bad key, unknown model, refusal,
    nothing listening); those pass through at once.
    """
    attempts = options.retries + 1
    last = ""
    for attempt in range(1, attempts + 1):
        wait = min(options.max_backoff, options.backoff * 2 ** (attempt - 1))
        try:
            return send()
        except Retryable as exc:
            last = exc.reason
            wait = min(options.max_backoff, max(wait, exc.wait))
        if attempt < attempts:
            logger.warning("%s: %s; retrying in %.3g s (attempt %d of %d)", sentence_case(options.label()), last, wait,
                           attempt + 1, attempts)
            sleep(wait)
    raise PromptBuildError(
        f"{sentence_case(options.label())} failed {attempts} time(s) in a row; last: {last}. Try again later, raise the number of "
        f"retries or the timeout, or use the offline backend."
    )


# -- the conversation: ask, validate, correct once --------------------------------------------------------------------


def generate_json(
    parts: Sequence[Part],
    *,
    system_instruction: str,
    schema: dict[str, Any],
    validate: Callable[[str], T],
    options: LLMOptions,
    api_key: str | None = None,
) -> T:
    """Send ``parts`` as one user turn and validate the JSON answer.

    The answer's JSON (the whole text, a fenced block or an object inside prose, see
    :func:`~.templates.extract_json`) goes to ``validate``; an answer it rejects (any :class:`FrameCapError` or
    ``ValueError``) is sent back once with the error; a second invalid answer raises :class:`PromptBuildError`
    with both errors. ``api_key`` defaults to the backend's key from the environment.
    """
    key = api_key or options.api_key()
    ask = options.start(list(parts), system_instruction=system_instruction, schema=schema, key=key)
    followups: list[tuple[str, str]] = []
    errors: list[str] = []
    for _round in range(2):
        text = ask(followups)
        try:
            return validate(extract_json(text))
        except (FrameCapError, ValueError) as exc:
            error = redact(str(exc), key)
            errors.append(error)
            logger.warning("%s: invalid answer (%s)", sentence_case(options.label()), error)
            followups = followups + [("model", text), ("user", correction_prompt(error))]
    raise PromptBuildError(
        f"The answer of {options.label()} was invalid twice: first {errors[0]}; then {errors[1]}. Try again, shorten the "
        f"story, or use the offline backend."
    )


# -- story -> timeline ------------------------------------------------------------------------------------------------


def story_timeline(
    story: str,
    *,
    seconds: float,
    fps: int = 16,
    negative: str = "",
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS,
    min_scene_seconds: float = DEFAULT_MIN_SCENE_SECONDS,
    options: LLMOptions,
) -> Timeline:
    """Ask the LLM of ``options`` to split ``story`` into timed, self-contained scene captions; validate them into
    a :class:`Timeline` (:func:`~.templates.parse_story_answer`)."""
    check_story(story)
    key = options.api_key()
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


def encode_image(image: Any, max_side: int) -> ImageData:
    """``image`` (PIL image, ``[H, W, 3]`` uint8 array, encoded PNG/JPEG bytes or a path) as an :class:`ImageData`:
    encoded bytes pass as they are; anything else becomes a JPEG whose longest side is at most ``max_side``."""
    if isinstance(image, (bytes, bytearray)):
        mime = "image/png" if bytes(image[:8]) == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        return ImageData(mime, bytes(image))
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
    return ImageData("image/jpeg", buffer.getvalue())


def annotate_frames(
    images: Sequence[Any],
    *,
    options: LLMOptions,
    timestamps: Sequence[float] | None = None,
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS,
    max_side: int = 768,
) -> FrameAnnotation:
    """Frame-level captions of one clip's sampled frames ``images`` (in time order; paper section 3) by the
    (vision) model of ``options``. Invalid answers are retried once with the error, then raise
    :class:`PromptBuildError`."""
    images = list(images)
    if not images:
        raise PromptBuildError("annotate_frames needs at least one frame.")
    if timestamps is not None and len(timestamps) != len(images):
        raise PromptBuildError(f"{len(timestamps)} timestamps for {len(images)} frames; give one per frame.")
    key = options.api_key()
    n = len(images)
    parts: list[Part] = [annotation_user_prompt(n, timestamps=timestamps)]
    for index, image in enumerate(images):
        parts.append(f"Frame {index}:")
        parts.append(encode_image(image, max_side))

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
