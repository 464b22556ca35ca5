"""The toy world: procedurally generated multi-scene videos with exact per-frame captions, and an oracle that reads
the captions back from pixels.

A frame is one coloured shape (circle, square or triangle) on a plain background, 64 x 64 pixels. A scene fixes the
four attributes — shape, shape colour, background colour, motion (left, right, up, down or still) — and its caption
says them in a fixed grammar::

    a red circle moves left on a blue background
    a white triangle stays still on a black background

Scenes change what (shape, colour), where (a new start position, a new background) and how (the motion). A
:class:`ToyStory` is a list of scenes with durations; :func:`render_story` draws its frames, and its
:class:`~framecap_core.timeline.Timeline` holds the exact caption of every frame.

The oracle (:func:`read_frame_attributes`, :func:`read_video_attributes`) works on pixels only: the background is
the most common colour on the border, the shape colour the dominant colour of the pixels far from the background, the
shape class is the shape that, drawn at the mask's centroid, overlaps the mask best (intersection over union; a
blurred square still matches a square better than a circle, where a bounding-box fill ratio would not), the motion
from the centroid track over neighbouring frames. :class:`OracleEmbedder` turns attributes into vectors (one block of
one-hot per attribute plus a constant component), so the cosine similarity of a caption and a frame is an affine
function of how many attributes they agree on and the paper's metrics run on toy videos.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .grid import latent_start_frame, num_latents_for_frames
from .timeline import Scene, Timeline

__all__ = [
    "ATTRIBUTE_VALUES",
    "BACKGROUNDS",
    "COLOURS",
    "FRAME_SIZE",
    "MOTIONS",
    "SHAPES",
    "TOY_WORDS",
    "OracleEmbedder",
    "ToyScene",
    "ToyStory",
    "attribute_agreement",
    "caption",
    "parse_caption",
    "random_story",
    "read_frame_attributes",
    "read_video_attributes",
    "render_story",
    "scene_hold",
    "scene_speed",
    "story_text",
    "track_steps",
]

FRAME_SIZE = 64
SHAPE_SIZE = 20  # bounding box side in pixels
SPEED = 1.5  # pixels per frame for a moving shape: 6 a latent frame, a third of the shape
STILL_SPEED = 0.3  # the oracle reads a slower centroid track as still (a 129-frame scene still moves 0.31)
MARGIN = SHAPE_SIZE / 2 + 2  # closest a shape's centre comes to the frame's edge
TRAVEL_RANGE = FRAME_SIZE - 2 * MARGIN  # how far a shape can move and stay whole in the frame

# Saturated, far-apart colours (so a VAE's small errors and noise never move a pixel to another colour's nearest).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 60),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
BACKGROUNDS = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle")
MOTIONS: dict[str, tuple[float, float]] = {  # (dx, dy) per frame, y grows downwards
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
}
ATTRIBUTES = ("shape", "colour", "background", "motion")
ATTRIBUTE_VALUES: dict[str, list[str]] = {"shape": list(SHAPES), "colour": list(COLOURS), "background": list(BACKGROUNDS),
                                      "motion": list(MOTIONS)}

# Every word a toy caption uses (the toy tokenizer's vocabulary); other words are dropped by the toy tokenizer.
TOY_WORDS = tuple(dict.fromkeys(
    ["a", "moves", "stays", "on", "background", *SHAPES, *COLOURS, *MOTIONS]
))


# --------------------------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------------------------


def scene_speed(frames: int) -> float:
    """Pixels per frame of a moving shape in a scene of ``frames`` frames: ``SPEED``, or slower in a scene too long
    to cross the frame at that speed (over 27 frames), so the shape stays whole in the frame to the scene's end."""
    return min(SPEED, TRAVEL_RANGE / max(frames - 1, 1))


@dataclass(frozen=True)
class ToyScene:
    shape: str
    colour: str
    background: str
    motion: str
    frames: int = 16  # duration in pixel frames
    x: float = 32.0  # start centre
    y: float = 32.0

    def attributes(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "background": self.background, "motion": self.motion}

    @property
    def speed(self) -> float:
        return scene_speed(self.frames)

    @property
    def caption(self) -> str:
        return caption(self.shape, self.colour, self.background, self.motion)


