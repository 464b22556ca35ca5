"""Frame-level training data: dataset construction, the JSON Lines manifest, the latent cache, the training dataset.

Three stages, each resumable and each writing only through atomic or append-and-fsync writes:

1. **Construction** (:func:`build_dataset`, paper section 3): long source videos (longer than
   ``min_duration_s``) are deduplicated by a perceptual hash, their first and last ``trim_fraction`` dropped, the
   rest split into ``num_segments`` segments with one ``clip_seconds`` clip from the middle of each; inside a clip
   every ``sample_every``-th frame at ``sample_fps`` is annotated (frames sent as images to Gemini with the shared
   annotation template, or captions brought with an annotations file). One manifest line per clip.
2. **Latent cache** (:func:`build_latent_cache`): each clip's training frames are read, resized and center-cropped,
   encoded by the Wan VAE into *normalized* latents ``(z - mean) / std`` (what the transformer sees), and the
   clip's unique captions are encoded once by the text encoder. Both go into safetensors shards plus an
   ``index.json``; training then never runs the VAE or UMT5.
3. **Training dataset** (:class:`LatentCache`): random crops of ``window_latents`` latent frames with the
   frame-major stacked caption context of frame-level attention.

Manifest line (one JSON object per clip)::

    {"clip_id": "walk-3f2a9c01-s2", "source": "/data/walk.mp4", "source_fps": 24.0, "segment": 2,
     "start_frame": 7128, "end_frame": 7320,            # clip span in source frames, end exclusive
     "sample_frames": [7128, 7136, ...],               # annotated source frames (every 8th at 24 fps)
     "captions": ["a man walks ...", ...],             # one per sample frame
     "global_caption": "a man walks his dog in a park",
     "fps": 16, "frame_indices": [7128, 7129, 7131, ...],   # source frame of every training frame (4k+1 of them)
     "clip_path": null}                                # or a file (relative to the manifest) holding those frames

Training frame ``i`` (at ``fps``) takes the caption of the sample frame nearest to it in time; latent ``j`` then
takes the caption of most of its pixel frames, through :meth:`framecap_core.timeline.Timeline.latent_caption_indices`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError, FrameCapError, TimelineError
from .fileio import atomic_path, atomic_write_text

__all__ = [
    "CACHE_INDEX",
    "BuildSummary",
    "CacheWriter",
    "ClipRecord",
    "DatasetConfig",
    "build_dataset",
    "find_videos",
    "gemini_annotator",
    "load_annotations",
    "merge_manifests",
    "phash",
    "plan_clips",
    "probe_video",
    "LatentCache",
    "ManifestWriter",
    "build_latent_cache",
    "cached_clip_ids",
    "clip_latent_captions",
    "read_clip_frames",
    "read_manifest",
]

CACHE_INDEX = "index.json"
CACHE_FORMAT = "framecap-latent-cache/1"
EMPTY_CAPTION_FILE = "empty_caption.safetensors"  # the empty caption's embedding, for caption dropout
MANIFEST_FORMAT = "framecap-manifest/1"


# --------------------------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ClipRecord:
    """One manifest line: a clip of a source video, its annotated frames and its training frames."""

    clip_id: str
    source: str
    source_fps: float
    start_frame: int
    end_frame: int
    sample_frames: list[int]
    captions: list[str]
    frame_indices: list[int]
    fps: int = 16
    global_caption: str = ""
    segment: int = 0
    clip_path: str | None = None
    format: str = MANIFEST_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"clip {self.clip_id!r}"
        if len(self.captions) != len(self.sample_frames) or not self.captions:
            raise DatasetError(
                f"{where} has {len(self.captions)} captions for {len(self.sample_frames)} sample frames; give exactly "
                f"one caption per annotated frame (at least one)."
            )
        if any(not isinstance(c, str) or not c.strip() for c in self.captions):
            raise DatasetError(f"{where} has an empty caption; every annotated frame needs a description.")
        n = len(self.frame_indices)
        if n < 1 or (n - 1) % 4:
            raise DatasetError(
                f"{where} has {n} training frames; it must be 4k+1 (the VAE keeps frame 0 and packs each following 4 "
                f"frames into one latent). Rebuild the manifest with framecap_core.data.build_dataset."
            )
        if sorted(self.sample_frames) != list(self.sample_frames) or sorted(self.frame_indices) != list(
            self.frame_indices
        ):
            raise DatasetError(f"{where}: sample_frames and frame_indices must be in increasing order.")

    @property
    def num_frames(self) -> int:
        return len(self.frame_indices)

    @property
    def num_latents(self) -> int:
        return (len(self.frame_indices) - 1) // 4 + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest line") -> ClipRecord:
        known = {f for f in cls.__dataclass_fields__}
        missing = {"clip_id", "source", "source_fps", "start_frame", "end_frame", "sample_frames", "captions",
                   "frame_indices"} - set(data)
        if missing:
            raise DatasetError(f"{where} lacks {sorted(missing)}; each line must be a clip record (see framecap_core.data).")
        extra = {k: v for k, v in data.items() if k not in known}
        record = cls(**{k: v for k, v in data.items() if k in known})
        record.extra.update(extra)
        return record


def read_manifest(path: str | os.PathLike) -> list[ClipRecord]:
    """Read a JSON Lines manifest. A truncated last line (a build killed mid-write) is ignored; any other bad line
    raises :class:`DatasetError` naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Manifest {str(path)!r} does not exist; build it with training/build_dataset.py.")
    lines = path.read_text(encoding="utf-8").split("\n")
    records: list[ClipRecord] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            if number >= len(lines) - 1 and not line.endswith("}"):
                continue  # torn final line of an interrupted append: the clip is simply redone
            raise DatasetError(f"{path}:{number} is not valid JSON ({exc.msg}); fix or delete that line.") from None
        record = ClipRecord.from_dict(data, where=f"{path}:{number}")
        if record.clip_id in seen:
            continue  # a resumed build may have appended a clip twice; the first wins
        seen.add(record.clip_id)
        records.append(record)
    return records


