"""Timelines: which caption describes which frames of the video.

A :class:`Timeline` is a list of :class:`Scene` s, each a span of *pixel* frames ``[start, end)`` with one caption,
contiguous and covering the whole video. ``num_frames`` must be ``4k + 1`` (the Wan VAE keeps frame 0 and packs every
following group of 4 frames into one latent frame), so 81 frames = 5 s at 16 fps = 21 latents.

This module is pure Python (no torch): nodes and ``framecap generate --dry-run`` use it cheaply.

Accepted syntaxes
-----------------
:func:`parse_timeline` turns any of these into the same canonical :class:`Timeline`. The examples below all give
the timeline ``[0, 25) "a red fox" | [25, 53) "the fox jumps" | [53, 81) "snow falls"`` for an 81-frame video.

1. Canonical JSON (a ``str``, a ``dict``, or a path to a ``.json`` file)::

       {"fps": 16, "num_frames": 81, "negative": "",
        "scenes": [{"start": 0, "end": 25, "caption": "a red fox"},
                   {"start": 25, "end": 53, "caption": "the fox jumps"},
                   {"start": 53, "end": 81, "caption": "snow falls"}]}

   ``num_frames`` may be omitted (the last scene's end is used); a ``fps`` in the file wins over the argument.

2. Keyframes: ``"frame": "caption"`` pairs, with or without braces, one per line or comma separated; each caption
   runs until the next keyframe. Needs ``num_frames``::

       "0": "a red fox", "25": "the fox jumps", "53": "snow falls"

   A key with a decimal point is a fraction of the video (``"0.5"`` = frame ``0.5 * num_frames`` rounded half up);
   a negative key counts from the end (``"-28"`` = frame ``num_frames - 28``). Keys must be increasing and the first
   must be frame 0. Quotes are optional: ``0: a red fox`` on its own line works too.

3. Seconds: ``[start-end: caption]`` spans, inline or one per line, brackets optional when one per line. Times are
   ``5s``, ``5.5s``, ``0:05`` (m:ss) or ``1:00:05`` (h:mm:ss). A span without an end (``[5s: ...]``) runs to the next
   span or to the end of the video::

       [0s-1.5625s: a red fox] [1.5625s-3.3125s: the fox jumps] [3.3125s-5.0625s: snow falls]

   A boundary at ``s`` seconds is pixel frame ``round(s * fps)``. Without ``num_frames`` the video lasts until the
   last span's end, rounded to the nearest ``4k + 1`` frames (only the last scene's end moves, by at most 2 frames;
   ``[0s-5s: ...]`` gives 81 frames). With ``num_frames``, an open last span stretches to it and an explicit end must
   match it within 2 frames.

4. Equal split: ``a red fox | the fox jumps | snow falls``. Needs ``num_frames``. The *latent* frames are shared out
   evenly (every caption gets the same number of latents, +-1) and boundaries fall on latent starts
   (pixel frame ``4j - 3`` for latent ``j``). A JSON list of plain strings is an equal split too.

5. Captions with durations (seconds): a list of ``{"caption": ..., "seconds": ...}`` dicts or ``[caption, seconds]``
   pairs, as Python objects or JSON text; the total length follows the seconds rules above::

       [["a red fox", 1.5625], ["the fox jumps", 1.75], ["snow falls", 1.75]]

6. Anything else is a single sentence: one scene over the whole video. Needs ``num_frames``.

Pixel frames to latents
-----------------------
Latent 0 is pixel frame 0; latent ``i >= 1`` covers pixel frames ``4i-3 .. 4i``. A latent takes the caption of the
scene owning most of its 4 frames; on a 2-2 tie the *earlier* scene wins (the cut is then on the next latent, so a
scene never starts before its first frame). A scene too short to win any latent (3 frames or fewer, badly placed)
would be silently dropped, so it is an error instead.

Every malformed input raises :class:`~framecap_core.errors.TimelineError` naming the scene, keyframe, span or line at
fault (1-based, quoted) and how to fix it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TimelineError
from .grid import latent_owners, latent_start_frame, num_latents_for_frames
from .limits import (
    MAX_CAPTION_CHARS,
    MAX_FPS,
    MAX_NUM_FRAMES,
    MAX_NUM_LATENTS,
    MAX_TIMELINE_CHARS,
    check_text_length,
)

__all__ = [
    "DEFAULT_NEGATIVE",
    "Scene",
    "Timeline",
    "TimelineError",
    "check_num_frames",
    "check_seconds",
    "frames_for_seconds",
    "negative_prompt",
    "num_latents",
    "parse_timeline",
]

DEFAULT_FPS = 16
# The text encoder reads at most 512 tokens of a caption; a caption thousands of words long is a pasted file.
_CAPTION_HINT = "the text encoder reads only about the first 3000 characters (512 tokens); shorten it"
_TOO_DEEP = (
    "The timeline JSON is nested too deeply to be a timeline; a timeline is an object with a list of scenes, or a "
    "list of [caption, seconds] pairs."
)
_TIMELINE_HINT = "a timeline holds at most one scene per latent frame; check that this is the timeline you meant"

# Wan's own default negative prompt is long and in Chinese; FrameCap defaults to a short English one that names the
# same failure modes.
DEFAULT_NEGATIVE = (
    "bright colors, overexposed, static, blurred details, subtitles, worst quality, low quality, JPEG artifacts, "
    "ugly, deformed, disfigured, extra fingers, poorly drawn hands, poorly drawn face, still picture, cluttered "
    "background, walking backwards"
)
# An explicit end in seconds may miss the requested frame count by this much (rounding to 4k+1 moves it <= 2).
_SNAP_FRAMES = 2


# --------------------------------------------------------------------------------------------------------------------
# Frame-count helpers


def _nearest_valid(frames: float) -> int:
    """Nearest ``4k + 1`` to ``frames`` (>= 1); halfway goes up."""
    k = math.floor((frames - 1) / 4 + 0.5)
    return 4 * max(k, 0) + 1


def check_num_frames(n: Any, what: str = "num_frames") -> int:
    """Return ``n`` if it is a valid pixel frame count (an int ``4k + 1 >= 1``), else raise naming the nearest ones."""
    if isinstance(n, bool) or not isinstance(n, int):
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        else:
            raise TimelineError(f"{what} must be a whole number of frames (4k+1, e.g. 81), got {n!r}.")
    if n < 1:
        raise TimelineError(f"{what}={n} is too small: a video needs at least 1 frame; use 4k+1 frames, e.g. 81.")
    if n > MAX_NUM_FRAMES:
        raise TimelineError(
            f"{what}={n} is more than the limit of {MAX_NUM_FRAMES} frames ({_limit_text()}); make the video shorter.",
            field=what,
        )
    if (n - 1) % 4:
        lower = n - (n - 1) % 4
        raise TimelineError(
            f"{what}={n} is not of the form 4k+1 (the VAE keeps frame 0 and packs each following 4 frames into one "
            f"latent); use {lower} or {lower + 4}."
        )
    return n


def num_latents(num_frames: int) -> int:
    """Latent frames of a ``num_frames`` (``4k + 1``) pixel video: ``(num_frames - 1) // 4 + 1`` (81 -> 21)."""
    return num_latents_for_frames(check_num_frames(num_frames))