def caption(shape: str, colour: str, background: str, motion: str) -> str:
    """``a red circle moves left on a blue background`` / ``... stays still on ...``."""
    how = "stays still" if motion == "still" else f"moves {motion}"
    return f"a {colour} {shape} {how} on a {background} background"


_WORD = re.compile(r"[a-z]+")


def parse_caption(text: str) -> dict[str, str | None]:
    """Attributes named in a caption (any wording): the colour word just before a shape word is the shape's colour,
    the colour word before ``background`` the background; a motion word after ``moves``/``move``/``moving`` (or
    ``still``) the motion. Missing attributes are ``None``. Several sentences: the first mention wins."""
    words = _WORD.findall(text.lower())
    out: dict[str, str | None] = dict.fromkeys(ATTRIBUTES)
    for i, w in enumerate(words):
        if w in SHAPES and out["shape"] is None:
            out["shape"] = w
            if i > 0 and words[i - 1] in COLOURS and out["colour"] is None:
                out["colour"] = words[i - 1]
        elif w in ("background", "backdrop") and i > 0 and words[i - 1] in COLOURS and out["background"] is None:
            out["background"] = words[i - 1]
        elif w == "still" and out["motion"] is None:
            out["motion"] = "still"
        elif w in ("left", "right", "up", "down") and out["motion"] is None and i > 0 and words[i - 1] in (
            "moves", "move", "moving", "goes", "drifts", "slides"
        ):
            out["motion"] = w
    return out


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"[.;\n]+", text) if _WORD.search(s)]


# --------------------------------------------------------------------------------------------------------------------
# Stories and rendering
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ToyStory:
    scenes: list[ToyScene]
    fps: int = 16

    @property
    def num_frames(self) -> int:
        return sum(s.frames for s in self.scenes)

    def timeline(self) -> Timeline:
        """The exact per-frame captions as a canonical :class:`Timeline`."""
        out, start = [], 0
        for s in self.scenes:
            out.append(Scene(start, start + s.frames, s.caption))
            start += s.frames
        return Timeline(out, num_frames=start, fps=self.fps)

    def frame_attributes(self) -> list[dict[str, str]]:
        return [s.attributes() for s in self.scenes for _ in range(s.frames)]


def story_text(story: ToyStory) -> str:
    """The story as prose the prompt builders split back into scenes: ``A red circle ... Then a ... Finally a ...``."""
    parts = []
    n = len(story.scenes)
    for i, s in enumerate(story.scenes):
        lead = "" if i == 0 else ("Finally " if i == n - 1 and n > 2 else "Then ")
        sentence = s.caption
        parts.append((lead + sentence)[0].upper() + (lead + sentence)[1:] + ".")
    return " ".join(parts)


def _start_position(motion: str, frames: int, rng: np.random.Generator) -> tuple[float, float]:
    """A start centre that keeps the whole shape inside the frame for the scene's duration."""
    lo, hi = MARGIN, FRAME_SIZE - MARGIN
    dx, dy = MOTIONS[motion]
    travel = scene_speed(frames) * max(frames - 1, 0)

    def axis(d: float) -> float:
        if d > 0:
            return rng.uniform(lo, hi - travel)
        if d < 0:
            return rng.uniform(lo + travel, hi)
        return rng.uniform(lo, hi)

    return float(axis(dx)), float(axis(dy))


def random_scene(
    rng: np.random.Generator, frames: int, previous: ToyScene | None = None, *, changes: int | None = None
) -> ToyScene:
    """A scene of ``frames`` frames. After ``previous``, 1-3 of the four attributes change (what, where, how) and
    the shape always starts somewhere new."""
    def pick(options: Sequence[str], avoid: Sequence[str] = ()) -> str:
        opts = [o for o in options if o not in avoid]
        return str(opts[int(rng.integers(len(opts)))])

    if previous is None:
        shape, colour, motion = pick(SHAPES), pick(list(COLOURS)), pick(list(MOTIONS))
        background = pick(BACKGROUNDS, [colour])
    else:
        k = int(changes if changes is not None else rng.integers(1, 4))
        which = set(rng.permutation(ATTRIBUTES)[:k].tolist())
        shape = pick(SHAPES, [previous.shape]) if "shape" in which else previous.shape
        motion = pick(list(MOTIONS), [previous.motion]) if "motion" in which else previous.motion
        colour = pick(list(COLOURS), [previous.colour]) if "colour" in which else previous.colour
        background = pick(BACKGROUNDS, [previous.background]) if "background" in which else previous.background
        if background == colour:  # keep the shape visible
            if "background" in which or "colour" not in which:
                background = pick(BACKGROUNDS, [colour, previous.background])
            else:
                colour = pick(list(COLOURS), [background, previous.colour])
    x, y = _start_position(motion, frames, rng)
    return ToyScene(shape, colour, background, motion, frames, x, y)


