"""Writing results: the mp4 and the storyboard image.

- :func:`write_mp4` encodes frames with imageio-ffmpeg (H.264, ``yuv420p`` so every player opens it). Odd sizes are
  padded by one replicated row / column (``yuv420p`` needs even sizes) instead of being resized.
- :func:`render_storyboard` draws one PNG that explains a generation at a glance: the timeline as a coloured bar
  (one colour per scene, numbered), the scene captions (wrapped, with their time spans), the PMWD windows under the
  bar on the same latent axis (one row per window, so overlaps are visible), one decoded frame per scene, and a
  legend with the settings.

Both write through :func:`framecap_core.fileio.atomic_path`: an interrupted write never leaves a half file under
the final name. This module needs numpy, PIL and imageio-ffmpeg, not torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .fileio import atomic_path

__all__ = ["frames_to_uint8", "read_mp4", "render_storyboard", "storyboard_path", "write_mp4"]


def frames_to_uint8(frames: Any) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 from uint8 frames, or from float frames in ``[0, 1]`` (rounded, clipped).

    Accepts numpy arrays or torch tensors (moved to the CPU). A single frame ``[H, W, 3]`` becomes ``[1, H, W, 3]``.
    """
    if hasattr(frames, "detach"):  # torch tensor, without importing torch
        frames = frames.detach().float().cpu().numpy() if frames.dtype.is_floating_point else frames.detach().cpu().numpy()
    array = np.asarray(frames)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 1:
        raise ConfigError(
            f"frames must be [T, H, W, 3] (RGB, at least one frame), got shape {array.shape}; decode the latents "
            "with the VAE first."
        )
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ConfigError("frames contain NaN or inf; the decoded video is not finite (try float32 or bfloat16).")
        return np.ascontiguousarray(np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8))
    raise ConfigError(f"frames must be uint8 or float in [0, 1], got dtype {array.dtype}.")


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Replicate the last row / column when height / width is odd (``yuv420p`` subsamples chroma by 2)."""
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def write_mp4(frames: Any, path: str | os.PathLike, fps: int = 16, *, quality: float = 8.0) -> Path:
    """Encode ``frames`` into an H.264 mp4 (``yuv420p``) at ``fps``, atomically.

    Args:
        frames: ``[T, H, W, 3]`` uint8, or float in ``[0, 1]`` (numpy or torch).
        path: output file (``.mp4``); parent folders are created.
        fps: frames per second (Wan: 16).
        quality: imageio-ffmpeg quality, 0 (worst) .. 10 (best, near lossless); 8 is visually clean.

    Returns:
        the final path. Odd heights / widths are padded to even by replicating the last row / column.
    """
    import imageio_ffmpeg

    array = _pad_even(frames_to_uint8(frames))
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0:
        raise ConfigError(f"fps must be a positive number, got {fps!r}; Wan videos play at 16.")
    if not 0 <= quality <= 10:
        raise ConfigError(f"quality must be in [0, 10], got {quality}; use 8 for a clean video.")
    _, h, w, _ = array.shape
    final = Path(path)
    with atomic_path(final) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (w, h),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=quality,
            macro_block_size=1,  # sizes are already even; never let the writer rescale
            output_params=["-movflags", "+faststart"],
        )
        writer.send(None)  # start the generator
        try:
            for frame in array:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()
    return final


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """Decode an mp4 back to ``[T, H, W, 3]`` uint8 (for tests and previews)."""
    import imageio.v3 as iio

    return np.asarray(iio.imread(str(path), plugin="pyav" if _has_pyav() else "FFMPEG", index=None))


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def storyboard_path(video_path: str | os.PathLike) -> Path:
    """``out/video.mp4`` -> ``out/video.storyboard.png``."""
    video = Path(video_path)
    return video.with_name(video.stem + ".storyboard.png")


# --------------------------------------------------------------------------------------------------------------------
# Storyboard
# --------------------------------------------------------------------------------------------------------------------

# Colour-blind-friendly qualitative palette (Okabe-Ito, plus a few muted extras), cycled over scenes.
_PALETTE = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167),
    (153, 153, 153), (170, 210, 120), (200, 170, 240), (250, 190, 170), (120, 200, 200),
)
_BG = (250, 250, 248)
_INK = (30, 30, 30)
_MUTED = (110, 110, 110)


def _font(size: int, bold: bool = False):
    from PIL import ImageFont

    names = ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf") if bold else ("DejaVuSans.ttf",)
    for name in names:
        for folder in ("", "/usr/share/fonts/truetype/dejavu/"):
            try:
                return ImageFont.truetype(folder + name, size)
            except OSError:
                continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _text_width(draw, text: str, font) -> float:
    return draw.textlength(text, font=font)


# The storyboard shows at most this much of a long timeline; the timeline JSON beside it has everything.
_MAX_CAPTION_LINES = 4
_MAX_SCENE_ROWS = 48
_MAX_THUMBNAILS = 24
_MAX_WINDOW_ROWS = 64
_MAX_LEGEND_LINES = 6
_MAX_CHARS_PER_LINE = 400  # more than the widest line holds at the smallest font


def _wrap(draw, text: str, font, width: float, max_lines: int | None = None) -> list[str]:
    """Greedy word wrap to ``width`` pixels (long words are hard-split); with ``max_lines``, at most that many
    lines, the last ending in an ellipsis when text was left out (only the text that can show is measured)."""
    if max_lines is not None:
        clipped = text[: max_lines * _MAX_CHARS_PER_LINE]
        lines = _wrap(draw, clipped, font, width)
        if len(lines) <= max_lines and len(clipped) == len(text):
            return lines
        lines = lines[:max_lines]
        last = lines[-1]
        while last and _text_width(draw, last + " …", font) > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + " …"
        return lines
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if _text_width(draw, candidate, font) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while _text_width(draw, word, font) > width and len(word) > 1:
                cut = max(1, int(len(word) * width / _text_width(draw, word, font)) - 1)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return _INK if luminance > 140 else (255, 255, 255)


def _fmt_seconds(seconds: float) -> str:
    minutes, sec = divmod(seconds, 60)
    return f"{int(minutes)}:{sec:04.1f}" if minutes else f"{sec:.1f}s"


@dataclass(frozen=True)
class _Layout:
    """Where everything of a storyboard goes, computed once; every section is drawn from it, and the canvas height is
    the sum of the section heights, so measuring and drawing cannot disagree. Lengths in pixels."""

    width: int
    margin: int = 28
    title_h: int = 40  # title line and its gap
    head_h: int = 22  # a section heading
    bar_h: int = 34  # the timeline bar
    ticks_h: int = 26  # under the bar: 2 px gap, tick marks and their labels
    window_head_h: int = 26
    window_row_h: int = 14  # one row per window (thinner with many windows)
    window_row_gap: int = 3
    window_more_h: int = 20  # "... n more windows" under the drawn rows
    window_tail_h: int = 10
    caption_head_h: int = 30
    caption_x: int = 210  # captions start here, right of the "n  0.0s-3.2s / lat a-b" column
    line_h: int = 20  # a caption line
    caption_min_lines: int = 2  # every scene row holds its time and latent spans
    caption_gap: int = 6
    scenes_more_h: int = 24  # "... n more scenes" under the listed ones
    thumb_head_h: int = 30
    thumb_gap: int = 12
    thumb_label_h: int = 30  # colour strip and caption under each thumbnail
    thumbs_per_row: int = 1
    thumb_w: int = 0
    thumb_h: int = 0
    legend_top: int = 6
    legend_line_h: int = 18
    caption_lines: tuple[tuple[str, ...], ...] = ()  # of the listed scenes (at most _MAX_SCENE_ROWS)
    num_scenes: int = 0
    num_windows: int = 0
    drawn_windows: int = 0  # at most _MAX_WINDOW_ROWS
    num_thumbs: int = 0
    legend_lines: tuple[str, ...] = ()

    @property
    def inner(self) -> int:
        return self.width - 2 * self.margin

    @property
    def caption_width(self) -> int:
        return self.inner - self.caption_x

    @property
    def thumb_rows(self) -> int:
        return -(-self.num_thumbs // self.thumbs_per_row) if self.num_thumbs else 0

    # -- section heights, in drawing order
    def timeline_height(self) -> int:
        return self.head_h + self.bar_h + self.ticks_h

    def windows_height(self) -> int:
        if not self.num_windows:
            return 0
        more = self.window_more_h if self.num_windows > self.drawn_windows else 0
        return (self.window_head_h + self.drawn_windows * (self.window_row_h + self.window_row_gap) + more
                + self.window_tail_h)

    def caption_row_height(self, lines: Sequence[str]) -> int:
        return max(self.caption_min_lines, len(lines)) * self.line_h + self.caption_gap

    def captions_height(self) -> int:
        more = self.scenes_more_h if self.num_scenes > len(self.caption_lines) else 0
        return self.caption_head_h + sum(self.caption_row_height(lines) for lines in self.caption_lines) + more

    def thumbs_height(self) -> int:
        return self.thumb_head_h + self.thumb_rows * (self.thumb_h + self.thumb_label_h) if self.num_thumbs else 0

    def legend_height(self) -> int:
        return self.legend_top + self.head_h + len(self.legend_lines) * self.legend_line_h if self.legend_lines else 0

    def height(self) -> int:
        return (self.margin + self.title_h + self.timeline_height() + self.windows_height() + self.captions_height()
                + self.thumbs_height() + self.legend_height() + self.margin)


def _layout(scratch, timeline, window_spans, first_frame, num_thumbs: int, settings, width: int) -> _Layout:
    """Measure the storyboard: wrapped captions and legend, window row height, thumbnail grid."""
    base = _Layout(width=width)
    fonts = _fonts()
    caption_lines = tuple(tuple(_wrap(scratch, s.caption, fonts.text, base.caption_width, _MAX_CAPTION_LINES))
                          for s in timeline.scenes[:_MAX_SCENE_ROWS])
    n_windows = len(window_spans)
    drawn = min(n_windows, _MAX_WINDOW_ROWS)
    row_h = base.window_row_h if n_windows <= 24 else max(4, 336 // drawn)
    legend_items = [f"{k}: {v}" for k, v in (settings or {}).items()]
    legend = (tuple(_wrap(scratch, "  |  ".join(legend_items), fonts.small, base.inner, _MAX_LEGEND_LINES))
              if legend_items else ())
    per_row, thumb_w, thumb_h = 1, 0, 0
    if num_thumbs:
        per_row = min(len(timeline.scenes), 6)
        thumb_w = min((base.inner - base.thumb_gap * (per_row - 1)) // per_row, 360)
        thumb_h = min(max(16, int(round(thumb_w * first_frame.shape[0] / first_frame.shape[1]))), 2 * thumb_w)
    return replace(base, window_row_h=row_h, thumbs_per_row=per_row, thumb_w=thumb_w, thumb_h=thumb_h,
                   caption_lines=caption_lines, num_scenes=len(timeline.scenes), num_windows=n_windows,
                   drawn_windows=drawn, num_thumbs=num_thumbs, legend_lines=legend)


@dataclass(frozen=True)
class _Fonts:
    title: Any
    head: Any
    text: Any
    small: Any


def _fonts() -> _Fonts:
    return _Fonts(_font(26, True), _font(17, True), _font(15), _font(13))


def render_storyboard(
    timeline,
    *,
    window_spans: Sequence[tuple[int, int]],
    scene_frames: Sequence[Any] | None,
    path: str | os.PathLike | None = None,
    title: str = "FrameCap storyboard",
    settings: Mapping[str, Any] | None = None,
    width: int = 1600,
):
    """Draw the storyboard of a generation and (if ``path`` is given) write it as a PNG, atomically.

    Args:
        timeline: the :class:`~framecap_core.timeline.Timeline` that was generated.
        window_spans: ``(start, end)`` latent indices of each window, end exclusive (PMWD windows, sliding-window
            chunks, ...); drawn one row per window on the timeline's latent axis. May be empty.
        scene_frames: one decoded frame per scene (``[H, W, 3]`` uint8 or float in [0, 1]), or None for no
            thumbnails. Its length must equal the number of scenes.
        path: where to write the PNG; None only returns the image.
        title: heading.
        settings: shown as the legend (``key: value``), e.g. method, steps, guidance, seed.
        width: image width in pixels.

    Returns:
        the ``PIL.Image.Image`` (RGB).
    """
    from PIL import Image, ImageDraw

    scenes = timeline.scenes
    num_latents = timeline.num_latents
    if scene_frames is not None and len(scene_frames) != len(scenes):
        raise ConfigError(f"scene_frames has {len(scene_frames)} frames for {len(scenes)} scenes; give one per scene.")
    for start, end in window_spans:
        if not 0 <= start < end <= num_latents:
            raise ConfigError(
                f"window span ({start}, {end}) is outside the timeline's {num_latents} latents; spans are latent "
                "indices (start, end) with end exclusive."
            )
    shown = scene_frames[:_MAX_THUMBNAILS] if scene_frames is not None else []
    frames = [frames_to_uint8(frame)[0] for frame in shown]
    scratch = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    layout = _layout(scratch, timeline, window_spans, frames[0] if frames else None, len(frames), settings, width)
    board = _Board(Image.new("RGB", (width, layout.height()), _BG), layout, timeline)

    y = board.title(layout.margin, title, len(window_spans))
    y = board.timeline_bar(y)
    y = board.windows(y, window_spans)
    y = board.captions(y)
    y = board.thumbnails(y, frames)
    y = board.legend(y)
    image = board.image
    if path is not None:
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
    return image


class _Board:
    """Draws the sections of a storyboard on ``image``, each from ``layout``; every method takes the section's top
    ``y`` and returns the next section's."""

    def __init__(self, image, layout: _Layout, timeline):
        from PIL import ImageDraw

        self.image, self.layout, self.timeline = image, layout, timeline
        self.draw = ImageDraw.Draw(image)
        self.fonts = _fonts()
        self.colour = [_PALETTE[i % len(_PALETTE)] for i in range(len(timeline.scenes))]
        self.spans = timeline.scene_latent_spans()

    def x_of(self, latent: float) -> float:
        return self.layout.margin + self.layout.inner * latent / self.timeline.num_latents

    def title(self, y: int, title: str, num_windows: int) -> int:
        lay, draw, f, tl = self.layout, self.draw, self.fonts, self.timeline
        draw.text((lay.margin, y), title, font=f.title, fill=_INK)
        subtitle = (
            f"{tl.num_frames} frames, {tl.duration_seconds:.2f} s at {tl.fps} fps, "
            f"{tl.num_latents} latents, {len(tl.scenes)} scenes, {num_windows} windows"
        )
        draw.text((lay.width - lay.margin - _text_width(draw, subtitle, f.small), y + 10), subtitle, font=f.small,
                  fill=_MUTED)
        return y + lay.title_h

    def timeline_bar(self, y: int) -> int:
        """The timeline as coloured scenes on the latent axis, numbered, with ticks (x axis = latent frames)."""
        lay, draw, f = self.layout, self.draw, self.fonts
        end = y + lay.timeline_height()
        draw.text((lay.margin, y), "Timeline (latent frames; numbers are scenes)", font=f.head, fill=_INK)
        y += lay.head_h
        for i, (first, last) in enumerate(self.spans):
            x0, x1 = self.x_of(first), self.x_of(last + 1)
            # at least 1 px per scene; no separating outline when scenes are too narrow for one to leave any colour
            draw.rectangle([x0, y, max(x0, x1 - 1), y + lay.bar_h], fill=self.colour[i],
                           outline=_BG if x1 - x0 >= 3 else None)
            label = str(i + 1)
            if _text_width(draw, label, f.text) + 4 <= x1 - x0:
                tw = _text_width(draw, label, f.text)
                draw.text(((x0 + x1 - tw) / 2, y + 8), label, font=f.text, fill=_text_colour(self.colour[i]))
        y += lay.bar_h + 2
        num_latents = self.timeline.num_latents
        tick_every = max(1, round(num_latents / 12))
        ticks = [t for t in range(0, num_latents, tick_every) if num_latents - t >= tick_every / 2] + [num_latents]
        for latent in ticks:
            x = self.x_of(latent)
            draw.line([x, y, x, y + 5], fill=_MUTED)
            label = f"{latent}"
            tw = _text_width(draw, label, f.small)
            draw.text((min(max(x - tw / 2, lay.margin), lay.width - lay.margin - tw), y + 6), label, font=f.small,
                      fill=_MUTED)
        return end

    def windows(self, y: int, window_spans: Sequence[tuple[int, int]]) -> int:
        """One row per window on the same axis, so overlaps are visible."""
        lay, draw, f = self.layout, self.draw, self.fonts
        if not window_spans:
            return y
        end = y + lay.windows_height()
        draw.text((lay.margin, y), f"Windows ({len(window_spans)}, latent spans; overlaps are averaged)", font=f.head,
                  fill=_INK)
        y += lay.window_head_h
        row_h = lay.window_row_h
        for start, stop in window_spans[: lay.drawn_windows]:
            x0, x1 = self.x_of(start), self.x_of(stop)
            # light guide across the full axis, then the window itself
            draw.line([lay.margin, y + row_h / 2, lay.width - lay.margin, y + row_h / 2], fill=(225, 225, 222))
            draw.rectangle([x0, y, max(x0, x1 - 1), y + row_h], fill=(90, 110, 160), outline=(50, 60, 100))
            if row_h >= 12:
                label = f"{start}-{stop - 1}"
                tw = _text_width(draw, label, f.small)
                if tw + 6 <= x1 - x0:
                    draw.text((x0 + 4, y - 1), label, font=f.small, fill=(255, 255, 255))
            y += row_h + lay.window_row_gap
        if len(window_spans) > lay.drawn_windows:
            draw.text((lay.margin, y), f"... {len(window_spans) - lay.drawn_windows} more windows", font=f.small,
                      fill=_MUTED)
        return end

    def captions(self, y: int) -> int:
        """Each scene: its colour, number, time and latent spans, and its wrapped caption."""
        lay, draw, f, tl = self.layout, self.draw, self.fonts, self.timeline
        draw.text((lay.margin, y), "Scenes", font=f.head, fill=_INK)
        y += lay.caption_head_h
        for i, (scene, lines) in enumerate(zip(tl.scenes, lay.caption_lines)):
            draw.rectangle([lay.margin, y + 2, lay.margin + 16, y + 18], fill=self.colour[i])
            draw.text((lay.margin + 24, y), f"{i + 1}", font=f.head, fill=_INK)
            first, last = self.spans[i]
            span = f"{_fmt_seconds(scene.start / tl.fps)}-{_fmt_seconds(scene.end / tl.fps)}"
            draw.text((lay.margin + 58, y + 1), span, font=f.small, fill=_MUTED)
            draw.text((lay.margin + 58, y + 17), f"lat {first}-{last}", font=f.small, fill=_MUTED)
            for j, line in enumerate(lines):
                draw.text((lay.margin + lay.caption_x, y + j * lay.line_h), line, font=f.text, fill=_INK)
            y += lay.caption_row_height(lines)
        if lay.num_scenes > len(lay.caption_lines):
            draw.text((lay.margin, y), f"... {lay.num_scenes - len(lay.caption_lines)} more scenes (all are in the "
                      "timeline JSON)", font=f.small, fill=_MUTED)
            y += lay.scenes_more_h
        return y

    def thumbnails(self, y: int, frames: Sequence[np.ndarray]) -> int:
        """One decoded frame per scene (its middle frame), with the scene's colour and caption under it."""
        from PIL import Image

        lay, draw, f = self.layout, self.draw, self.fonts
        if not frames:
            return y
        end = y + lay.thumbs_height()
        draw.text((lay.margin, y), "One decoded frame per scene", font=f.head, fill=_INK)
        y += lay.thumb_head_h
        for i, frame in enumerate(frames):
            img = Image.fromarray(frame)
            # nearest for tiny frames (keeps pixels crisp), bicubic for real ones
            resample = Image.NEAREST if img.width * 4 <= lay.thumb_w else Image.BICUBIC
            thumb = img.resize((lay.thumb_w, lay.thumb_h), resample)
            row, col = divmod(i, lay.thumbs_per_row)
            x = lay.margin + col * (lay.thumb_w + lay.thumb_gap)
            ty = y + row * (lay.thumb_h + lay.thumb_label_h)
            self.image.paste(thumb, (int(x), int(ty)))
            draw.rectangle([x, ty + lay.thumb_h + 2, x + lay.thumb_w - 1, ty + lay.thumb_h + 6], fill=self.colour[i])
            label = _wrap(draw, f"{i + 1}. {self.timeline.scenes[i].caption}"[:_MAX_CHARS_PER_LINE], f.small,
                          lay.thumb_w)[0]
            draw.text((x, ty + lay.thumb_h + 8), label, font=f.small, fill=_INK)
        return end

    def legend(self, y: int) -> int:
        """The settings, ``key: value`` separated by bars, wrapped."""
        lay, draw, f = self.layout, self.draw, self.fonts
        if not lay.legend_lines:
            return y
        end = y + lay.legend_height()
        y += lay.legend_top
        draw.text((lay.margin, y), "Settings", font=f.head, fill=_INK)
        y += lay.head_h
        for line in lay.legend_lines:
            draw.text((lay.margin, y), line, font=f.small, fill=_MUTED)
            y += lay.legend_line_h
        return end