def _is_finite_number(value: Any) -> bool:
    """An int (always finite, however large) or a finite float; not a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _short_number(value: Any) -> str:
    """``1e+09``, ``12.5``; a huge int as its first digits and its length."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


def _limit_text() -> str:
    return f"{(MAX_NUM_FRAMES - 1) / 16 / 60:g} minutes at 16 fps"


def frames_for_seconds(seconds: float, fps: int = DEFAULT_FPS, what: str = "seconds") -> int:
    """Valid frame count (``4k + 1``, at least 1) nearest to ``seconds * fps``: 5 s -> 81, 30 s -> 481.

    Raises :class:`TimelineError` (naming ``what``) for a negative or non-finite length and for one longer than
    :data:`~framecap_core.limits.MAX_NUM_FRAMES` frames, before anything is computed from it.
    """
    _check_fps(fps)
    if not _is_finite_number(seconds) or seconds < 0:
        raise TimelineError(f"{what} must be a finite number >= 0, got {seconds!r}.", field=what)
    if seconds * fps > MAX_NUM_FRAMES:
        raise TimelineError(
            f"{what}={_short_number(seconds)} is more than the limit of {MAX_NUM_FRAMES} frames "
            f"({(MAX_NUM_FRAMES - 1) / fps:g} s at {fps} fps); make the video shorter.",
            field=what,
        )
    return _nearest_valid(seconds * fps)


def check_seconds(seconds: Any, fps: int = DEFAULT_FPS, what: str = "seconds") -> int:
    """A video length a user asked for: at least one frame at ``fps`` and within the limit; returns its frame count.

    Unlike :func:`frames_for_seconds` (a conversion, where 0 s is the 1-frame video), 0 s or less is refused here:
    asking for a video of no length is a mistake, not a request for a still image.
    """
    frames = frames_for_seconds(seconds, fps, what)
    if seconds * fps < 1:
        raise TimelineError(
            f"{what}={seconds!r} is too short for a video at {fps} fps (less than one frame); give at least "
            f"{1 / fps:g} s, e.g. 5 s (81 frames).",
            field=what,
        )
    return frames


def _check_fps(fps: Any) -> int:
    if isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= MAX_FPS:
        raise TimelineError(f"fps must be a whole number from 1 to {MAX_FPS} (Wan uses 16), got {fps!r}.", field="fps")
    return fps


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(str(text)[: 4 * limit].split())  # a long caption is cut anyway: never split all of it
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    mark = "'" if '"' in text else '"'  # keep a quoted snippet like "0": "a fox" readable
    return f"{mark}{text}{mark}"


# --------------------------------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class Scene:
    """One caption over pixel frames ``[start, end)`` (end exclusive)."""

    start: int
    end: int
    caption: str

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TimelineError(f"Scene {name} must be an int pixel frame, got {value!r}.")
        if not isinstance(self.caption, str):
            raise TimelineError(f"Scene caption must be a string, got {type(self.caption).__name__}.")

    @property
    def num_frames(self) -> int:
        return self.end - self.start

    def describe(self, number: int) -> str:
        """``scene 2 ("a cat", start=6, end=17)`` — how errors name this scene (``number`` is 1-based)."""
        return f"scene {number} ({_quote(self.caption)}, start={self.start}, end={self.end})"