def random_story(
    seed: int | np.random.Generator = 0,
    *,
    num_frames: int = 49,
    num_scenes: int | tuple[int, int] = (2, 4),
    min_scene_frames: int = 12,
    fps: int = 16,
) -> ToyStory:
    """A random story of ``num_frames`` frames (4k + 1) split into scenes whose boundaries fall on latent boundaries
    (pixel frame ``4j - 3`` starts latent ``j``), so every latent frame has one exact caption."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if (num_frames - 1) % 4:
        raise ValueError(f"num_frames must be 4k + 1, got {num_frames}")
    latents = num_latents_for_frames(num_frames)
    if isinstance(num_scenes, tuple):
        num_scenes = int(rng.integers(num_scenes[0], num_scenes[1] + 1))
    min_lat = max(1, -(-min_scene_frames // 4))
    num_scenes = max(1, min(num_scenes, latents // min_lat))
    # cut points between latents 1..latents-1, at least min_lat apart
    while True:
        cuts = sorted(rng.choice(np.arange(1, latents), size=num_scenes - 1, replace=False).tolist()) if num_scenes > 1 else []
        bounds = [0, *cuts, latents]
        if all(b - a >= min_lat for a, b in zip(bounds[:-1], bounds[1:], strict=False)):
            break
    pix = [0] + [latent_start_frame(c) for c in cuts] + [num_frames]
    scenes: list[ToyScene] = []
    for a, b in zip(pix[:-1], pix[1:], strict=False):
        scenes.append(random_scene(rng, b - a, scenes[-1] if scenes else None))
    return ToyStory(scenes, fps=fps)


def story_from_timeline(timeline: Timeline, seed: int = 0) -> ToyStory:
    """A toy story drawing ``timeline``'s captions (attributes parsed from each caption; unnamed ones random)."""
    rng = np.random.default_rng(seed)
    scenes: list[ToyScene] = []
    for s in timeline.scenes:
        attrs = parse_caption(s.caption)
        base = random_scene(rng, s.num_frames)
        scene = replace(base, **{k: v for k, v in attrs.items() if v is not None})
        x, y = _start_position(scene.motion, s.num_frames, rng)
        scenes.append(replace(scene, x=x, y=y))
    return ToyStory(scenes, fps=timeline.fps)


