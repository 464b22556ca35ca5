"""The files of a finished generation: ``VIDEO.mp4``, ``VIDEO.timeline.json`` and ``VIDEO.storyboard.png``.

One writer that ``framecap generate`` and the ComfyUI save node both call, so the names, the order and the
storyboard's frame per scene are the same everywhere. Every file is written to a temporary name beside its final
one, and the set replaces the previous files together (:func:`framecap_core.fileio.atomic_paths`). Needs numpy, PIL and imageio-ffmpeg, not torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .video import storyboard_path

__all__ = ["WrittenFiles", "scene_frames", "storyboard_path", "timeline_path", "write_outputs"]


def timeline_path(video_path: str | os.PathLike) -> Path:
    """``out/video.mp4`` -> ``out/video.timeline.json``."""
    video = Path(video_path)
    return video.with_name(video.stem + ".timeline.json")


def scene_frames(frames: Any, timeline) -> list[Any]:
    """The frame the storyboard shows for each scene of ``timeline``: its middle pixel frame (``frames [T, ...]``)."""
    last = frames.shape[0] - 1
    return [frames[min((scene.start + scene.end - 1) // 2, last)] for scene in timeline.scenes]


@dataclass(frozen=True)
class WrittenFiles:
    """Paths written by :func:`write_outputs` (None for a file not written)."""

    video: Path
    timeline: Path | None
    storyboard: Path | None

    def paths(self) -> list[Path]:
        return [p for p in (self.video, self.timeline, self.storyboard) if p is not None]


def write_outputs(
    frames: Any,
    video_path: str | os.PathLike,
    *,
    fps: int,
    timeline=None,
    storyboard: bool = True,
    window_spans: Sequence[tuple[int, int]] = (),
    title: str | None = None,
    legend: Mapping[str, Any] | None = None,
) -> WrittenFiles:
    """Write the mp4, then (with a ``timeline``) its timeline JSON and, if ``storyboard``, its storyboard PNG.

    Args:
        frames: ``[T, H, W, 3]`` uint8 or float in ``[0, 1]`` (numpy or torch).
        video_path: the ``.mp4`` to write; the other files go beside it.
        fps: frames per second of the mp4.
        timeline: the :class:`~framecap_core.timeline.Timeline` of these frames (None: the mp4 only).
        storyboard: also draw the storyboard (needs ``timeline``, whose length must match the frames).
        window_spans: ``(start, end)`` latents of each window, drawn under the timeline.
        title: the storyboard's heading (default ``"FrameCap: <video file name>"``).
        legend: settings shown at the bottom of the storyboard.
    """
    from .fileio import atomic_paths
    from .video import frames_to_uint8, render_storyboard, write_mp4

    array = frames_to_uint8(frames)
    video = Path(video_path)
    storyboard = storyboard and timeline is not None
    if storyboard and timeline.num_frames != array.shape[0]:
        raise ConfigError(
            f"The timeline has {timeline.num_frames} frames but the video {array.shape[0]}; connect the timeline (or "
            "latent) of this video, or turn storyboard off."
        )
    written = WrittenFiles(video, timeline_path(video) if timeline is not None else None,
                           storyboard_path(video) if storyboard else None)
    # The files of one run are replaced together: a run killed while encoding or drawing leaves the previous set
    # whole (or, killed between the renames, the next write in the folder finishes them).
    with atomic_paths(written.paths()) as staged:
        write_mp4(array, staged[0], fps=fps)
        if timeline is not None:
            staged[1].write_text(timeline.to_json() + "\n", encoding="utf-8")
        if storyboard:
            render_storyboard(timeline, window_spans=list(window_spans), scene_frames=scene_frames(array, timeline),
                              path=staged[2], title=title or f"FrameCap: {video.name}", settings=legend)
    return written