class ManifestWriter:
    """Append-only JSON Lines writer: each record is one ``write`` + ``flush`` + ``fsync``, so a killed build leaves
    at most one torn last line, which :func:`read_manifest` skips and the next writer cuts off and redoes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        if self.path.exists():
            self.done = {r.clip_id for r in read_manifest(self.path)}
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                # a torn last line from an interrupted append: cut it off (its clip is not in `done`, so it is redone)
                os.truncate(self.path, data.rfind(b"\n") + 1)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, record: ClipRecord) -> None:
        if record.clip_id in self.done:
            return
        self._write(record.to_json() + "\n")
        self.done.add(record.clip_id)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------------------
# Per-latent captions
# --------------------------------------------------------------------------------------------------------------------


def frame_captions(record: ClipRecord) -> list[int]:
    """Caption index (into ``record.captions``) of every training frame: the sample frame nearest in time
    (ties go to the earlier one). Returns ``num_frames`` ints."""
    samples = np.asarray(record.sample_frames, dtype=np.float64)
    frames = np.asarray(record.frame_indices, dtype=np.float64)
    # distances [F, S]; argmin takes the first minimum, i.e. the earlier sample on a tie
    return np.abs(frames[:, None] - samples[None, :]).argmin(axis=1).tolist()


def clip_latent_captions(record: ClipRecord) -> tuple[list[str], list[int]]:
    """Unique captions of a clip and the index of each latent's caption among them.

    Training frames take their nearest sample frame's caption; runs of equal captions become the scenes of a
    :class:`~framecap_core.timeline.Timeline` over the training frames, whose majority rule gives each latent its
    caption. A run too short to own any latent is merged into its predecessor (its caption never reaches a latent).

    Returns:
        ``(unique_captions [U], latent_index [L])`` with ``L = record.num_latents``.
    """
    from .timeline import Scene, Timeline

    per_frame = [record.captions[i] for i in frame_captions(record)]
    n = len(per_frame)
    scenes: list[list[Any]] = []  # [start, end, caption]
    for i, caption in enumerate(per_frame):
        if scenes and scenes[-1][2] == caption:
            scenes[-1][1] = i + 1
        else:
            scenes.append([i, i + 1, caption])
    while True:
        try:
            timeline = Timeline([Scene(s, e, c) for s, e, c in scenes], num_frames=n)
            break
        except TimelineError:
            # Drop the first scene that owns no latent: extend its predecessor (or successor) over it.
            owned = set(_majority_owner([(s, e) for s, e, _ in scenes], n))
            lost = next(i for i in range(len(scenes)) if i not in owned)
            if lost > 0:
                scenes[lost - 1][1] = scenes[lost][1]
            else:
                scenes[1][0] = 0
            del scenes[lost]
            merged: list[list[Any]] = []
            for s, e, c in scenes:
                if merged and merged[-1][2] == c:
                    merged[-1][1] = e
                else:
                    merged.append([s, e, c])
            scenes = merged
    return timeline.unique_captions(), timeline.latent_unique_indices()


def _majority_owner(spans: list[tuple[int, int]], num_frames: int) -> list[int]:
    """Scene index owning each latent by majority of its pixel frames, earlier scene on ties (Timeline's rule)."""
    owner_of_frame = np.empty(num_frames, dtype=np.int64)
    for i, (s, e) in enumerate(spans):
        owner_of_frame[s:e] = i
    owners = [int(owner_of_frame[0])]
    for j in range(1, (num_frames - 1) // 4 + 1):
        block = owner_of_frame[4 * j - 3 : 4 * j + 1]
        values, counts = np.unique(block, return_counts=True)
        owners.append(int(values[counts == counts.max()].min()))
    return owners


# --------------------------------------------------------------------------------------------------------------------
# Reading clip frames
# --------------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------------
# Latent cache
# --------------------------------------------------------------------------------------------------------------------


def encode_video_latents(vae, frames: np.ndarray, *, device: Any = "cpu", dtype: Any = None):
    """Normalized Wan latents of one clip: ``[F, H, W, 3]`` uint8 -> ``[C, L, H/8, W/8]`` float32,
    ``(vae.encode(x).latent_dist.mode() - latents_mean) / latents_std`` (the space the transformer works in)."""
    import torch

    from .backend import normalize_latents

    dtype = dtype or next(vae.parameters()).dtype
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None]  # [1, 3, F, H, W]
    video = (video.float() / 127.5 - 1.0).to(device=device, dtype=dtype)
    with torch.no_grad():
        z = vae.encode(video).latent_dist.mode().float().cpu()
    return normalize_latents(z[0], vae.config.latents_mean, vae.config.latents_std, channel_dim=0).contiguous()


@dataclass
class CacheSummary:
    clips: int = 0
    cached: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)