def _shape_mask(shape: str, cx: float, cy: float, size: float = SHAPE_SIZE, ss: int = 4) -> np.ndarray:
    """Anti-aliased coverage ``[H, W]`` in [0, 1] (``ss`` x ``ss`` supersampling)."""
    n = FRAME_SIZE * ss
    coords = (np.arange(n) + 0.5) / ss
    xx, yy = np.meshgrid(coords, coords)
    h = size / 2
    if shape == "circle":
        m = (xx - cx) ** 2 + (yy - cy) ** 2 <= h * h
    elif shape == "square":
        m = (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
    elif shape == "triangle":  # apex up, base at the bottom of the bounding box
        t = (yy - (cy - h)) / size  # 0 at apex, 1 at base
        m = (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= t * h)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    return m.reshape(FRAME_SIZE, ss, FRAME_SIZE, ss).mean(axis=(1, 3))


def render_frame(shape: str, colour: str, background: str, cx: float, cy: float) -> np.ndarray:
    """One ``[64, 64, 3]`` uint8 frame."""
    cov = _shape_mask(shape, cx, cy)[..., None]
    fg = np.array(COLOURS[colour], np.float32)
    bg = np.array(COLOURS[background], np.float32)
    return np.clip(np.round(bg * (1 - cov) + fg * cov), 0, 255).astype(np.uint8)


def render_story(story: ToyStory) -> np.ndarray:
    """All frames of ``story``: ``[T, 64, 64, 3]`` uint8."""
    frames = []
    for s in story.scenes:
        dx, dy = MOTIONS[s.motion]
        for k in range(s.frames):
            frames.append(render_frame(s.shape, s.colour, s.background, s.x + s.speed * dx * k, s.y + s.speed * dy * k))
    return np.stack(frames)


# --------------------------------------------------------------------------------------------------------------------
# Oracle: attributes from pixels
# --------------------------------------------------------------------------------------------------------------------

_PALETTE = np.array(list(COLOURS.values()), np.float32)  # [C, 3]
_NAMES = list(COLOURS)


def _nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` -> index of the nearest palette colour."""
    d = ((rgb[..., None, :].astype(np.float32) - _PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


@dataclass
class FrameReading:
    shape: str | None
    colour: str | None
    background: str
    centroid: tuple[float, float] | None  # (x, y)
    match: float  # intersection over union of the mask and the chosen shape drawn at its centroid (0 if no shape)
    area: int = 0  # pixels of the shape's mask (0 if no shape)

    def attributes(self) -> dict[str, str | None]:
        return {"shape": self.shape, "colour": self.colour, "background": self.background}


def read_frame_attributes(frame: np.ndarray, min_pixels: int = 20) -> FrameReading:
    """Shape, colours and centroid of one ``[H, W, 3]`` frame (uint8 or float 0..1) from its pixels."""
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        arr = np.clip(np.asarray(arr, np.float32) * 255.0, 0, 255)
    arr = arr.astype(np.float32)
    labels = _nearest_colour(arr)  # [H, W]
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    bg = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    # pixels clearly away from the background colour (half the distance to the nearest other palette colour)
    bg_rgb = _PALETTE[bg]
    others = np.delete(_PALETTE, bg, axis=0)
    gap = np.sqrt(((others - bg_rgb) ** 2).sum(-1)).min()
    dist = np.sqrt(((arr - bg_rgb) ** 2).sum(-1))
    mask = dist > gap / 2
    if mask.sum() < min_pixels:
        return FrameReading(None, None, _NAMES[bg], None, 0.0)
    # the largest blob is the shape; stray pixels (noise, artefacts) are ignored by keeping the dominant colour
    fg_labels = labels[mask]
    fg_labels = fg_labels[fg_labels != bg]
    if fg_labels.size == 0:
        return FrameReading(None, None, _NAMES[bg], None, 0.0)
    fg = int(np.bincount(fg_labels, minlength=len(_NAMES)).argmax())
    # the shape: pixels at least halfway from the background colour to the shape colour (as the renderer's
    # half-coverage edge), so the mask has the drawn size whatever the two colours are (this alone also keeps the
    # pixels at least half the palette gap from the background)
    fg_rgb = _PALETTE[fg]
    along = ((arr - bg_rgb) * (fg_rgb - bg_rgb)).sum(-1) / ((fg_rgb - bg_rgb) ** 2).sum()
    shape_mask = along >= 0.5
    if shape_mask.sum() < min_pixels:
        return FrameReading(None, _NAMES[fg], _NAMES[bg], None, 0.0)
    ys, xs = np.nonzero(shape_mask)
    cx, cy = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5  # pixel centres, in the renderer's coordinates
    shape, match = _best_matching_shape(shape_mask, cx, cy)
    return FrameReading(shape, _NAMES[fg], _NAMES[bg], (float(xs.mean()), float(ys.mean())), match,
                        int(shape_mask.sum()))


def _centroid_offset(shape: str) -> tuple[float, float]:
    """Where a shape's area centroid lies relative to the centre of its bounding box (the renderer's ``cx, cy``)."""
    return (0.0, SHAPE_SIZE / 6) if shape == "triangle" else (0.0, 0.0)  # a triangle's centroid is 2/3 to its base


@functools.cache
def _centred_template(shape: str, qx: int, qy: int) -> np.ndarray:
    """``shape`` drawn with its bounding box centred at ``(32 + qx / 4, 32 + qy / 4)``: ``[64, 64]`` bool (coverage
    at least one half). Quarter-pixel offsets, so any position is a cached template plus a whole-pixel shift."""
    half = FRAME_SIZE / 2
    return _shape_mask(shape, half + qx / 4, half + qy / 4) >= 0.5


def _shifted(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``mask`` moved by whole pixels, zeros shifted in."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0),
                                                                      max(-dx, 0):w - max(dx, 0)]
    return out


def _best_matching_shape(mask: np.ndarray, cx: float, cy: float, search: int = 1) -> tuple[str, float]:
    """The shape, drawn at full size with its centroid at ``cx, cy`` (or up to ``search`` pixels away, for blobs whose
    centroid is a little off), with the highest intersection over union with ``mask``."""
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        ox, oy = _centroid_offset(shape)
        qx, qy = round((cx - ox) * 4), round((cy - oy) * 4)  # bounding-box centre in quarter pixels
        base = _centred_template(shape, qx % 4, qy % 4)
        for dy in range(-search, search + 1):
            for dx in range(-search, search + 1):
                template = _shifted(base, qx // 4 - FRAME_SIZE // 2 + dx, qy // 4 - FRAME_SIZE // 2 + dy)
                iou = float((template & mask).sum() / max((template | mask).sum(), 1))
                if iou > best_iou:
                    best, best_iou = shape, iou
    return best, best_iou


def _motion_at(readings: list[FrameReading], t: int, radius: int, still_speed: float) -> str | None:
    """Motion at frame ``t`` from the centroid displacements in ``[t - radius, t + radius]`` (mean per-frame step).
    Steps across a scene cut are ignored: both frames must read as frame ``t`` does, and jumps over 6 pixels are
    dropped."""
    steps = []
    key = readings[t].attributes()
    for k in range(max(0, t - radius), min(len(readings) - 1, t + radius)):
        a, b = readings[k].centroid, readings[k + 1].centroid
        if a is None or b is None or readings[k].attributes() != key or readings[k + 1].attributes() != key:
            continue
        dx, dy = b[0] - a[0], b[1] - a[1]
        if abs(dx) + abs(dy) > 6:
            continue
        steps.append((dx, dy))
    if not steps:
        return None
    d = np.array(steps)
    mx, my = float(d[:, 0].mean()), float(d[:, 1].mean())
    if max(abs(mx), abs(my)) < still_speed:
        return "still"
    if abs(mx) >= abs(my):
        return "right" if mx > 0 else "left"
    return "down" if my > 0 else "up"


def _as_array(frames: Any) -> np.ndarray:
    """A video ``[T, H, W, 3]`` (tensor or array-like) as a numpy array."""
    return frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)


def read_video_attributes(
    frames: Any, *, radius: int = 4, still_speed: float | None = None
) -> list[dict[str, str | None]]:
    """Per-frame attributes of a video ``[T, H, W, 3]``: the frame reading plus the motion of the centroid track."""
    arr = _as_array(frames)
    readings = [read_frame_attributes(f) for f in arr]
    still = STILL_SPEED if still_speed is None else still_speed
    out = []
    for t, r in enumerate(readings):
        attrs = r.attributes()
        attrs["motion"] = _motion_at(readings, t, radius, still)
        out.append(attrs)
    return out


def track_steps(frames: Any, truth: list[dict[str, str | None]], *, back: float = 1.0) -> dict[str, float | None]:
    """How a video's shape moves from frame to frame where its caption says it moves: over consecutive frame pairs
    of ``frames`` ``[T, H, W, 3]`` within one scene (the same caption attributes in ``truth``, one dict per frame as
    ``parse_caption`` gives) that name a direction, the share whose centroid advances along it by more than
    ``STILL_SPEED`` (``forward``), goes back by more than ``back`` pixels (``back``) or neither (``level``); ``pairs``
    counts them (the shares are None without any). A toy video moves forward in every such pair; a model that carries
    the shape's position only a few frames draws a sawtooth: forward, then a jump back."""
    arr = _as_array(frames)
    if len(truth) != len(arr):
        raise ValueError(f"{len(truth)} captions for {len(arr)} frames: give one per frame")
    centroids = [read_frame_attributes(f).centroid for f in arr]
    counts = {"forward": 0, "level": 0, "back": 0}
    for t in range(1, len(arr)):
        a, b, motion = centroids[t - 1], centroids[t], truth[t]["motion"]
        if truth[t - 1] != truth[t] or motion not in MOTIONS or motion == "still" or a is None or b is None:
            continue
        ux, uy = MOTIONS[motion]
        along = (b[0] - a[0]) * ux + (b[1] - a[1]) * uy
        counts["forward" if along > STILL_SPEED else ("back" if along < -back else "level")] += 1
    pairs = sum(counts.values())
    return {**{k: v / pairs if pairs else None for k, v in counts.items()}, "pairs": pairs}


def scene_hold(frames: Any, story: ToyStory, *, edge: int = 8, min_frames: int = 48) -> dict[str, float]:
    """How well a video keeps, to the end of each long scene, the shape it drew at the scene's start: the property
    in which a sampler's error accumulates (a sliding window or FIFO re-reads its own output, so a shape that starts
    to change keeps changing). Measured against the video itself, not the caption: a shape drawn wrong from the
    start and kept is held.

    For every scene of at least ``min_frames`` frames, from one latent (4 frames) after its cut to its end:
    ``identity_hold`` is the share of frames whose shape and shape colour read as the scene's first ``edge`` frames
    mostly do; ``size_drift`` is ``|A_last - A_first| / max(A_first, A_last)`` with ``A`` the mean shape area (mask
    pixels) over the first and the last ``edge`` frames (0: same size, 1: the shape appeared or vanished). Means over
    those scenes, ``nan`` when the story has none. ``frames``: ``[T, H, W, 3]`` as ``story`` times them."""
    arr = _as_array(frames)
    if len(arr) != story.num_frames:
        raise ValueError(f"the video has {len(arr)} frames, the story {story.num_frames}")
    holds, drifts, start = [], [], 0
    for scene in story.scenes:
        begin, end = start + 4, start + scene.frames
        start = end
        if scene.frames < min_frames:
            continue
        readings = [read_frame_attributes(f) for f in arr[begin:end]]
        identity = [(r.shape, r.colour) for r in readings]
        first = Counter(identity[:edge]).most_common(1)[0][0]  # ties: the earliest reading, in any process
        holds.append(float(np.mean([i == first for i in identity])))
        a_first = float(np.mean([r.area for r in readings[:edge]]))
        a_last = float(np.mean([r.area for r in readings[-edge:]]))
        drifts.append(abs(a_last - a_first) / max(a_first, a_last, 1.0))
    if not holds:
        return {"identity_hold": float("nan"), "size_drift": float("nan")}
    return {"identity_hold": float(np.mean(holds)), "size_drift": float(np.mean(drifts))}


def attribute_agreement(read: dict[str, str | None], truth: dict[str, str | None]) -> dict[str, bool]:
    """Which attributes of ``truth`` (those it names) ``read`` matches."""
    return {k: read.get(k) == v for k, v in truth.items() if v is not None}


# --------------------------------------------------------------------------------------------------------------------
# Oracle embedder
# --------------------------------------------------------------------------------------------------------------------

_BLOCKS = ATTRIBUTE_VALUES
_OFFSETS = {}
_dim = 1  # component 0 is the constant
for _k, _v in _BLOCKS.items():
    _OFFSETS[_k] = _dim
    _dim += len(_v)
ORACLE_DIM = _dim


def attribute_vector(attrs: dict[str, str | None]) -> np.ndarray:
    """``[ORACLE_DIM]``: 1 in component 0, and a one-hot per named attribute."""
    v = np.zeros(ORACLE_DIM, np.float32)
    v[0] = 1.0
    for k, options in _BLOCKS.items():
        value = attrs.get(k)
        if value in options:
            v[_OFFSETS[k] + options.index(value)] = 1.0
    return v


class OracleEmbedder:
    """The toy world's exact embedder: texts are parsed (:func:`parse_caption`), frames read from pixels
    (:func:`read_video_attributes`), both mapped by :func:`attribute_vector`. For a full caption and a frame where
    all four attributes are read, ``cos = (1 + agreements) / 5``: 1 when they match, 0.2 when nothing does (the
    constant keeps similarities positive, as Confusion Degree's normalization needs). A multi-sentence text (a whole
    story, eq. 2's ``P_g``) embeds as the mean of its sentences' vectors; a video as the mean over 8 uniformly
    sampled frames."""

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for text in texts:
            sentences = _sentences(text) or [text]
            out.append(np.mean([attribute_vector(parse_caption(s)) for s in sentences], axis=0))
        return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, ORACLE_DIM)

    def embed_frames(self, frames: Any) -> torch.Tensor:
        return torch.from_numpy(np.stack([attribute_vector(a) for a in read_video_attributes(frames)]))

    def embed_video(self, frames: Any) -> torch.Tensor:
        from .metrics import sample_frame_indices

        emb = self.embed_frames(frames)
        idx = sample_frame_indices(len(emb))
        unit = emb[idx] / emb[idx].norm(dim=1, keepdim=True)
        return unit.mean(0)