@dataclass
class Timeline:
    """Scenes covering a ``num_frames`` (``4k + 1``) pixel video, validated on construction.

    Canonical JSON: ``{"fps": 16, "num_frames": 81, "negative": "", "scenes": [{"start", "end", "caption"}, ...]}``.
    """

    scenes: list[Scene]
    num_frames: int
    fps: int = DEFAULT_FPS
    negative: str = ""
    _latent_indices: list[int] = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.scenes = list(self.scenes)
        self.validate()

    # -- validation -----------------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`TimelineError` naming the first scene at fault and the fix."""
        self.num_frames = check_num_frames(self.num_frames)
        _check_fps(self.fps)
        if not isinstance(self.negative, str):
            raise TimelineError(f"negative must be a string (the negative prompt), got {type(self.negative).__name__}.")
        check_text_length(self.negative, "The negative prompt", MAX_CAPTION_CHARS, _CAPTION_HINT, TimelineError)
        if not self.scenes:
            raise TimelineError("The timeline has no scenes; give at least one caption.")
        _check_scene_count(len(self.scenes))
        n = self.num_frames
        prev: Scene | None = None
        for number, scene in enumerate(self.scenes, 1):
            if not isinstance(scene, Scene):
                raise TimelineError(
                    f"scene {number} is a {type(scene).__name__}, not a Scene; build scenes with "
                    f"Scene(start, end, caption) or use Timeline.from_dict / parse_timeline."
                )
            where = scene.describe(number)
            check_text_length(scene.caption, where.capitalize(), MAX_CAPTION_CHARS, _CAPTION_HINT, TimelineError)
            if not scene.caption.strip():
                raise TimelineError(f"{where} has an empty caption; write what happens in it or remove the scene.")
            if scene.end <= scene.start:
                raise TimelineError(
                    f"{where} ends at or before its start; make end > start (end is exclusive: "
                    f"start=0, end=16 is the first 16 frames)."
                )
            if scene.start < 0:
                raise TimelineError(f"{where} starts before frame 0; make it start at 0 or later.")
            if scene.end > n:
                raise TimelineError(
                    f"{where} runs past the end of the video (num_frames={n}); end it at {n} or earlier, "
                    f"or make the video longer."
                )
            if prev is None:
                if scene.start != 0:
                    raise TimelineError(
                        f"{where} is the first scene but starts at frame {scene.start}; frames 0-{scene.start - 1} "
                        f"would have no caption. Make it start at 0."
                    )
            elif scene.start > prev.end:
                raise TimelineError(
                    f"Gap before {where}: frames {prev.end}-{scene.start - 1} have no caption (scene {number - 1} "
                    f"ends at {prev.end}). Make scene {number} start at {prev.end} or scene {number - 1} end at "
                    f"{scene.start}."
                )
            elif scene.start < prev.end:
                raise TimelineError(
                    f"{where} overlaps scene {number - 1} (which ends at {prev.end}); scenes must be in order and "
                    f"must not overlap. Make scene {number} start at {prev.end}."
                )
            prev = scene
        if prev.end != n:
            raise TimelineError(
                f"Frames {prev.end}-{n - 1} have no caption: the last scene, {prev.describe(len(self.scenes))}, ends "
                f"before the end of the video (num_frames={n}). End it at {n}."
            )
        self._latent_indices = _latent_indices(self.scenes, n)
        owned = set(self._latent_indices)
        for number, scene in enumerate(self.scenes, 1):
            if number - 1 not in owned:
                raise TimelineError(
                    f"{scene.describe(number)} is too short to own a latent frame (each latent covers 4 pixel "
                    f"frames and takes the caption of most of them), so its caption would never be used. Make it "
                    f"at least 4 frames long or merge it into a neighbour."
                )

    # -- properties -----------------------------------------------------------------------------------------------

    @property
    def num_latents(self) -> int:
        return num_latents_for_frames(self.num_frames)

    @property
    def duration_seconds(self) -> float:
        """Playback length, ``num_frames / fps`` (81 frames at 16 fps = 5.0625 s)."""
        return self.num_frames / self.fps

    # -- per-latent views ---------------------------------------------------------------------------------------

    def latent_caption_indices(self) -> list[int]:
        """Scene index of each latent frame (``num_latents`` entries, non-decreasing), by majority of its 4 frames."""
        return list(self._latent_indices)

    def latent_captions(self) -> list[str]:
        """Caption of each latent frame."""
        return [self.scenes[i].caption for i in self._latent_indices]

    def unique_captions(self) -> list[str]:
        """Distinct captions in order of first appearance (a caption repeated across scenes is encoded once)."""
        return list(dict.fromkeys(scene.caption for scene in self.scenes))

    def latent_unique_indices(self) -> list[int]:
        """Index into :meth:`unique_captions` of each latent frame."""
        position = {caption: i for i, caption in enumerate(self.unique_captions())}
        return [position[self.scenes[i].caption] for i in self._latent_indices]

    def scene_latent_spans(self) -> list[tuple[int, int]]:
        """``(first, last)`` latent of each scene, both inclusive."""
        spans: dict[int, list[int]] = {}
        for latent, scene in enumerate(self._latent_indices):
            spans.setdefault(scene, [latent, latent])[1] = latent
        return [tuple(spans[i]) for i in range(len(self.scenes))]  # type: ignore[misc]

    def summary(self) -> str:
        """One line per scene (seconds, frames, latents, caption), for dry runs and logs."""
        lines = [
            f"{self.num_frames} frames ({self.duration_seconds:.2f} s at {self.fps} fps), {self.num_latents} latents"
        ]
        for number, (scene, (first, last)) in enumerate(zip(self.scenes, self.scene_latent_spans()), 1):
            lines.append(
                f"  {number:>2}. {scene.start / self.fps:7.2f}s-{scene.end / self.fps:7.2f}s  frames [{scene.start}, "
                f"{scene.end})  latents {first}-{last}  {scene.caption}"
            )
        return "\n".join(lines)

    # -- (de)serialisation --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "fps": self.fps,
            "num_frames": self.num_frames,
            "negative": self.negative,
            "scenes": [{"start": s.start, "end": s.end, "caption": s.caption} for s in self.scenes],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, num_frames: int | None = None, fps: int = DEFAULT_FPS) -> Timeline:
        """Build from canonical JSON data; ``num_frames`` / ``fps`` are used only where ``data`` lacks them."""
        if not isinstance(data, dict):
            raise TimelineError(f'A canonical timeline is a JSON object with "scenes", got {type(data).__name__}.')
        unknown = set(data) - {"fps", "num_frames", "negative", "scenes"}
        if unknown:
            raise TimelineError(
                f"Unknown timeline field(s) {sorted(unknown)}; a canonical timeline has only fps, num_frames, "
                f"negative and scenes."
            )
        raw_scenes = data.get("scenes")
        if not isinstance(raw_scenes, list) or not raw_scenes:
            raise TimelineError('The timeline needs a non-empty "scenes" list of {"start", "end", "caption"} objects.')
        _check_scene_count(len(raw_scenes))
        scenes = []
        for number, raw in enumerate(raw_scenes, 1):
            if not isinstance(raw, dict):
                raise TimelineError(
                    f"scene {number} ({_quote(json.dumps(raw))}) is not an object; write it as "
                    f'{{"start": 0, "end": 48, "caption": "..."}}.'
                )
            missing = [k for k in ("start", "end", "caption") if k not in raw]
            if missing:
                raise TimelineError(
                    f"scene {number} ({_quote(json.dumps(raw, ensure_ascii=False))}) lacks {', '.join(missing)}; "
                    f"every scene needs start, end (pixel frames, end exclusive) and caption."
                )
            extra = set(raw) - {"start", "end", "caption"}
            if extra:
                raise TimelineError(
                    f"scene {number} has unknown field(s) {sorted(extra)}; a scene has only start, end and caption."
                )
            caption = raw["caption"]
            if not isinstance(caption, str):
                raise TimelineError(f"scene {number}: caption must be a string, got {caption!r}.")
            bounds = []
            for key in ("start", "end"):
                value = raw[key]
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TimelineError(
                        f"scene {number} ({_quote(caption)}): {key}={value!r} is not a whole pixel frame; "
                        f"use an integer frame index."
                    )
                bounds.append(value)
            scenes.append(Scene(bounds[0], bounds[1], caption.strip()))
        n = data.get("num_frames", num_frames)
        if n is None:
            n = scenes[-1].end
        negative = data.get("negative", "")
        if negative is None:
            negative = ""
        return cls(scenes=scenes, num_frames=n, fps=data.get("fps", fps), negative=negative)

    @classmethod
    def from_json(cls, text: str) -> Timeline:
        """Inverse of :meth:`to_json` (canonical JSON only; :func:`parse_timeline` reads every syntax)."""
        check_text_length(text, "The timeline JSON", MAX_TIMELINE_CHARS, _TIMELINE_HINT, TimelineError)
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except RecursionError:
            raise TimelineError(_TOO_DEEP) from None
        except json.JSONDecodeError as exc:
            raise TimelineError(
                f"The timeline JSON is invalid at line {exc.lineno} column {exc.colno}: {exc.msg}. Fix the JSON "
                f"(quotes, commas, brackets)."
            ) from None
        return cls.from_dict(data)