class CacheWriter:
    """Write-side of the latent cache: :meth:`add` clips, shards of ``shard_size`` clips are written atomically and
    the index rewritten atomically after each shard, so an interrupted build keeps every finished shard.

    Use it directly to cache latents made some other way (e.g. rendered toy videos); :func:`build_latent_cache`
    uses it for manifests.

    Args:
        cache_dir: output folder.
        settings: recorded in the index (``height``, ``width``, ...); reopening a cache with different ``height`` /
            ``width`` raises ``DatasetError``.
        index_name / prefix: index file and shard name prefix (distinct per machine when sharding a build).
        text_dtype: storage dtype of caption embeddings (``"bfloat16"`` halves the disk; the transformer reads
            them in bf16 under mixed precision anyway). Latents are kept in float32.

    Caption embeddings are zero past each caption's token count (Wan's convention), so only the first
    ``max(token count)`` rows of a clip's captions are stored; :class:`LatentCache` pads them back to ``text_len``.
    At 512 x 4096 per UMT5 caption this is most of the cache's size.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        *,
        settings: dict[str, Any] | None = None,
        shard_size: int = 64,
        index_name: str = CACHE_INDEX,
        prefix: str = "shard",
        text_dtype: str = "bfloat16",
    ):
        import torch

        if text_dtype not in ("float32", "bfloat16", "float16"):
            raise DatasetError(f"text_dtype must be float32, bfloat16 or float16; got {text_dtype!r}.")
        self.text_dtype = getattr(torch, text_dtype)
        self.root = Path(cache_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / index_name
        self.prefix = prefix
        self.shard_size = shard_size
        settings = dict(settings or {})
        index: dict[str, Any] = {}
        if self.index_path.is_file():
            try:
                index = json.loads(self.index_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"Latent cache index {str(self.index_path)!r} is corrupt ({exc.msg}); delete the cache folder "
                    f"and rebuild."
                ) from None
            old = index.get("settings", {})
            for key in ("height", "width"):
                if key in settings and key in old and old[key] != settings[key]:
                    raise DatasetError(
                        f"The cache in {str(self.root)!r} was built at {old.get('height')}x{old.get('width')}, not "
                        f"{settings.get('height')}x{settings.get('width')}; use another cache folder or the same size."
                    )
        index.setdefault("format", CACHE_FORMAT)
        index.setdefault("settings", settings)
        index.setdefault("clips", {})
        self.index = index
        self._pending: dict[str, Any] = {}
        self._pending_meta: dict[str, dict[str, Any]] = {}

    @property
    def done(self) -> set[str]:
        return set(self.index["clips"]) | set(self._pending_meta)

    def add(self, clip_id: str, latents, text, caption_index: Sequence[int], captions: Sequence[str] = ()) -> None:
        """Queue one clip: ``latents [C, L, h, w]`` (normalized), ``text [U, text_len, D]``, ``caption_index [L]``
        (values in ``[0, U)``), ``captions`` the ``U`` caption strings (recorded in the index)."""
        import torch

        latents = torch.as_tensor(latents).float().cpu().contiguous()
        text = torch.as_tensor(text).float().cpu().contiguous()
        index = torch.as_tensor(list(caption_index), dtype=torch.int64)
        if latents.ndim != 4 or text.ndim != 3 or index.shape != (latents.shape[1],):
            raise DatasetError(
                f"clip {clip_id}: expected latents [C, L, h, w], text [U, text_len, D] and caption_index [L]; got "
                f"{tuple(latents.shape)}, {tuple(text.shape)}, {tuple(index.shape)}."
            )
        if int(index.min()) < 0 or int(index.max()) >= text.shape[0]:
            raise DatasetError(f"clip {clip_id}: caption_index must lie in [0, {text.shape[0]}).")
        if not torch.isfinite(latents).all() or not torch.isfinite(text).all():
            raise DatasetError(f"clip {clip_id}: latents or caption embeddings are not finite; check the VAE / encoder.")
        used = torch.nonzero(text.abs().amax(dim=(0, 2)) > 0)
        stored = int(used.max()) + 1 if used.numel() else 1  # rows past every caption's tokens are all zero
        self._pending[f"{clip_id}/latents"] = latents
        self._pending[f"{clip_id}/text"] = text[:, :stored].to(self.text_dtype).contiguous()
        self._pending[f"{clip_id}/caption_index"] = index
        self._pending_meta[clip_id] = {
            "num_latents": int(latents.shape[1]),
            "latent_shape": list(latents.shape),
            "text_shape": list(text.shape),
            "text_stored": stored,
            "captions": list(captions),
        }
        if len(self._pending_meta) >= self.shard_size:
            self.flush()

    def write_empty_caption(self, text) -> None:
        """Store the embedding of the empty caption ``""`` (``[1, text_len, D]`` or ``[text_len, D]``): training
        with ``caption_dropout`` swaps a window's captions for it, as Wan's unconditional pass at inference does."""
        import torch
        from safetensors.torch import save_file

        text = torch.as_tensor(text).float().cpu()
        text = text[None] if text.ndim == 2 else text
        if text.ndim != 3 or text.shape[0] != 1 or not torch.isfinite(text).all():
            raise DatasetError(f"the empty caption's embedding must be a finite [1, text_len, D] tensor; got shape "
                               f"{tuple(text.shape)}.")
        with atomic_path(self.root / EMPTY_CAPTION_FILE) as tmp:
            save_file({"text": text.contiguous()}, str(tmp), metadata={"format": CACHE_FORMAT})

    def flush(self) -> None:
        from safetensors.torch import save_file

        if self._pending:
            number = len({c["shard"] for c in self.index["clips"].values()})
            while (self.root / f"{self.prefix}-{number:05d}.safetensors").exists():
                number += 1
            name = f"{self.prefix}-{number:05d}.safetensors"
            with atomic_path(self.root / name) as tmp:
                save_file(self._pending, str(tmp), metadata={"format": CACHE_FORMAT})
            for clip_id, meta in self._pending_meta.items():
                self.index["clips"][clip_id] = {**meta, "shard": name}
            self._pending, self._pending_meta = {}, {}
        atomic_write_text(self.index_path, json.dumps(self.index, indent=1, ensure_ascii=False))

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self.flush()  # keep what was finished even when a later clip failed


def build_latent_cache(
    manifest: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    vae,
    encode_text: Callable[[list[str]], Any],
    height: int,
    width: int,
    shard_size: int = 64,
    device: Any = "cpu",
    dtype: Any = None,
    shard: tuple[int, int] = (0, 1),
    text_dtype: str = "bfloat16",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> CacheSummary:
    """Encode every clip of ``manifest`` into safetensors shards under ``cache_dir``; resumable.

    Per clip ``<id>`` the shard holds ``<id>/latents [C, L, h, w]`` (normalized, float32), ``<id>/text
    [U, stored, text_dim]`` (the clip's unique captions up to their longest token count, bf16 by default; read
    back zero-padded to ``text_len``) and ``<id>/caption_index [L]`` (int64).
    ``index.json`` maps each clip to its shard and records the settings; clips already indexed are skipped.
    Unreadable clips are logged, counted and skipped.

    Args:
        encode_text: ``captions [U] -> [U, text_len, text_dim]`` tensor (e.g. ``framecap_core.text`` bound to a
            text encoder).
        height, width: training resolution; multiples of 16 (VAE stride 8 times patch 2).
        shard: ``(i, n)``: only clips whose position in the manifest is ``i`` modulo ``n`` (for several machines;
            each writes its own shards and ``index.<i>-of-<n>.json``; :class:`LatentCache` reads them all).
    """
    import torch
    from tqdm.auto import tqdm

    if height % 16 or width % 16 or height < 16 or width < 16:
        raise DatasetError(f"height and width must be multiples of 16 (VAE stride 8 x patch 2); got {height}x{width}.")
    manifest = Path(manifest)
    index_no, count = shard
    if not (0 <= index_no < count):
        raise DatasetError(f"shard must be i/n with 0 <= i < n, got {index_no}/{count}.")
    records = [r for i, r in enumerate(read_manifest(manifest)) if i % count == index_no]
    writer = CacheWriter(
        cache_dir,
        settings={"height": height, "width": width, "manifest": str(manifest.resolve())},
        shard_size=shard_size,
        index_name=CACHE_INDEX if count == 1 else f"index.{index_no}-of-{count}.json",
        prefix="shard" if count == 1 else f"shard-{index_no}of{count}",
        text_dtype=text_dtype,
    )
    summary = CacheSummary(clips=len(records))
    cached = writer.done | cached_clip_ids(cache_dir)  # clips in any index (e.g. of an earlier sharded build)
    todo = [r for r in records if r.clip_id not in cached]
    summary.skipped = len(records) - len(todo)
    with writer:
        for record in tqdm(todo, desc="caching latents", disable=not progress, unit="clip"):
            try:
                frames = read_clip_frames(record, manifest.parent, height, width)
            except DatasetError as exc:
                summary.failed += 1
                summary.failures.append(f"{record.clip_id}: {exc}")
                log(f"skipping clip {record.clip_id}: {exc}")
                continue
            latents = encode_video_latents(vae, frames, device=device, dtype=dtype)
            unique, latent_index = clip_latent_captions(record)
            if len(latent_index) != latents.shape[1]:
                raise DatasetError(
                    f"clip {record.clip_id}: the VAE gave {latents.shape[1]} latent frames for {record.num_frames} "
                    f"pixel frames, expected {len(latent_index)}; use a Wan VAE (temporal stride 4)."
                )
            with torch.no_grad():
                text = torch.as_tensor(encode_text(unique)).float().cpu()
            if text.ndim != 3 or text.shape[0] != len(unique):
                raise DatasetError(
                    f"encode_text returned shape {tuple(text.shape)} for {len(unique)} captions; it must return "
                    f"[num_captions, text_len, text_dim]."
                )
            writer.add(record.clip_id, latents, text, latent_index, unique)
            summary.cached += 1
        if not (Path(cache_dir) / EMPTY_CAPTION_FILE).is_file():
            with torch.no_grad():
                writer.write_empty_caption(encode_text([""]))
    return summary


def cached_clip_ids(cache_dir: str | os.PathLike) -> set[str]:
    """Clip ids recorded in every index file of a latent cache folder (empty when there is none)."""
    ids: set[str] = set()
    for path in Path(cache_dir).glob("index*.json"):
        try:
            ids.update(json.loads(path.read_text(encoding="utf-8")).get("clips", {}))
        except (OSError, json.JSONDecodeError):
            continue
    return ids


class LatentCache:
    """Read side of the latent cache: ``len(cache)`` clips, ``cache[i]`` -> dict of tensors, and
    :meth:`window` for a training crop. Shards are opened lazily and kept open (an LRU of ``max_open``)."""

    def __init__(self, cache_dir: str | os.PathLike, *, max_open: int = 8):
        self.root = Path(cache_dir)
        indexes = sorted(self.root.glob("index*.json"))
        if not indexes:
            raise DatasetError(
                f"No latent cache in {str(self.root)!r} (no index.json); build it with "
                f"`python training/finetune.py --config ... --cache-only` (config with a manifest) or "
                f"framecap_core.data.build_latent_cache."
            )
        clips: dict[str, dict[str, Any]] = {}
        self.settings: dict[str, Any] = {}
        for path in indexes:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != CACHE_FORMAT:
                raise DatasetError(f"{str(path)!r} is not a FrameCap latent cache index ({CACHE_FORMAT}).")
            self.settings = self.settings or data.get("settings", {})
            clips.update(data.get("clips", {}))
        if not clips:
            raise DatasetError(f"The latent cache in {str(self.root)!r} holds no clips; check the manifest and logs.")
        self.clip_ids = sorted(clips)
        self.meta = clips
        self._open: OrderedDict[str, Any] = OrderedDict()
        self.max_open = max_open
        self._empty_caption = None

    def __len__(self) -> int:
        return len(self.clip_ids)

    def _handle(self, shard: str):
        from safetensors import safe_open

        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        path = self.root / shard
        if not path.is_file():
            raise DatasetError(f"Latent cache shard {str(path)!r} is missing; rebuild the cache.")
        handle = safe_open(str(path), framework="pt")
        self._open[shard] = handle
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return handle

    def __getitem__(self, i: int) -> dict[str, Any]:
        clip_id = self.clip_ids[i]
        handle = self._handle(self.meta[clip_id]["shard"])
        return {
            "clip_id": clip_id,
            "latents": handle.get_tensor(f"{clip_id}/latents"),
            "text": self._padded_text(handle.get_tensor(f"{clip_id}/text"), self.meta[clip_id]["text_shape"][1]),
            "caption_index": handle.get_tensor(f"{clip_id}/caption_index"),
        }

    @staticmethod
    def _padded_text(text, text_len: int):
        """Stored caption rows ``[U, stored, D]`` -> ``[U, text_len, D]`` float32, zero-padded as the encoder gave."""
        import torch

        text = text.float()
        if text.shape[1] < text_len:
            text = torch.cat([text, text.new_zeros(text.shape[0], text_len - text.shape[1], text.shape[2])], dim=1)
        return text

    def empty_caption(self):
        """The empty caption's embedding ``[text_len, D]`` (float32), for caption dropout."""
        from safetensors.torch import load_file

        if self._empty_caption is not None:
            return self._empty_caption
        path = self.root / EMPTY_CAPTION_FILE
        if not path.is_file():
            raise DatasetError(
                f"The latent cache in {str(self.root)!r} has no empty-caption embedding ({EMPTY_CAPTION_FILE}), which "
                f"caption_dropout needs; rebuild the cache with this version (finetune.py --cache-only) or set "
                f"caption_dropout to 0."
            )
        text = load_file(str(path))["text"][0].float()
        if text.shape[0] != self.text_len:
            raise DatasetError(
                f"The empty caption in {str(path)!r} has {text.shape[0]} tokens but the clips' captions have "
                f"{self.text_len}; rebuild the cache with one text encoder."
            )
        self._empty_caption = text
        return text

    @property
    def min_latents(self) -> int:
        return min(m["num_latents"] for m in self.meta.values())

    @property
    def text_len(self) -> int:
        """Tokens per caption of the cached embeddings (all clips must agree)."""
        lengths = {m["text_shape"][1] for m in self.meta.values()}
        if len(lengths) != 1:
            raise DatasetError(
                f"The latent cache in {str(self.root)!r} mixes caption lengths {sorted(lengths)}; rebuild it with one "
                f"text encoder."
            )
        return lengths.pop()

    def window(self, i: int, window_latents: int, generator=None) -> dict[str, Any]:
        """A random crop of ``window_latents`` latent frames of clip ``i`` (start uniform over all valid starts,
        so windows that begin mid-video are seen): ``latents [C, N, h, w]``, ``context [N*text_len, D]``
        (frame-major stacked captions), ``offset``. A clip shorter than the window raises ``DatasetError``."""
        import torch

        from .attention import stack_frame_captions

        item = self[i]
        total = item["latents"].shape[1]
        if total < window_latents:
            raise DatasetError(
                f"clip {item['clip_id']} has {total} latent frames, fewer than window_latents={window_latents}; "
                f"lower window_latents or build the dataset with longer clips."
            )
        offset = int(torch.randint(0, total - window_latents + 1, (1,), generator=generator).item())
        index = item["caption_index"][offset : offset + window_latents]
        return {
            "clip_id": item["clip_id"],
            "offset": offset,
            "latents": item["latents"][:, offset : offset + window_latents],
            "context": stack_frame_captions(item["text"], index)[0],
        }


