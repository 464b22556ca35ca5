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
    spans = timeline.scene_latent_spans()
    num_latents = timeline.num_latents
    if scene_frames is not None and len(scene_frames) != len(scenes):
        raise ConfigError(f"scene_frames has {len(scene_frames)} frames for {len(scenes)} scenes; give one per scene.")
    for start, end in window_spans:
        if not 0 <= start < end <= num_latents:
            raise ConfigError(
                f"window span ({start}, {end}) is outside the timeline's {num_latents} latents; spans are latent "
                "indices (start, end) with end exclusive."
            )

    margin = 28
    inner = width - 2 * margin
    f_title, f_head, f_text, f_small = _font(26, True), _font(17, True), _font(15), _font(13)
    scratch = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    line_h = 20
    colour = [_PALETTE[i % len(_PALETTE)] for i in range(len(scenes))]

    # ---- layout pass: measure everything, then draw on a canvas of the right height
    caption_col = inner - 210  # caption text right of a "12  0.0s-3.2s" column
    listed = scenes[:_MAX_SCENE_ROWS]
    caption_lines = [_wrap(scratch, scene.caption, f_text, caption_col, _MAX_CAPTION_LINES) for scene in listed]
    thumbs: list[Any] = []
    thumb_w = thumb_h = 0
    per_row = 1
    if scene_frames is not None and len(scene_frames):
        per_row = min(len(scenes), 6)
        gap = 12
        thumb_w = min((inner - gap * (per_row - 1)) // per_row, 360)
        first = frames_to_uint8(scene_frames[0])[0]
        thumb_h = max(16, int(round(thumb_w * first.shape[0] / first.shape[1])))
        thumb_h = min(thumb_h, 2 * thumb_w)
        for frame in scene_frames[:_MAX_THUMBNAILS]:
            img = Image.fromarray(frames_to_uint8(frame)[0])
            # nearest for tiny frames (keeps pixels crisp), bicubic for real ones
            resample = Image.NEAREST if img.width * 4 <= thumb_w else Image.BICUBIC
            thumbs.append(img.resize((thumb_w, thumb_h), resample))
    thumb_rows = -(-len(thumbs) // per_row) if thumbs else 0

    n_windows = len(window_spans)
    drawn_windows = list(window_spans[:_MAX_WINDOW_ROWS])
    row_h = 14 if n_windows <= 24 else max(4, 336 // min(n_windows, _MAX_WINDOW_ROWS))
    legend_items = [f"{k}: {v}" for k, v in (settings or {}).items()]
    legend_lines = (_wrap(scratch, "  |  ".join(legend_items), f_small, inner, _MAX_LEGEND_LINES)
                    if legend_items else [])

    bar_h = 34
    height = margin + 40  # title
    height += 22 + bar_h + 26  # axis labels + bar + ticks
    height += (26 + len(drawn_windows) * (row_h + 3) + 10 + (20 if n_windows > len(drawn_windows) else 0)
               if n_windows else 0)
    height += 30 + sum(max(2, len(lines)) * line_h + 6 for lines in caption_lines)
    height += 24 if len(scenes) > len(listed) else 0
    height += (30 + thumb_rows * (thumb_h + 30)) if thumbs else 0
    height += (26 + len(legend_lines) * 18) if legend_lines else 0
    height += margin

    image = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(image)
    y = margin
    draw.text((margin, y), title, font=f_title, fill=_INK)
    subtitle = (
        f"{timeline.num_frames} frames, {timeline.duration_seconds:.2f} s at {timeline.fps} fps, "
        f"{num_latents} latents, {len(scenes)} scenes, {n_windows} windows"
    )
    draw.text((width - margin - _text_width(draw, subtitle, f_small), y + 10), subtitle, font=f_small, fill=_MUTED)
    y += 40

    def x_of(latent: float) -> float:
        return margin + inner * latent / num_latents

    # ---- timeline bar (x axis = latent frames)
    draw.text((margin, y), "Timeline (latent frames; numbers are scenes)", font=f_head, fill=_INK)
    y += 22
    for i, (first, last) in enumerate(spans):
        x0, x1 = x_of(first), x_of(last + 1)
        # at least 1 px per scene; no separating outline when scenes are too narrow for one to leave any colour
        draw.rectangle([x0, y, max(x0, x1 - 1), y + bar_h], fill=colour[i], outline=_BG if x1 - x0 >= 3 else None)
        label = str(i + 1)
        if _text_width(draw, label, f_text) + 4 <= x1 - x0:
            tw = _text_width(draw, label, f_text)
            draw.text(((x0 + x1 - tw) / 2, y + 8), label, font=f_text, fill=_text_colour(colour[i]))
    y += bar_h + 2
    tick_every = max(1, round(num_latents / 12))
    ticks = [t for t in range(0, num_latents, tick_every) if num_latents - t >= tick_every / 2] + [num_latents]
    for latent in ticks:
        x = x_of(latent)
        draw.line([x, y, x, y + 5], fill=_MUTED)
        label = f"{latent}"
        tw = _text_width(draw, label, f_small)
        draw.text((min(max(x - tw / 2, margin), width - margin - tw), y + 6), label, font=f_small, fill=_MUTED)
    y += 24

    # ---- windows, one row each, on the same axis
    if n_windows:
        draw.text((margin, y), f"Windows ({n_windows}, latent spans; overlaps are averaged)", font=f_head, fill=_INK)
        y += 26
        for start, end in drawn_windows:
            x0, x1 = x_of(start), x_of(end)
            # light guide across the full axis, then the window itself
            draw.line([margin, y + row_h / 2, width - margin, y + row_h / 2], fill=(225, 225, 222))
            draw.rectangle([x0, y, max(x0, x1 - 1), y + row_h], fill=(90, 110, 160), outline=(50, 60, 100))
            if row_h >= 12:
                label = f"{start}-{end - 1}"
                tw = _text_width(draw, label, f_small)
                if tw + 6 <= x1 - x0:
                    draw.text((x0 + 4, y - 1), label, font=f_small, fill=(255, 255, 255))
            y += row_h + 3
        if n_windows > len(drawn_windows):
            draw.text((margin, y), f"... {n_windows - len(drawn_windows)} more windows", font=f_small, fill=_MUTED)
            y += 20
        y += 10

    # ---- captions
    draw.text((margin, y), "Scenes", font=f_head, fill=_INK)
    y += 30
    for i, (scene, lines) in enumerate(zip(listed, caption_lines)):
        draw.rectangle([margin, y + 2, margin + 16, y + 18], fill=colour[i])
        draw.text((margin + 24, y), f"{i + 1}", font=f_head, fill=_INK)
        first, last = spans[i]
        span = f"{_fmt_seconds(scene.start / timeline.fps)}-{_fmt_seconds(scene.end / timeline.fps)}"
        draw.text((margin + 58, y + 1), span, font=f_small, fill=_MUTED)
        draw.text((margin + 58, y + 17), f"lat {first}-{last}", font=f_small, fill=_MUTED)
        for j, line in enumerate(lines):
            draw.text((margin + 210, y + j * line_h), line, font=f_text, fill=_INK)
        y += max(2, len(lines)) * line_h + 6
    if len(scenes) > len(listed):
        draw.text((margin, y), f"... {len(scenes) - len(listed)} more scenes (all are in the timeline JSON)",
                  font=f_small, fill=_MUTED)
        y += 24

    # ---- thumbnails: one decoded frame per scene (its middle frame)
    if thumbs:
        draw.text((margin, y), "One decoded frame per scene", font=f_head, fill=_INK)
        y += 30
        for i, thumb in enumerate(thumbs):
            row, col = divmod(i, per_row)
            x = margin + col * (thumb_w + 12)
            ty = y + row * (thumb_h + 30)
            image.paste(thumb, (int(x), int(ty)))
            draw.rectangle([x, ty + thumb_h + 2, x + thumb_w - 1, ty + thumb_h + 6], fill=colour[i])
            label = _wrap(draw, f"{i + 1}. {scenes[i].caption}"[:_MAX_CHARS_PER_LINE], f_small, thumb_w)[0]
            draw.text((x, ty + thumb_h + 8), label, font=f_small, fill=_INK)
        y += thumb_rows * (thumb_h + 30)

    # ---- legend
    if legend_lines:
        y += 6
        draw.text((margin, y), "Settings", font=f_head, fill=_INK)
        y += 22
        for line in legend_lines:
            draw.text((margin, y), line, font=f_small, fill=_MUTED)
            y += 18

    image = image.crop((0, 0, width, min(height, y + margin)))
    if path is not None:
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
    return image

