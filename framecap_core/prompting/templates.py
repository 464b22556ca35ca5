"""Prompt templates and JSON schemas shared by the story prompt builder and the dataset annotator.

Both follow paper section 3: every frame description covers the same five aspects (:data:`CAPTION_ASPECTS`), is
self-contained, frames without visible change share one caption, and the answer is strict JSON. Keeping the
vocabulary here means captions written for training and captions written for generation read alike.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from ..errors import DatasetError, PromptBuildError
from ..grid import latent_start_frame
from ..timeline import Timeline, frames_for_seconds, num_latents, parse_timeline
from .offline import DEFAULT_MAX_CAPTION_TOKENS, DEFAULT_MIN_SCENE_SECONDS, truncate_words

__all__ = [
    "ANNOTATION_SYSTEM_INSTRUCTION",
    "AnnotationError",
    "CAMERA_ANGLES",
    "CAPTION_ASPECTS",
    "SHOT_SIZES",
    "STORY_SYSTEM_INSTRUCTION",
    "annotation_schema",
    "annotation_user_prompt",
    "correction_prompt",
    "extract_json",
    "parse_annotation",
    "parse_annotation_answer",
    "parse_story_answer",
    "story_schema",
    "story_system_instruction",
    "story_user_prompt",
]

logger = logging.getLogger("framecap_core.prompting")

# The five aspects every frame-level caption covers (paper section 3, "Adaptive frame-level annotation").
CAPTION_ASPECTS = ("main subjects", "actions", "environment", "shot size", "camera angle")
SHOT_SIZES = (
    "extreme close-up",
    "close-up",
    "medium close-up",
    "medium shot",
    "full shot",
    "wide shot",
    "extreme wide shot",
)
CAMERA_ANGLES = (
    "eye level",
    "low angle",
    "high angle",
    "bird's-eye view",
    "aerial view",
    "dutch angle",
    "over-the-shoulder",
)

_ASPECT_LINES = "\n".join(
    [
        "  1. main subjects: who or what is in the frame, with the appearance that identifies them (name, age, "
        "clothing, colour, species);",
        "  2. actions: what the subjects are doing in this moment;",
        "  3. environment: the place, time of day, weather and lighting;",
        f"  4. shot size: one of {', '.join(SHOT_SIZES)};",
        f"  5. camera angle and movement: one of {', '.join(CAMERA_ANGLES)}, plus any pan, tilt, zoom or tracking.",
    ]
)

_SELF_CONTAINED = (
    "Each caption must stand alone, because the video model reads one caption per frame and never sees the others: "
    "repeat the characters' names and descriptions and the visual style in every caption; never write pronouns that "
    'point to another caption ("he", "she", "it", "they") or references such as "the same", "again", "as before", '
    '"continues".'
)

# -- story -> timeline (inference) --------------------------------------------------------------------------------------

STORY_SYSTEM_INSTRUCTION = (
    "You turn a user's story into frame-level captions for a text-to-video model that generates a {seconds:g}-second "
    "video at {fps} frames per second.\n"
    "Split the story into consecutive scenes in time order. Each scene has a start and an end in seconds and one "
    "caption. Rules:\n"
    "- The scenes cover the whole video, from 0 to {seconds:g} seconds, without gaps or overlaps: the first starts "
    "at 0, each next one starts where the previous one ends, and the last ends at {seconds:g}.\n"
    "- Consecutive frames with no visible change share one caption, so make a new scene only where the picture "
    "changes (a new action, a camera move, a cut to another place). Each scene lasts at least {min_scene:g} s; give scenes durations in proportion to how much happens in them.\n"
    "- Each caption is one detailed paragraph of at most {max_words} words that covers the five aspects:\n"
    f"{_ASPECT_LINES}\n"
    f"- {_SELF_CONTAINED}\n"
    "- Keep the user's characters, places, order of events and style; add visual detail but no new plot.\n"
    '- Answer with JSON only, matching the given schema: an object with a "scenes" list of '
    '{{"start": seconds, "end": seconds, "caption": text}}. No markdown, no comments.'
)


def story_system_instruction(
    *, seconds: float, fps: int = 16, max_words: int = 120, min_scene_seconds: float = 1.0
) -> str:
    """The system instruction for turning a story into timed, self-contained scene captions."""
    return STORY_SYSTEM_INSTRUCTION.format(seconds=seconds, fps=fps, max_words=max_words, min_scene=min_scene_seconds)


def story_schema() -> dict[str, Any]:
    """JSON schema of the story answer: ``{"scenes": [{"start": s, "end": s, "caption": str}, ...]}`` (seconds)."""
    return {
        "type": "object",
        "properties": {
            "scenes": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "start": {"type": "number", "description": "scene start in seconds"},
                        "end": {"type": "number", "description": "scene end in seconds (exclusive)"},
                        "caption": {"type": "string", "description": "self-contained frame-level caption"},
                    },
                    "required": ["start", "end", "caption"],
                },
            }
        },
        "required": ["scenes"],
    }


def story_user_prompt(story: str, *, seconds: float) -> str:
    return f"Video length: {seconds:g} seconds.\nStory:\n{story.strip()}"


def correction_prompt(error: str) -> str:
    """Follow-up message after an invalid answer: the validation error and what to send back."""
    return (
        f"Your answer was invalid: {error}\n"
        "Send the complete corrected JSON answer (all scenes), following every rule and the schema. JSON only."
    )


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
    frames = [0] + [latent_start_frame(j) for j in latent_starts[1:]] + [num_frames]
    scenes = []
    for i, caption in enumerate(captions):
        words = len(caption.split())
        if words > max_caption_tokens:
            logger.info("scene %d caption has %d words; cut to %d", i + 1, words, max_caption_tokens)
            caption = truncate_words(caption, max_caption_tokens)
        scenes.append({"start": frames[i], "end": frames[i + 1], "caption": caption})
    return parse_timeline({"fps": fps, "num_frames": num_frames, "negative": negative, "scenes": scenes})


# -- answers ----------------------------------------------------------------------------------------------------------

_THINKING = re.compile(r"<think>.*?</think>", re.S)
_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)```", re.S)


def extract_json(text: str) -> str:
    """The JSON in a model's answer, for servers that ignore the schema and wrap it: the whole text (without
    ``<think>`` blocks) when it parses, else the first fenced ```` ```json ```` block that parses, else the first
    ``{...}`` object inside prose that parses; else ``text`` unchanged, so the validator reports what is wrong."""
    if not isinstance(text, str):
        return text
    stripped = _THINKING.sub("", text).strip()
    for candidate in [stripped, *(m.group(1).strip() for m in _FENCE.finditer(stripped))]:
        try:
            json.loads(candidate)
            return candidate
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    for brace in re.finditer(r"\{", stripped):
        try:
            value, end = decoder.raw_decode(stripped, brace.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            return stripped[brace.start():end]
    return text


# -- frames -> captions (dataset annotation) ------------------------------------------------------------------------

ANNOTATION_SYSTEM_INSTRUCTION = (
    "You annotate video clips for training a text-to-video model with frame-level captions. You receive the "
    "sampled frames of one clip in time order, numbered from 0.\n"
    "Describe every frame. Group consecutive frames into segments: frames with minimal visual difference share one "
    "caption (one segment); a significant change (a new action, a camera move, a cut, a subject entering or "
    "leaving) starts a new segment with its own independent caption. Segments are in order, do not overlap and "
    "cover every frame from 0 to the last one.\n"
    "Each caption is one detailed paragraph of at most {max_words} words that covers the five aspects:\n"
    f"{_ASPECT_LINES}\n"
    f"{_SELF_CONTAINED}\n"
    "Describe only what is visible; do not guess names, sounds or what happens outside the frames.\n"
    "Also give one video_caption summarising the whole clip in the same style.\n"
    "Answer with JSON only, matching the given schema, with no redundant commentary."
)


def annotation_system_instruction(max_words: int = 120) -> str:
    return ANNOTATION_SYSTEM_INSTRUCTION.format(max_words=max_words)


def annotation_schema(num_frames: int) -> dict[str, Any]:
    """JSON schema of an annotation of ``num_frames`` sampled frames (``first_frame``/``last_frame`` inclusive)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise DatasetError(f"num_frames must be an integer >= 1 (sampled frames per clip), got {num_frames!r}.")
    index = {"type": "integer", "minimum": 0, "maximum": num_frames - 1}
    return {
        "type": "object",
        "properties": {
            "segments": {
                "type": "array",
                "minItems": 1,
                "maxItems": num_frames,
                "items": {
                    "type": "object",
                    "properties": {
                        "first_frame": {**index, "description": "first frame of the segment (inclusive)"},
                        "last_frame": {**index, "description": "last frame of the segment (inclusive)"},
                        "caption": {"type": "string", "description": "caption shared by these frames"},
                    },
                    "required": ["first_frame", "last_frame", "caption"],
                },
            },
            "video_caption": {"type": "string", "description": "one caption for the whole clip"},
        },
        "required": ["segments", "video_caption"],
    }


def annotation_user_prompt(num_frames: int, *, timestamps: Sequence[float] | None = None) -> str:
    text = f"The clip has {num_frames} sampled frames, numbered 0 to {num_frames - 1}, shown below in order."
    if timestamps is not None:
        text += " Their times in seconds: " + ", ".join(f"{i}: {t:.2f}" for i, t in enumerate(timestamps)) + "."
    return text


class AnnotationError(PromptBuildError, DatasetError):
    """An annotation answer does not describe the sampled frames (bad JSON, gaps, overlaps, empty captions)."""


def _load_json(answer: Any) -> Any:
    if isinstance(answer, (dict, list)):
        return answer
    if not isinstance(answer, str):
        raise AnnotationError(f"The annotation must be JSON text or an object, got {type(answer).__name__}.")
    text = answer.strip()
    if text.startswith("```"):  # tolerate a fenced block
        text = text.strip("`").removeprefix("json").strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"The annotation is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); answer with the "
            f"JSON object only."
        ) from None