# --------------------------------------------------------------------------------------------------------------------
# Perceptual hash (near-duplicate detection)
# --------------------------------------------------------------------------------------------------------------------


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D [n, n]``: ``D @ x`` is the DCT of ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def phash(image: np.ndarray, *, size: int = 32, bits: int = 8) -> int:
    """64-bit DCT perceptual hash of an ``[H, W, 3]`` (or ``[H, W]``) uint8 image.

    Grayscale, resize to ``size x size``, 2-D DCT, keep the ``bits x bits`` lowest frequencies, set a bit where a
    coefficient is above their median (the DC term excluded from the median). Similar images differ in few bits.
    """
    from PIL import Image

    gray = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("L").resize((size, size), Image.BILINEAR)
    pixels = np.asarray(gray, dtype=np.float64)
    d = _dct_matrix(size)
    low = (d @ pixels @ d.T)[:bits, :bits].ravel()
    median = np.median(low[1:])
    value = 0
    for bit in low > median:
        value = (value << 1) | int(bit)
    return value


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def video_distance(a: Sequence[int], b: Sequence[int]) -> float:
    """Mean Hamming distance between two videos' frame hashes taken at the same relative positions."""
    n = min(len(a), len(b))
    if n == 0:
        return float("inf")
    return sum(hamming(x, y) for x, y in zip(a[:n], b[:n])) / n