def negative_prompt(timeline: Timeline, override: str | None = None) -> str:
    """The negative prompt of a run: ``override`` when given (even ""), else the timeline's ``negative`` when set,
    else :data:`DEFAULT_NEGATIVE`."""
    if override is not None:
        return override
    return timeline.negative or DEFAULT_NEGATIVE


def _latent_indices(scenes: list[Scene], num_frames: int) -> list[int]:
    """Scene index per latent, by :func:`~framecap_core.grid.latent_owners` (majority of its frames, ties to the
    earlier scene)."""
    starts = [s.start for s in scenes]
    return latent_owners([bisect_right(starts, frame) - 1 for frame in range(num_frames)])


# --------------------------------------------------------------------------------------------------------------------
# Parsing


_TIME = r"(?:\d+:\d{2}:\d{2}(?:\.\d+)?|\d+:\d{2}(?:\.\d+)?|\d+(?:\.\d+)?\s*s(?:ec(?:onds?)?)?\b|\d+(?:\.\d+)?)"
_SPAN_RE = re.compile(rf"^\s*({_TIME})\s*(?:(?:-|–|to)\s*({_TIME})\s*)?:(.*)$", re.S)
# A span line without brackets must give its first time a unit (5s) or m:ss, or it would read as a keyframe.
_BARE_SPAN_RE = re.compile(
    rf"^\s*(?:\d+(?:\.\d+)?\s*s(?:ec(?:onds?)?)?\b|\d+:\d{{2}}(?::\d{{2}})?(?:\.\d+)?)\s*(?:(?:-|–|to)\s*{_TIME}\s*)?:"
)
# "[5s-8s: ...]", "[0:05: ...]", even "[8-9: ...]" (to report the missing unit); not "[cinematic] a fox runs".
_BRACKET_SPAN_RE = re.compile(rf"\[\s*{_TIME}\s*(?:-|–|to|:)")
_KEY_START_RE = re.compile(r"""^\s*\{?\s*(["']?)-?\d+(?:\.\d+)?\1\s*:""")
_FILE_SUFFIXES = (".json", ".txt")


def _parse_time(token: str, where: str) -> float:
    token = token.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*s(?:ec(?:onds?)?)?", token)
    if m:
        return float(m.group(1))
    parts = token.split(":")
    if len(parts) in (2, 3) and all(parts):
        total = 0.0
        for part in parts:
            total = total * 60 + float(part)
        return total
    raise TimelineError(
        f"{where}: the time {_quote(token)} has no unit; write seconds as 5s or 5.5s, or minutes as 0:05."
    )