def parse_annotation_answer(answer: Any, num_frames: int) -> tuple[list[str], str]:
    """Per-frame captions (shared captions expanded) and the video caption of an annotation answer."""
    annotation_schema(num_frames)  # validates num_frames
    data = _load_json(answer)
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list) or not data["segments"]:
        raise AnnotationError('The annotation must be an object with a non-empty "segments" list.')
    captions: list[str] = []
    for number, segment in enumerate(data["segments"], 1):
        if not isinstance(segment, dict):
            raise AnnotationError(f"segment {number} is not an object with first_frame, last_frame and caption.")
        first, last, caption = segment.get("first_frame"), segment.get("last_frame"), segment.get("caption")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (first, last)):
            raise AnnotationError(
                f"segment {number}: first_frame and last_frame must be integers, got {first!r}, {last!r}."
            )
        if not isinstance(caption, str) or not caption.strip():
            raise AnnotationError(f"segment {number} (frames {first}-{last}) has an empty caption.")
        if first != len(captions):
            what = "a gap" if first > len(captions) else "an overlap"
            raise AnnotationError(
                f"segment {number} starts at frame {first} but the previous segments end at frame {len(captions) - 1}: "
                f"{what}. Segments must be consecutive and cover frames 0-{num_frames - 1}."
            )
        if last < first or last >= num_frames:
            raise AnnotationError(
                f"segment {number} spans frames {first}-{last}; last_frame must be >= first_frame and <= "
                f"{num_frames - 1}."
            )
        captions.extend([" ".join(caption.split())] * (last - first + 1))
    if len(captions) != num_frames:
        raise AnnotationError(
            f"The segments cover frames 0-{len(captions) - 1} but the clip has {num_frames} frames; cover every frame."
        )
    video_caption = data.get("video_caption", "")
    if not isinstance(video_caption, str):
        raise AnnotationError("video_caption must be a string.")
    return captions, " ".join(video_caption.split())


def parse_annotation(answer: Any, num_frames: int) -> list[str]:
    """One caption per sampled frame (shared captions repeated) from an annotation answer (JSON text or dict).

    Raises :class:`AnnotationError` (a :class:`PromptBuildError` and a :class:`DatasetError`) naming the fault.
    """
    return parse_annotation_answer(answer, num_frames)[0]