# --------------------------------------------------------------------------------------------------------------------
# Dataset construction (paper section 3)
# --------------------------------------------------------------------------------------------------------------------

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


@dataclass
class DatasetConfig:
    """Every number of the paper's construction recipe (section 3), with its values as defaults.

    Attributes:
        min_duration_s: keep source videos longer than this (paper: 10 minutes).
        trim_fraction: drop this fraction at the start and at the end (paper: 10%).
        num_segments: split the rest into this many equal segments, one clip each (paper: 4).
        clip_seconds: clip length (paper: 8 s), cut from the middle of its segment.
        sample_fps / sample_every: annotate every ``sample_every``-th frame at ``sample_fps`` (paper: every 8th at
            24 fps, 24 frames per clip); for other source rates the same instants are used.
        fps: training frame rate of the clip's frames (Wan: 16); a clip holds the largest ``4k+1`` frames that fit.
        phash_frames: frames hashed per video; phash_threshold: mean Hamming distance (of 64 bits) at or below
            which a video is a near-duplicate of an earlier one and dropped.
        max_side: longest side of the images sent for annotation.
    """

    min_duration_s: float = 600.0
    trim_fraction: float = 0.1
    num_segments: int = 4
    clip_seconds: float = 8.0
    sample_fps: float = 24.0
    sample_every: int = 8
    fps: int = 16
    phash_frames: int = 8
    phash_threshold: float = 10.0
    max_side: int = 768

    def __post_init__(self) -> None:
        checks = [
            (self.min_duration_s >= 0, "min_duration_s must be >= 0"),
            (0 <= self.trim_fraction < 0.5, "trim_fraction must be in [0, 0.5)"),
            (isinstance(self.num_segments, int) and self.num_segments >= 1, "num_segments must be an integer >= 1"),
            (self.clip_seconds > 0, "clip_seconds must be > 0"),
            (self.sample_fps > 0 and isinstance(self.sample_every, int) and self.sample_every >= 1,
             "sample_fps must be > 0 and sample_every an integer >= 1"),
            (isinstance(self.fps, int) and self.fps >= 1, "fps must be an integer >= 1"),
            (isinstance(self.phash_frames, int) and self.phash_frames >= 1, "phash_frames must be an integer >= 1"),
            (self.phash_threshold >= 0, "phash_threshold must be >= 0 (0 drops only identical hashes)"),
        ]
        for ok, message in checks:
            if not ok:
                raise DatasetError(f"{message}; see framecap_core.data.DatasetConfig for the paper's values.")
        if self.train_frames < 1:
            raise DatasetError(f"clip_seconds={self.clip_seconds} at fps={self.fps} gives no training frame.")

    @property
    def train_frames(self) -> int:
        """Training frames per clip: the largest ``4k + 1`` not above ``clip_seconds * fps`` (8 s at 16 -> 125)."""
        n = int(math.floor(self.clip_seconds * self.fps + 1e-9))
        return (n - 1) // 4 * 4 + 1 if n >= 1 else 0