@functools.lru_cache(maxsize=2)
def _line_starts(text: str) -> list[int]:
    """Offset of the first character of every line (cached: error messages name lines of the same text often)."""
    return [0] + [m.end() for m in re.finditer("\n", text)]


def _line_of(text: str, pos: int) -> int:
    """1-based line of character ``pos``, in O(log lines)."""
    return bisect_right(_line_starts(text), pos)


def _resolve_length(end_frame: int, num_frames: int | None, fps: int, where: str, end_s: float) -> int:
    """Frame count of a timeline whose spans end at ``end_frame``; with ``num_frames`` the two must agree."""
    if end_frame > MAX_NUM_FRAMES:
        raise TimelineError(
            f"{where} ends the timeline at {_short_number(end_s)} s, more than the limit of {MAX_NUM_FRAMES} frames "
            f"({(MAX_NUM_FRAMES - 1) / fps:g} s at {fps} fps); make the video shorter."
        )
    if num_frames is None:
        return _nearest_valid(end_frame)
    if abs(end_frame - num_frames) > _SNAP_FRAMES:
        raise TimelineError(
            f"{where} ends the timeline at {end_s:g}s (frame {end_frame}) but the video has num_frames={num_frames} "
            f"({num_frames / fps:g}s at {fps} fps). End it at {num_frames / fps:g}s, leave its end open "
            f"([start: ...]), or leave num_frames unset to use the timeline's own length."
        )
    return num_frames


def _scenes_from_boundaries(
    starts: list[int], captions: list[str], num_frames: int, wheres: list[str], fps: int
) -> list[Scene]:
    """Scenes from sorted start frames (the last runs to ``num_frames``), with errors naming the entry at fault."""
    scenes = []
    for i, (start, caption, where) in enumerate(zip(starts, captions, wheres)):
        end = starts[i + 1] if i + 1 < len(starts) else num_frames
        if start >= num_frames:
            raise TimelineError(
                f"{where} starts at frame {start}, outside the video (num_frames={num_frames}, {num_frames / fps:g}s "
                f"at {fps} fps); move it before frame {num_frames} or make the video longer."
            )
        if end <= start:
            raise TimelineError(f"{where} lasts less than one frame at {fps} fps; lengthen it or remove it.")
        scenes.append(Scene(start, end, caption))
    return scenes


def _clean_caption(caption: Any, where: str) -> str:
    if not isinstance(caption, str):
        raise TimelineError(f"{where}: the caption must be text, got {caption!r}.")
    caption = caption.strip()
    if not caption:
        raise TimelineError(f"{where} has an empty caption; write what happens there or remove it.")
    return caption


def _need_length(kind: str, num_frames: int | None) -> int:
    if num_frames is None:
        raise TimelineError(
            f"This {kind} timeline does not say how long the video is; pass num_frames (4k+1, e.g. 81 = 5 s at 16 fps) "
            f"or a length in seconds, or write the timeline in seconds ([0s-5s: ...])."
        )
    return check_num_frames(num_frames)


# -- keyframes -------------------------------------------------------------------------------------------------------


def _keyframe_frame(key: str, num_frames: int, where: str) -> int:
    key = key.strip()
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", key):
        raise TimelineError(
            f"{where}: the key {_quote(key)} is not a frame; use a pixel frame (48), a fraction of the video (0.5) "
            f"or a negative frame counted from the end (-16)."
        )
    negative = key.startswith("-")
    magnitude = key.lstrip("-")
    if "." in magnitude:
        fraction = float(magnitude)
        if fraction >= 1:
            raise TimelineError(
                f"{where}: {key} has a decimal point so it is read as a fraction of the video, which must be below 1; "
                f"write {int(fraction)} (no decimal point) for a frame index."
            )
        offset = math.floor(fraction * num_frames + 0.5)
    else:
        offset = int(magnitude)
    frame = num_frames - offset if negative else offset
    if not 0 <= frame < num_frames:
        raise TimelineError(
            f"{where} is at frame {frame}, outside the video (frames 0-{num_frames - 1}); use a frame below "
            f"{num_frames}, a fraction like 0.5, or a negative frame counted from the end."
        )
    return frame


def _from_keyframes(entries: list[tuple[str, Any, str]], num_frames: int | None, fps: int) -> Timeline:
    """``entries`` are (key, caption, where) in written order."""
    n = _need_length("keyframe", num_frames)
    if not entries:
        raise TimelineError('No keyframes found; write them as "0": "caption", "48": "caption".')
    starts, captions, wheres = [], [], []
    for key, caption, where in entries:
        frame = _keyframe_frame(str(key), n, where)
        captions.append(_clean_caption(caption, where))
        if starts and frame == starts[-1]:
            raise TimelineError(
                f"{where} is at frame {frame} like {wheres[-1]}; each frame can start only one caption. "
                f"Remove one of them or move it."
            )
        if starts and frame < starts[-1]:
            raise TimelineError(
                f"{where} (frame {frame}) comes after {wheres[-1]} (frame {starts[-1]}); list keyframes in "
                f"increasing frame order."
            )
        starts.append(frame)
        wheres.append(where)
    if starts[0] != 0:
        raise TimelineError(
            f"{wheres[0]} is the first keyframe but is at frame {starts[0]}; frames before it would have no "
            f'caption. Add a keyframe at "0" or move this one to 0.'
        )
    return Timeline(_scenes_from_boundaries(starts, captions, n, wheres, fps), num_frames=n, fps=fps)


