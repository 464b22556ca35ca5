"""Prompt building: a short story to a :class:`~framecap_core.timeline.Timeline` of frame-level captions.

Three backends behind :func:`build_timeline`:

- ``"gemini"`` (paper section 3: Gemini 2.5 Pro turns the user's prompt into frame-level captions) — structured
  JSON output, validated into a timeline, retried on rate limits and server errors; the key comes from
  ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``. See :mod:`.gemini`.
- ``"openai"`` — the same request to a local OpenAI-compatible server (Ollama, LM Studio, llama.cpp, vLLM);
  a key only if the server wants one, from ``OPENAI_API_KEY``. See :mod:`.openai_compat`.
- ``"offline"`` — a deterministic splitter with no model, key or network. See :mod:`.offline`.

Both LLM backends share one implementation of the instruction, schema, validation, correction round, timeouts and
backoff (:mod:`.llm`, :mod:`.templates`); the dataset annotation prompt (:func:`annotate_frames`) shares the
caption vocabulary. Importing this package does not import ``google.genai``; the Gemini path loads it on first use.
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
)
from .llm import LLMOptions, story_timeline
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
from .openai_compat import (
    DEFAULT_BASE_URL,
    DEFAULT_OPENAI_MODEL,
    DEFAULT_OPENAI_VISION_MODEL,
    OpenAIOptions,
    openai_api_key_from_env,
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
    parse_story_answer,
    story_schema,
    story_system_instruction,
)

__all__ = [
    "ANNOTATION_SYSTEM_INSTRUCTION",
    "API_KEY_ENV_VARS",
    "BACKENDS",
    "CAMERA_ANGLES",
    "CAPTION_ASPECTS",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CAPTION_TOKENS",
    "DEFAULT_MIN_SCENE_SECONDS",
    "DEFAULT_MODEL",
    "DEFAULT_OPENAI_MODEL",
    "DEFAULT_OPENAI_VISION_MODEL",
    "MAX_CAPTION_TOKENS",
    "SHOT_SIZES",
    "STORY_SYSTEM_INSTRUCTION",
    "AnnotationError",
    "FrameAnnotation",
    "GeminiOptions",
    "LLMOptions",
    "OpenAIOptions",
    "SplitScore",
    "annotate_frames",
    "api_key_from_env",
    "annotation_schema",
    "annotation_system_instruction",
    "build_timeline",
    "check_story",
    "gemini_timeline",
    "offline_timeline",
    "openai_api_key_from_env",
    "parse_annotation",
    "parse_annotation_answer",
    "parse_story_answer",
    "plan_scenes",
    "score_split",
    "split_story",
    "standalone_caption",
    "story_schema",
    "story_timeline",
    "story_system_instruction",
    "truncate_words",
]

BACKENDS = ("gemini", "offline", "openai")


def build_timeline(
    story: str,
    *,
    seconds: float,
    fps: int = 16,
    backend: str = "gemini",
    model: str | None = None,
    negative: str = "",
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS,
    min_scene_seconds: float = DEFAULT_MIN_SCENE_SECONDS,
    timeout: float = 120.0,
    retries: int = 3,
    base_url: str | None = None,
    options: LLMOptions | None = None,
) -> Timeline:
    """Turn ``story`` into a validated :class:`Timeline` of ``frames_for_seconds(seconds, fps)`` frames.

    Args:
        story: the user's short or detailed description of the video.
        seconds: video length; the frame count is the nearest ``4k + 1`` to ``seconds * fps``.
        backend: ``"gemini"`` (needs ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``), ``"openai"`` (an OpenAI-compatible
            server such as Ollama; ``OPENAI_API_KEY`` only if it wants a key) or ``"offline"``.
        model, timeout (s per request), retries (extra attempts on 429 / 5xx / timeouts), base_url: LLM settings.
            ``model`` ``None`` is the backend's default (:data:`DEFAULT_MODEL`, :data:`DEFAULT_OPENAI_MODEL`);
            ``base_url`` is another Gemini endpoint (a proxy, a test server) or the OpenAI-compatible server's URL
            up to ``/v1`` (``None``: Ollama's :data:`DEFAULT_BASE_URL`). ``options`` (a :class:`GeminiOptions` or
            :class:`OpenAIOptions` matching ``backend``) gives them all at once (then these four are ignored).
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
    kind = OpenAIOptions if backend == "openai" else GeminiOptions
    if options is None:
        options = kind(model=model or kind.model, timeout=timeout, retries=retries, base_url=base_url)
    elif not isinstance(options, kind):
        raise PromptBuildError(
            f"backend={backend!r} takes {kind.__name__}, got {type(options).__name__}; pass options that match the "
            f"backend."
        )
    return story_timeline(story, options=options, **common)