@dataclass
class VideoInfo:
    path: str
    fps: float
    num_frames: int
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


@dataclass
class BuildSummary:
    """What a :func:`build_dataset` run did (also printed as :meth:`report`)."""

    videos: int = 0
    corrupt: list[str] = field(default_factory=list)
    too_short: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # "path (duplicate of other)"
    other_shards: int = 0
    clips_written: int = 0
    clips_done_before: int = 0
    clips_failed: list[str] = field(default_factory=list)
    clips_planned: int = 0

    def report(self) -> str:
        lines = [
            f"videos found: {self.videos}",
            f"  unreadable (skipped): {len(self.corrupt)}",
            f"  shorter than the minimum: {len(self.too_short)}",
            f"  near-duplicates dropped: {len(self.duplicates)}",
            f"  in other shards: {self.other_shards}",
            f"clips written: {self.clips_written}",
            f"clips already in the manifest: {self.clips_done_before}",
            f"clips failed (retried on the next run): {len(self.clips_failed)}",
        ]
        if self.clips_planned:
            lines.append(f"clips planned: {self.clips_planned}")
        for item in self.corrupt:
            lines.append(f"  unreadable: {item}")
        for item in self.clips_failed:
            lines.append(f"  failed: {item}")
        return "\n".join(lines)


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


@dataclass
class ClipPlan:
    clip_id: str
    source: str
    source_fps: float
    segment: int
    start_frame: int
    end_frame: int
    sample_frames: list[int]
    timestamps: list[float]  # seconds from the clip start, one per sample frame
    frame_indices: list[int]
    fps: int


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:40] or "video"


def clip_id_for(path: str | os.PathLike, segment: int) -> str:
    """Stable clip id: file stem, 8 hex digits of the absolute path's SHA-1, segment number."""
    resolved = str(Path(path).resolve())
    return f"{_slug(Path(path).stem)}-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}-s{segment}"