def _scan_keyframes(text: str) -> list[tuple[str, str, str]]:
    """Read ``"0": "a", 48: b`` text leniently: quoted (JSON or single) or unquoted (to end of line) captions."""
    body = text.strip()
    offset = len(text) - len(text.lstrip())
    if body.startswith("{"):
        if not body.endswith("}"):
            raise TimelineError("The keyframes start with '{' but do not end with '}'; close the brace.")
        body, offset = body[1:-1], offset + 1
    key_re = re.compile(r"""\s*(["']?)([^"':,\n]*)\1\s*:\s*""")
    entries = []
    pos = 0
    decoder = json.JSONDecoder()
    while True:
        while pos < len(body) and (body[pos].isspace() or body[pos] == ","):
            pos += 1
        if pos >= len(body):
            break
        number = len(entries) + 1
        _check_scene_count(number)
        line = _line_of(text, offset + pos)
        m = key_re.match(body, pos)
        line_end = body.find("\n", pos)
        snippet = body[pos : len(body) if line_end < 0 else line_end]
        if not m or not m.group(2).strip():
            raise TimelineError(
                f"keyframe {number} (line {line}: {_quote(snippet)}) is not a keyframe; write each one as "
                f'"48": "caption" (frame: caption).'
            )
        key = m.group(2).strip()
        pos = m.end()
        where = f"keyframe {number} (line {line}: {_quote(snippet)})"
        if pos < len(body) and body[pos] == '"':
            try:
                caption, pos = decoder.raw_decode(body, pos)
            except json.JSONDecodeError as exc:
                raise TimelineError(f"{where}: the caption's quotes are not closed ({exc.msg}); close them.") from None
        elif pos < len(body) and body[pos] == "'":
            close = body.find("'", pos + 1)
            if close < 0:
                raise TimelineError(f"{where}: the caption's quote is not closed; close it.")
            caption, pos = body[pos + 1 : close], close + 1
        else:
            close = body.find("\n", pos)
            close = len(body) if close < 0 else close
            caption, pos = body[pos:close].rstrip().rstrip(","), close
        entry = body[m.start() : pos].strip()
        entries.append((key, caption, f"keyframe {number} (line {line}: {_quote(entry)})"))
    return entries


# -- seconds ---------------------------------------------------------------------------------------------------------


def _scan_spans(text: str) -> list[tuple[str, str]]:
    """(span text, where) for each ``[...]`` span, or each non-empty line when there are no brackets."""
    spans = []
    if "[" in text:
        last = 0
        for m in re.finditer(r"\[([^\[\]]*)\]", text):
            stray = text[last : m.start()].strip()
            if stray:
                raise TimelineError(
                    f"Unexpected text {_quote(stray)} at line {_line_of(text, last)} between spans; put every caption "
                    f"inside a span like [5s-8s: caption]."
                )
            _check_scene_count(len(spans) + 1)
            spans.append(
                (m.group(1), f"span {len(spans) + 1} (line {_line_of(text, m.start())}: {_quote(m.group(0))})")
            )
            last = m.end()
        stray = text[last:].strip()
        if stray:
            raise TimelineError(
                f"Unexpected text {_quote(stray)} at line {_line_of(text, last)}; every span needs its brackets "
                f"closed, like [5s-8s: caption]."
            )
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                _check_scene_count(len(spans) + 1)
                spans.append((line, f"span {len(spans) + 1} (line {number}: {_quote(line)})"))
    return spans


def _from_seconds(text: str, num_frames: int | None, fps: int) -> Timeline:
    parsed = []  # (start_s, end_s | None, caption, where)
    for body, where in _scan_spans(text):
        m = _SPAN_RE.match(body)
        if not m:
            raise TimelineError(
                f"{where} is not a span; write [start-end: caption] like [0s-5s: a fox runs] or [5s: ...] "
                f"to run until the next span."
            )
        start_s = _parse_time(m.group(1), where)
        end_s = _parse_time(m.group(2), where) if m.group(2) else None
        caption = _clean_caption(m.group(3), where)
        if end_s is not None and end_s <= start_s:
            raise TimelineError(f"{where} ends at or before its start; the end time must be after the start.")
        parsed.append((start_s, end_s, caption, where))
    if not parsed:
        raise TimelineError("No spans found; write them as [0s-5s: caption] [5s-8s: caption].")
    starts: list[int] = []
    for i, (start_s, _, _, where) in enumerate(parsed):
        start = round(start_s * fps)
        if i == 0 and start != 0:
            raise TimelineError(
                f"{where} is the first span but starts at {start_s:g}s; the video would have no caption before it. "
                f"Start it at 0s."
            )
        if i > 0:
            prev_start_s, prev_end_s, _, prev_where = parsed[i - 1]
            if start_s < prev_start_s:
                raise TimelineError(
                    f"{where} starts at {start_s:g}s, before {prev_where} ({prev_start_s:g}s); list spans in time order."
                )
            if start == starts[-1]:
                raise TimelineError(
                    f"{where} starts at the same frame as {prev_where}; give each span its own start or remove one."
                )
            if prev_end_s is not None:
                prev_end = round(prev_end_s * fps)
                if start > prev_end:
                    raise TimelineError(
                        f"Gap before {where}: nothing covers {prev_end_s:g}s-{start_s:g}s (frames {prev_end}-"
                        f"{start - 1}). Start it at {prev_end_s:g}s or end {prev_where} at {start_s:g}s."
                    )
                if start < prev_end:
                    raise TimelineError(
                        f"{where} overlaps {prev_where}, which ends at {prev_end_s:g}s; start it at "
                        f"{prev_end_s:g}s or end the previous span at {start_s:g}s."
                    )
        starts.append(start)
    _, last_end_s, _, last_where = parsed[-1]
    if last_end_s is None:
        if num_frames is None:
            raise TimelineError(
                f"{last_where} has no end, so the video length is unknown; give it an end ([5s-8s: ...]) or pass "
                f"num_frames / a length in seconds."
            )
        n = check_num_frames(num_frames)
    else:
        if num_frames is not None:
            check_num_frames(num_frames)
        n = _resolve_length(round(last_end_s * fps), num_frames, fps, last_where, last_end_s)
    wheres = [p[3] for p in parsed]
    scenes = _scenes_from_boundaries(starts, [p[2] for p in parsed], n, wheres, fps)
    return Timeline(scenes, num_frames=n, fps=fps)


