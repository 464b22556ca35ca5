"""Prompt building: a short story to a :class:`~framecap_core.timeline.Timeline` of frame-level captions.

Two backends behind :func:`build_timeline`:

- ``"gemini"`` (paper section 3: Gemini 2.5 Pro turns the user's prompt into frame-level captions) — structured
  JSON output, validated into a timeline, retried on rate limits and server errors; the key comes from
  ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``. See :mod:`.gemini`.
- ``"offline"`` — a deterministic splitter with no model, key or network. See :mod:`.offline`.

The dataset annotation prompt (:mod:`.templates`, :func:`annotate_frames`) shares the caption vocabulary.
Importing this package does not import ``google.genai``; the Gemini path loads it on first use.
"""

from __future__ import annotations

from ..errors import PromptBuildError
from ..limits import check_int
from ..timeline import Timeline, check_seconds
from .gemini import (
    API_KEY_ENV_VARS,
    DEFAULT_MODEL,
    FrameAnnotation,
    GeminiOptions,
    annotate_frames,
    api_key_from_env,
    gemini_timeline,
    parse_story_answer,
)
from .offline import (
    DEFAULT_MAX_CAPTION_TOKENS,
    DEFAULT_MIN_SCENE_SECONDS,
    MAX_CAPTION_TOKENS,
    check_story,
    offline_timeline,
    plan_scenes,
    split_story,
    standalone_caption,
    truncate_words,
)
from .score import SplitScore, score_split
from .templates import (
    ANNOTATION_SYSTEM_INSTRUCTION,
    CAMERA_ANGLES,
    CAPTION_ASPECTS,
    SHOT_SIZES,
    STORY_SYSTEM_INSTRUCTION,
    AnnotationError,
    annotation_schema,
    annotation_system_instruction,
    parse_annotation,
    parse_annotation_answer,
    story_schema,
    story_system_instruction,
)

__all__ = [
    "ANNOTATION_SYSTEM_INSTRUCTION",
    "API_KEY_ENV_VARS",
    "BACKENDS",
    "CAMERA_ANGLES",
    "CAPTION_ASPECTS",
    "DEFAULT_MAX_CAPTION_TOKENS",
    "DEFAULT_MIN_SCENE_SECONDS",
    "DEFAULT_MODEL",
    "MAX_CAPTION_TOKENS",
    "SHOT_SIZES",
    "STORY_SYSTEM_INSTRUCTION",
    "AnnotationError",
    "FrameAnnotation",
    "GeminiOptions",
    "SplitScore",
    "annotate_frames",
    "api_key_from_env",
    "annotation_schema",
    "annotation_system_instruction",
    "build_timeline",
    "check_story",
    "gemini_timeline",
    "offline_timeline",
    "parse_annotation",
    "parse_annotation_answer",
    "parse_story_answer",
    "plan_scenes",
    "score_split",
    "split_story",
    "standalone_caption",
    "story_schema",
    "story_system_instruction",
    "truncate_words",
]

BACKENDS = ("gemini", "offline")


def build_timeline(
    story: str,
    *,
    seconds: float,
    fps: int = 16,
    backend: str = "gemini",
    model: str = DEFAULT_MODEL,
    negative: str = "",
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS,
    min_scene_seconds: float = DEFAULT_MIN_SCENE_SECONDS,
    timeout: float = 120.0,
    retries: int = 3,
    base_url: str | None = None,
    options: GeminiOptions | None = None,
) -> Timeline:
    """Turn ``story`` into a validated :class:`Timeline` of ``frames_for_seconds(seconds, fps)`` frames.

    Args:
        story: the user's short or detailed description of the video.
        seconds: video length; the frame count is the nearest ``4k + 1`` to ``seconds * fps``.
        backend: ``"gemini"`` (needs ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``) or ``"offline"``.
        model, timeout (s per request), retries (extra attempts on 429 / 5xx / timeouts), base_url (another
            endpoint, e.g. a proxy or a test server): Gemini settings; ``options`` gives them all at once
            (then these four are ignored).
        negative: negative prompt stored in the timeline.
        max_caption_tokens: longest caption in words (whitespace tokens); longer ones are cut at a clause end.
        min_scene_seconds: shortest scene.

    Raises:
        PromptBuildError: no key, no network, refusal, exhausted retries, an answer invalid twice, bad settings.
        TimelineError: an invalid length / fps.
    """
    check_story(story)
    if backend not in BACKENDS:
        raise PromptBuildError(f"Unknown prompt backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    check_seconds(seconds, fps)  # a TimelineError for no length, one past the limit, or a bad fps
    check_int(max_caption_tokens, "max_caption_tokens", 8, MAX_CAPTION_TOKENS, "use e.g. 120 (words)",
              PromptBuildError)
    if (
        isinstance(min_scene_seconds, bool)
        or not isinstance(min_scene_seconds, (int, float))
        or not 0 <= min_scene_seconds <= seconds
    ):
        raise PromptBuildError(
            f"min_scene_seconds must be a number between 0 and the video length ({seconds:g} s), got "
            f"{min_scene_seconds!r}."
        )
    common = dict(seconds=seconds, fps=fps, negative=negative, max_caption_tokens=max_caption_tokens,
                  min_scene_seconds=min_scene_seconds)
    if backend == "offline":
        return offline_timeline(story, **common)
    if options is None:
        options = GeminiOptions(model=model, timeout=timeout, retries=retries, base_url=base_url)
    return gemini_timeline(story, options=options, **common)