def plan_clips(info: VideoInfo, config: DatasetConfig) -> list[ClipPlan]:
    """The clips of one video (paper section 3), from its frame rate and length alone.

    Frames ``[trim * F, (1 - trim) * F)`` are split into ``num_segments`` equal segments; each gives one clip of
    ``round(clip_seconds * source_fps)`` frames centred in it (segments shorter than a clip give none). Sample
    frames are at ``k * sample_every / sample_fps`` seconds, training frames at ``i / fps`` seconds from the clip
    start (rounded to the nearest source frame).
    """
    total = info.num_frames
    first = int(math.floor(total * config.trim_fraction))
    last = int(math.ceil(total * (1.0 - config.trim_fraction)))
    span = last - first
    length = int(round(config.clip_seconds * info.fps))
    step = config.sample_every / config.sample_fps
    num_samples = int(math.floor(config.clip_seconds / step - 1e-9)) + 1
    plans = []
    for k in range(config.num_segments):
        seg_start = first + (span * k) // config.num_segments
        seg_end = first + (span * (k + 1)) // config.num_segments
        if seg_end - seg_start < length or length < 1:
            continue
        start = seg_start + (seg_end - seg_start - length) // 2
        end = start + length
        times = [j * step for j in range(num_samples)]
        samples = [min(end - 1, start + int(round(t * info.fps))) for t in times]
        frames = [min(end - 1, start + int(round(i * info.fps / config.fps))) for i in range(config.train_frames)]
        plans.append(ClipPlan(clip_id_for(info.path, k), info.path, info.fps, k, start, end, samples, times, frames,
                              config.fps))
    return plans


Annotator = Callable[[list[np.ndarray], list[float]], tuple[list[str], str]]
"""``(images [S] of [H, W, 3] uint8, timestamps [S] in seconds) -> (captions [S], global caption)``."""


def gemini_annotator(*, model: str | None = None, base_url: str | None = None, max_side: int = 768,
                     max_caption_tokens: int | None = None, **options: Any) -> Annotator:
    """An :data:`Annotator` over :func:`framecap_core.prompting.annotate_frames` (the shared annotation template,
    frames sent as images, adaptive shared / independent captions). The key comes from ``GEMINI_API_KEY``."""
    from .prompting import DEFAULT_MODEL, GeminiOptions, annotate_frames

    gemini = GeminiOptions(model=model or DEFAULT_MODEL, base_url=base_url, **options)
    kwargs: dict[str, Any] = {"max_side": max_side, "options": gemini, "model": gemini.model}
    if max_caption_tokens is not None:
        kwargs["max_caption_tokens"] = max_caption_tokens

    def annotate(images: list[np.ndarray], timestamps: list[float]) -> tuple[list[str], str]:
        result = annotate_frames(images, timestamps=timestamps, **kwargs)
        return list(result.captions), result.video_caption

    return annotate


def load_annotations(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Captions made elsewhere: JSON Lines (or a JSON list) of ``{"clip_id": ..., "captions": [...],
    "global_caption": ...}``; instead of ``clip_id`` a line may give ``"source"`` (file name or path) and
    ``"segment"``. A single caption is used for every sample frame. Returns lookup keys -> entry."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Annotations file {str(path)!r} does not exist.")
    text = path.read_text(encoding="utf-8").strip()
    entries: list[Any]
    if text.startswith("["):
        entries = json.loads(text)
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{number}: invalid JSON ({exc.msg}).") from None
    table: dict[str, dict[str, Any]] = {}
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or "captions" not in entry:
            raise DatasetError(f"{path} entry {number} needs a 'captions' list (and a clip_id or source + segment).")
        captions = entry["captions"]
        if isinstance(captions, str):
            captions = [captions]
        if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise DatasetError(f"{path} entry {number}: captions must be non-empty strings.")
        entry = {**entry, "captions": captions}
        if "clip_id" in entry:
            table[str(entry["clip_id"])] = entry
        elif "source" in entry and "segment" in entry:
            table[f"{Path(str(entry['source'])).name}#{int(entry['segment'])}"] = entry
        else:
            raise DatasetError(f"{path} entry {number} has neither clip_id nor source + segment.")
    return table


def _annotation_for(table: dict[str, dict[str, Any]], plan: ClipPlan) -> tuple[list[str], str] | None:
    entry = table.get(plan.clip_id) or table.get(f"{Path(plan.source).name}#{plan.segment}")
    if entry is None:
        return None
    captions = list(entry["captions"])
    if len(captions) == 1:
        captions = captions * len(plan.sample_frames)
    if len(captions) != len(plan.sample_frames):
        raise DatasetError(
            f"the annotations give {len(captions)} captions but the clip has {len(plan.sample_frames)} sample "
            f"frames; give one caption per sample frame (see the plan file) or a single caption."
        )
    return captions, str(entry.get("global_caption") or entry.get("video_caption") or captions[0])


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line
    return out