# -- equal split and durations ---------------------------------------------------------------------------------------


def _from_equal_split(captions: list[Any], wheres: list[str], num_frames: int | None, fps: int) -> Timeline:
    n = _need_length("equal-split", num_frames)
    captions = [_clean_caption(c, w) for c, w in zip(captions, wheres)]
    latents = num_latents_for_frames(n)
    if len(captions) > latents:
        raise TimelineError(
            f"{len(captions)} captions cannot share {latents} latent frames ({n} pixel frames); use at most "
            f"{latents} captions or a longer video."
        )
    # Caption i starts at latent round(i * L / k); latent j >= 1 starts at pixel frame 4j - 3.
    first_latents = [math.floor(i * latents / len(captions) + 0.5) for i in range(len(captions))]
    starts = [latent_start_frame(j) for j in first_latents]
    return Timeline(_scenes_from_boundaries(starts, captions, n, wheres, fps), num_frames=n, fps=fps)


def _from_durations(items: list[Any], num_frames: int | None, fps: int) -> Timeline:
    captions, seconds, wheres = [], [], []
    for number, item in enumerate(items, 1):
        where = f"entry {number} ({_quote(json.dumps(item, ensure_ascii=False, default=str))})"
        if isinstance(item, dict):
            unknown = set(item) - {"caption", "seconds"}
            if unknown or "caption" not in item or "seconds" not in item:
                raise TimelineError(
                    f'{where} must have exactly "caption" and "seconds", like {{"caption": "a fox", "seconds": 5}}.'
                )
            caption, secs = item["caption"], item["seconds"]
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            caption, secs = item
            if isinstance(caption, (int, float)) and isinstance(secs, str):
                caption, secs = secs, caption
        else:
            raise TimelineError(
                f'{where} is neither ["caption", seconds] nor {{"caption": ..., "seconds": ...}}; use one of those.'
            )
        if isinstance(secs, bool) or not isinstance(secs, (int, float)) or not math.isfinite(secs) or secs <= 0:
            raise TimelineError(f"{where}: the duration must be a number of seconds > 0, got {secs!r}.")
        captions.append(_clean_caption(caption, where))
        seconds.append(float(secs))
        wheres.append(where)
    if not captions:
        raise TimelineError("The list of captions is empty; give at least one [caption, seconds] pair.")
    starts, total = [], 0.0
    for secs in seconds:
        start = round(total * fps)
        if starts and start == starts[-1]:
            raise TimelineError(f"{wheres[len(starts) - 1]} lasts less than one frame at {fps} fps; lengthen it.")
        starts.append(start)
        total += secs
    if num_frames is not None:
        check_num_frames(num_frames)
    n = _resolve_length(round(total * fps), num_frames, fps, wheres[-1], total)
    return Timeline(_scenes_from_boundaries(starts, captions, n, wheres, fps), num_frames=n, fps=fps)


def _from_list(items: list[Any], num_frames: int | None, fps: int) -> Timeline:
    _check_scene_count(len(items))
    if items and all(isinstance(x, str) for x in items):
        return _from_equal_split(items, [f"part {i} ({_quote(c)})" for i, c in enumerate(items, 1)], num_frames, fps)
    return _from_durations(items, num_frames, fps)


# -- dispatch --------------------------------------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise TimelineError(
                f'The key "{key}" appears twice ({_quote(str(seen[key]))} and {_quote(str(value))}); each keyframe or '
                f"field may appear once. Remove or move one of them."
            )
        seen[key] = value
    return seen


def _from_mapping(data: dict[Any, Any], num_frames: int | None, fps: int) -> Timeline:
    if "scenes" in data:
        timeline = Timeline.from_dict(data, num_frames=num_frames, fps=fps)
        if num_frames is not None and timeline.num_frames != num_frames:
            raise TimelineError(
                f"The timeline says num_frames={timeline.num_frames} but num_frames={num_frames} was asked for; "
                f"change one of them, or leave num_frames unset to use the timeline's."
            )
        return timeline
    _check_scene_count(len(data))
    if not any(re.fullmatch(r"\s*-?\d+(?:\.\d+)?\s*", str(k)) for k in data):
        raise TimelineError(
            f"Unknown timeline object with keys {sorted(map(str, data))[:6]}; give a canonical timeline with "
            f'"scenes" (and fps, num_frames, negative) or keyframes like {{"0": "caption", "48": "caption"}}.'
        )
    entries = []
    for number, (key, caption) in enumerate(data.items(), 1):
        where = f"keyframe {number} ({_quote(f'{key}: {caption}')})"
        if isinstance(key, bool) or not isinstance(key, (str, int, float)):
            raise TimelineError(f"{where}: the key must be a frame number, like 48.")
        entries.append((str(key), caption, where))
    if not entries:
        raise TimelineError('The timeline is empty; give "scenes" or keyframes like {"0": "caption"}.')
    return _from_keyframes(entries, num_frames, fps)


