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

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError, TimelineError
from .fileio import atomic_path, atomic_write_text

__all__ = [
    "CACHE_INDEX",
    "CacheWriter",
    "ClipRecord",
    "LatentCache",
    "ManifestWriter",
    "build_latent_cache",
    "clip_latent_captions",
    "read_clip_frames",
    "read_manifest",
]

CACHE_INDEX = "index.json"
CACHE_FORMAT = "framecap-latent-cache/1"
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
    at most one torn last line, which :func:`read_manifest` skips and the next run redoes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        needs_newline = False
        if self.path.exists():
            self.done = {r.clip_id for r in read_manifest(self.path)}
            data = self.path.read_bytes()
            needs_newline = bool(data) and not data.endswith(b"\n")
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if needs_newline:
            self._write("\n")

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


def read_video_frames(path: str | os.PathLike, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """Decode the frames ``indices`` of a video in one sequential pass: ``{index: [H, W, 3] uint8}``.

    Raises :class:`DatasetError` if the file cannot be decoded or ends before the last wanted frame.
    """
    import imageio.v2 as imageio

    wanted = set(int(i) for i in indices)
    last = max(wanted) if wanted else -1
    frames: dict[int, np.ndarray] = {}
    try:
        reader = imageio.get_reader(os.fspath(path), "ffmpeg")
    except Exception as exc:  # imageio raises many types for unreadable files
        raise DatasetError(f"Cannot open video {str(path)!r}: {exc}. Check that it is a valid video file.") from None
    try:
        for i, frame in enumerate(reader):
            if i in wanted:
                frames[i] = np.asarray(frame)[..., :3]
            if i >= last:
                break
    except Exception as exc:
        raise DatasetError(f"Cannot decode video {str(path)!r} ({exc}); the file may be corrupt.") from None
    finally:
        reader.close()
    missing = wanted - set(frames)
    if missing:
        raise DatasetError(
            f"Video {str(path)!r} ended before frame {min(missing)} ({len(frames)} of {len(wanted)} wanted frames "
            f"decoded); the file is truncated or its frame count is wrong."
        )
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


def _vae_stats(vae) -> tuple[Any, Any]:
    import torch

    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
    return mean, std


def encode_video_latents(vae, frames: np.ndarray, *, device: Any = "cpu", dtype: Any = None):
    """Normalized Wan latents of one clip: ``[F, H, W, 3]`` uint8 -> ``[C, L, H/8, W/8]`` float32,
    ``(vae.encode(x).latent_dist.mode() - latents_mean) / latents_std``."""
    import torch

    dtype = dtype or next(vae.parameters()).dtype
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None]  # [1, 3, F, H, W]
    video = (video.float() / 127.5 - 1.0).to(device=device, dtype=dtype)
    with torch.no_grad():
        z = vae.encode(video).latent_dist.mode().float().cpu()
    mean, std = _vae_stats(vae)
    return ((z - mean) / std)[0].contiguous()


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
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        *,
        settings: dict[str, Any] | None = None,
        shard_size: int = 64,
        index_name: str = CACHE_INDEX,
        prefix: str = "shard",
    ):
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
        self._pending[f"{clip_id}/latents"] = latents
        self._pending[f"{clip_id}/text"] = text
        self._pending[f"{clip_id}/caption_index"] = index
        self._pending_meta[clip_id] = {
            "num_latents": int(latents.shape[1]),
            "latent_shape": list(latents.shape),
            "text_shape": list(text.shape),
            "captions": list(captions),
        }
        if len(self._pending_meta) >= self.shard_size:
            self.flush()

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
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> CacheSummary:
    """Encode every clip of ``manifest`` into safetensors shards under ``cache_dir``; resumable.

    Per clip ``<id>`` the shard holds ``<id>/latents [C, L, h, w]`` (normalized, float32), ``<id>/text
    [U, text_len, text_dim]`` (the clip's unique captions, float32) and ``<id>/caption_index [L]`` (int64).
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
    )
    summary = CacheSummary(clips=len(records))
    todo = [r for r in records if r.clip_id not in writer.done]
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
    return summary


class LatentCache:
    """Read side of the latent cache: ``len(cache)`` clips, ``cache[i]`` -> dict of tensors, and
    :meth:`window` for a training crop. Shards are opened lazily and kept open (an LRU of ``max_open``)."""

    def __init__(self, cache_dir: str | os.PathLike, *, max_open: int = 8):
        self.root = Path(cache_dir)
        indexes = sorted(self.root.glob("index*.json"))
        if not indexes:
            raise DatasetError(
                f"No latent cache in {str(self.root)!r} (no index.json); build it with "
                f"`python training/finetune.py --config ... --build-cache` or framecap_core.data.build_latent_cache."
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
            "text": handle.get_tensor(f"{clip_id}/text"),
            "caption_index": handle.get_tensor(f"{clip_id}/caption_index"),
        }

    @property
    def min_latents(self) -> int:
        return min(m["num_latents"] for m in self.meta.values())

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


def iter_chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