def find_videos(inputs: Iterable[str | os.PathLike], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Video files under ``inputs`` (files or folders, searched recursively), sorted, without repeats."""
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.update(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        elif path.is_file():
            found.add(path)
        else:
            raise DatasetError(f"{str(path)!r} is neither a video file nor a folder.")
    return sorted(found, key=lambda p: str(p))


def build_dataset(
    inputs: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    config: DatasetConfig | None = None,
    annotator: Annotator | None = None,
    annotations: str | os.PathLike | None = None,
    shard: tuple[int, int] = (0, 1),
    plan_only: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> BuildSummary:
    """Build (or continue building) a frame-level dataset manifest from source videos (paper section 3).

    Steps: probe every video (unreadable ones logged and skipped) and keep those longer than ``min_duration_s``;
    hash ``phash_frames`` frames of each and drop near-duplicates of an earlier video (every shard hashes every
    video, so all shards agree on what is a duplicate; hashes are cached in ``phash.jsonl``); the kept videos of
    this shard (``i``-th of every ``n``) are cut into clips (:func:`plan_clips`), their sample frames decoded and
    annotated (by ``annotations`` when it has the clip, else by ``annotator``), and each clip appended to
    ``manifest.jsonl`` (``manifest.<i>-of-<n>.jsonl`` when sharded) with an fsync. Clips already in the manifest
    are skipped, so a rerun continues where a stopped one ended; clips whose annotation fails are logged and
    retried on the next run.

    With ``plan_only`` nothing is annotated: ``plan.jsonl`` lists every clip (id, source, segment, sample frames
    and timestamps) for annotating elsewhere and bringing back with ``annotations``.
    """
    from tqdm.auto import tqdm

    config = config or DatasetConfig()
    index_no, count = shard
    if not (isinstance(index_no, int) and isinstance(count, int) and 0 <= index_no < count):
        raise DatasetError(f"shard must be i/n with 0 <= i < n, got {index_no}/{count}.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if count == 1 else f".{index_no}-of-{count}"
    table = load_annotations(annotations) if annotations else {}
    if annotator is None and not table and not plan_only:
        annotator = gemini_annotator(max_side=config.max_side)
    summary = BuildSummary()
    videos = find_videos(inputs)
    summary.videos = len(videos)

    # 1. probe + perceptual hashes of every video (cached; the same in every shard)
    hash_path = out / f"phash{suffix}.jsonl"
    cached = {(r["path"], r["size"], r["mtime"]): r for r in _read_jsonl(hash_path)}
    kept: list[tuple[VideoInfo, list[int]]] = []
    for path in tqdm(videos, desc="probing videos", disable=not progress, unit="video"):
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        entry = cached.get(key)
        if entry is None:
            entry = {"path": key[0], "size": key[1], "mtime": key[2]}
            try:
                info = probe_video(path)
                entry["info"] = asdict(info)
                if info.duration > config.min_duration_s:
                    first = int(info.num_frames * config.trim_fraction)
                    last = max(first + 1, int(info.num_frames * (1 - config.trim_fraction)))
                    picks = [first + (last - first) * (2 * j + 1) // (2 * config.phash_frames)
                             for j in range(config.phash_frames)]
                    frames = read_video_frames(path, picks)
                    entry["hashes"] = [phash(frames[i]) for i in picks]
            except DatasetError as exc:
                entry["error"] = str(exc)
            _append_jsonl(hash_path, entry)
        if "error" in entry:
            summary.corrupt.append(f"{path}: {entry['error']}")
            log(f"skipping unreadable video {path}: {entry['error']}")
            continue
        info = VideoInfo(**{**entry["info"], "path": str(path)})
        if info.duration <= config.min_duration_s:
            summary.too_short.append(str(path))
            continue
        hashes = entry["hashes"]
        twin = next((v for v, h in kept if video_distance(h, hashes) <= config.phash_threshold), None)
        if twin is not None:
            summary.duplicates.append(f"{path} (duplicate of {twin.path})")
            continue
        kept.append((info, hashes))

    # 2. clips of this shard's videos: plan, annotate, append
    mine = [info for i, (info, _) in enumerate(kept) if i % count == index_no]
    summary.other_shards = len(kept) - len(mine)
    if plan_only:
        lines = []
        for info in mine:
            for plan in plan_clips(info, config):
                lines.append(json.dumps({**asdict(plan), "source": str(Path(plan.source).resolve())},
                                        ensure_ascii=False))
        atomic_write_text(out / f"plan{suffix}.jsonl", "".join(line + "\n" for line in lines))
        summary.clips_planned = len(lines)
        return summary
    with ManifestWriter(out / f"manifest{suffix}.jsonl") as writer:
        for info in tqdm(mine, desc="annotating clips", disable=not progress, unit="video"):
            plans = plan_clips(info, config)
            todo = [p for p in plans if p.clip_id not in writer.done]
            summary.clips_done_before += len(plans) - len(todo)
            if not todo:
                continue
            try:
                frames = read_video_frames(info.path, [i for p in todo for i in p.sample_frames])
            except DatasetError as exc:
                summary.corrupt.append(f"{info.path}: {exc}")
                log(f"skipping unreadable video {info.path}: {exc}")
                continue
            for plan in todo:
                try:
                    found = _annotation_for(table, plan)
                    if found is None:
                        if annotator is None:
                            raise DatasetError("no annotation for this clip in the annotations file")
                        found = annotator([frames[i] for i in plan.sample_frames], list(plan.timestamps))
                    captions, global_caption = found
                    record = ClipRecord(
                        clip_id=plan.clip_id, source=str(Path(plan.source).resolve()), source_fps=plan.source_fps,
                        start_frame=plan.start_frame, end_frame=plan.end_frame, sample_frames=plan.sample_frames,
                        captions=list(captions), frame_indices=plan.frame_indices, fps=plan.fps,
                        global_caption=global_caption, segment=plan.segment,
                    )
                except FrameCapError as exc:
                    summary.clips_failed.append(f"{plan.clip_id}: {exc}")
                    log(f"clip {plan.clip_id} failed: {exc}")
                    continue
                writer.append(record)
                summary.clips_written += 1
    return summary


def merge_manifests(paths: Iterable[str | os.PathLike], output: str | os.PathLike) -> int:
    """Concatenate shard manifests (``manifest.<i>-of-<n>.jsonl``) into one, atomically; returns the clip count."""
    records: dict[str, ClipRecord] = {}
    for path in paths:
        for record in read_manifest(path):
            records.setdefault(record.clip_id, record)
    atomic_write_text(output, "".join(r.to_json() + "\n" for r in records.values()))
    return len(records)