def _read_file(path: Path) -> str:
    if not path.is_file():
        raise TimelineError(f"Timeline file {str(path)!r} does not exist; check the path.")
    try:
        size = path.stat().st_size
        if size > 4 * MAX_TIMELINE_CHARS:  # UTF-8 takes at most 4 bytes a character
            raise TimelineError(
                f"The timeline file {str(path)!r} is {size:,} bytes, far more than a timeline of at most "
                f"{MAX_TIMELINE_CHARS:,} characters; check that this is the timeline you meant."
            )
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TimelineError(f"Cannot read timeline file {str(path)!r} ({exc}); save it as UTF-8 text.") from None
    return check_text_length(text, f"The timeline file {str(path)!r}", MAX_TIMELINE_CHARS, _TIMELINE_HINT, TimelineError)


def _check_scene_count(count: int) -> None:
    if count > MAX_NUM_LATENTS:
        raise TimelineError(
            f"The timeline has more than {MAX_NUM_LATENTS} scenes, more than the longest video has latent frames "
            f"({MAX_NUM_FRAMES} frames), so most would never be shown; merge scenes."
        )


def _from_text(text: str, num_frames: int | None, fps: int) -> Timeline:
    check_text_length(text, "The timeline text", MAX_TIMELINE_CHARS, _TIMELINE_HINT, TimelineError)
    stripped = text.strip()
    if not stripped:
        raise TimelineError("The timeline is empty; write a caption, keyframes or spans (see framecap_core.timeline).")
    if stripped[0] in "{[":
        try:
            data = json.loads(stripped, object_pairs_hook=_no_duplicate_keys)
        except RecursionError:
            raise TimelineError(_TOO_DEEP) from None
        except json.JSONDecodeError as exc:
            # Broken JSON that is clearly JSON (canonical, or a list of lists / objects / strings): report it as such.
            if '"scenes"' in stripped or re.match(r'^\[\s*[\[{"]', stripped):
                raise TimelineError(
                    f"The timeline JSON is invalid at line {exc.lineno} column {exc.colno}: {exc.msg}. Fix the JSON "
                    f"(quotes, commas, brackets)."
                ) from None
        else:
            if isinstance(data, dict):
                return _from_mapping(data, num_frames, fps)
            if isinstance(data, list):
                return _from_list(data, num_frames, fps)
    if (stripped.startswith("[") and _BRACKET_SPAN_RE.search(stripped)) or _BARE_SPAN_RE.match(stripped):
        return _from_seconds(stripped, num_frames, fps)
    if _KEY_START_RE.match(stripped):
        return _from_keyframes(_scan_keyframes(text), num_frames, fps)
    if stripped.startswith("{"):
        raise TimelineError(
            f"Unknown timeline syntax at line 1: {_quote(stripped.splitlines()[0])}. Use keyframes "
            f'{{"0": "caption", "48": "caption"}}, spans [0s-5s: caption], or the canonical JSON with "scenes".'
        )
    if "|" in stripped:
        parts = stripped.split("|")
        _check_scene_count(len(parts))
        return _from_equal_split(parts, [f"part {i} ({_quote(p)})" for i, p in enumerate(parts, 1)], num_frames, fps)
    n = _need_length("single-caption", num_frames)
    return Timeline([Scene(0, n, stripped)], num_frames=n, fps=fps)


def parse_timeline(spec: Any, *, num_frames: int | None = None, fps: int = DEFAULT_FPS) -> Timeline:
    """Parse any accepted syntax (see the module docstring) into a validated :class:`Timeline`.

    Args:
        spec: a ``Timeline``, canonical ``dict``, list of (caption, seconds), text in any syntax, or a path
            (``str`` ending in ``.json`` / ``.txt``, or ``os.PathLike``) to a file holding one.
        num_frames: video length in pixel frames (``4k + 1``); required by keyframes, equal splits and single
            captions, optional (and checked) for the others. Use :func:`frames_for_seconds` to convert seconds.
        fps: frames per second, used to convert seconds; a canonical JSON's own ``fps`` wins.
    """
    _check_fps(fps)
    if num_frames is not None:
        check_num_frames(num_frames)
    if isinstance(spec, Timeline):
        if num_frames is not None and spec.num_frames != num_frames:
            raise TimelineError(
                f"The timeline has num_frames={spec.num_frames} but num_frames={num_frames} was asked for; rebuild "
                f"it for {num_frames} frames or leave num_frames unset."
            )
        return spec
    if isinstance(spec, os.PathLike):
        return _from_text(_read_file(Path(spec)), num_frames, fps)
    if isinstance(spec, str):
        one_line = spec.strip()
        # A path: one line ending in .json/.txt that exists, or has no spaces (then a missing file is reported);
        # "a man opens config.json" stays a caption.
        if "\n" not in one_line and one_line.lower().endswith(_FILE_SUFFIXES):
            path = Path(one_line).expanduser()
            if path.is_file() or " " not in one_line:
                return _from_text(_read_file(path), num_frames, fps)
        return _from_text(spec, num_frames, fps)
    if isinstance(spec, dict):
        return _from_mapping(spec, num_frames, fps)
    if isinstance(spec, (list, tuple)):
        return _from_list(list(spec), num_frames, fps)
    raise TimelineError(
        f"Cannot read a timeline from a {type(spec).__name__}; pass text, a dict, a list of (caption, seconds) or a "
        f"path to a .json / .txt file."
    )
