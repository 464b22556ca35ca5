"""Reading source videos: probing, decoding chosen frames, a clip's training frames resized and center-cropped."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .manifest import ClipRecord


def _resize_center_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale ``[H, W, 3]`` uint8 to cover ``height x width`` (aspect kept), then center-crop to it."""
    from PIL import Image

    h, w = frame.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    image = Image.fromarray(frame)
    if (new_h, new_w) != (h, w):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))


def read_video_frames(path: str | os.PathLike, indices: Iterable[int]) -> dict[int, np.ndarray]:
    """Frames at ``indices`` of a video: ``{index: [H, W, 3] uint8}``.

    Indices are visited in increasing order; ffmpeg reads forward over short gaps and seeks over long ones, so a
    few clips of a long video cost about their own length. Raises :class:`DatasetError` for an unreadable file or
    one that ends early.
    """
    import imageio.v2 as imageio

    wanted = sorted(set(int(i) for i in indices))
    frames: dict[int, np.ndarray] = {}
    try:
        reader = imageio.get_reader(os.fspath(path), "ffmpeg")
    except Exception as exc:
        raise DatasetError(f"Cannot open video {str(path)!r}: {exc}.") from None
    try:
        for i in wanted:
            frames[i] = np.asarray(reader.get_data(i))[..., :3]
    except IndexError:
        raise DatasetError(
            f"Video {str(path)!r} ended before frame {i} ({len(frames)} of {len(wanted)} frames decoded); it is "
            f"truncated or reports a wrong length."
        ) from None
    except Exception as exc:
        raise DatasetError(f"Cannot decode video {str(path)!r} at frame {i} ({exc}); the file may be corrupt.") from None
    finally:
        reader.close()
    return frames


def read_clip_frames(record: ClipRecord, root: str | os.PathLike, height: int, width: int) -> np.ndarray:
    """The training frames of a clip, resized and center-cropped: ``[F, height, width, 3]`` uint8.

    Reads ``record.clip_path`` (relative to ``root``, the manifest's folder) when set, which must hold exactly the
    training frames; otherwise decodes ``record.frame_indices`` from the source video.
    """
    if record.clip_path:
        path = Path(root) / record.clip_path
        frames_by_index = read_video_frames(path, range(record.num_frames))
        frames = [frames_by_index[i] for i in range(record.num_frames)]
    else:
        source = Path(record.source)
        if not source.is_absolute():
            source = Path(root) / source
        by_index = read_video_frames(source, record.frame_indices)
        frames = [by_index[i] for i in record.frame_indices]
    return np.stack([_resize_center_crop(f, height, width) for f in frames])


VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


@dataclass
class VideoInfo:
    path: str
    fps: float
    num_frames: int
    width: int
    height: int
    name: str = ""  # path relative to the source folder (see find_named_videos); the file name when empty

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame rate, frame count and size of a video, or :class:`DatasetError` if it cannot be read."""
    import imageio.v2 as imageio

    try:
        reader = imageio.get_reader(os.fspath(path), "ffmpeg")
        try:
            meta = reader.get_meta_data()
        finally:
            reader.close()
    except Exception as exc:
        raise DatasetError(f"Cannot read video {str(path)!r} ({str(exc).splitlines()[0] if str(exc) else exc!r}).") from None
    fps = float(meta.get("fps") or 0)
    duration = float(meta.get("duration") or 0)
    size = meta.get("size") or (0, 0)
    if not (fps > 0 and duration > 0 and math.isfinite(duration)):
        raise DatasetError(f"Video {str(path)!r} reports fps={fps} and duration={duration}; it is not a usable video.")
    return VideoInfo(str(path), fps, int(math.floor(duration * fps + 1e-6)), int(size[0]), int(size[1]))


def find_videos(inputs: Iterable[str | os.PathLike], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Video files under ``inputs`` (files or folders, searched recursively), sorted by :func:`find_named_videos`'s
    names, without repeats."""
    return list(find_named_videos(inputs, extensions))


def find_named_videos(inputs: Iterable[str | os.PathLike],
                      extensions: Sequence[str] = VIDEO_EXTENSIONS) -> dict[Path, str]:
    """Video files under ``inputs``, each with its *name*: the path relative to the folder it was found in (``/``
    separators), or the file name for a file given directly. Names, not absolute paths, identify a video, so the same
    videos under another folder or mount point get the same names (and clip ids). Ordered by name."""
    found: dict[Path, str] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for p in path.rglob("*"):
                if p.is_file() and p.suffix.lower() in extensions:
                    found.setdefault(p, p.relative_to(path).as_posix())
        elif path.is_file():
            found.setdefault(path, path.name)
        else:
            raise DatasetError(f"{str(path)!r} is neither a video file nor a folder.")
    return dict(sorted(found.items(), key=lambda kv: (kv[1], str(kv[0]))))
