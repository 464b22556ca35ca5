"""Stage 1, dataset construction (paper section 3): probe, deduplicate, cut into clips, annotate, append to the
manifest; resumable and shardable."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetError, FrameCapError
from ..fileio import atomic_write_text
from ..grid import num_frames_for_latents, num_latents_for_frames
from .annotations import Annotator, gemini_annotator, load_annotations
from .hashing import phash, video_distance
from .manifest import ClipRecord, ManifestWriter, sort_manifest
from .video_io import VIDEO_EXTENSIONS, VideoInfo, find_named_videos, probe_video, read_video_frames


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
        return num_frames_for_latents(num_latents_for_frames(n)) if n >= 1 else 0


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
    min_duration_s: float = 0.0

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
        for label, items in (("unreadable", self.corrupt), ("shorter than the minimum", self.too_short),
                             ("near-duplicate", self.duplicates), ("failed", self.clips_failed)):
            lines.extend(f"  {label}: {item}" for item in items)
        return "\n".join(lines)

    def nothing_kept_reason(self) -> str | None:
        """Why no video was kept (every one too short, unreadable or a duplicate), naming the knob; else None."""
        if self.videos == 0:
            return "no video files were found (extensions: " + ", ".join(VIDEO_EXTENSIONS) + ")."
        if self.too_short and len(self.too_short) + len(self.corrupt) + len(self.duplicates) == self.videos:
            return (f"every readable video is {self.min_duration_s:g} s or shorter (the paper keeps only videos over 10 "
                    f"minutes); lower the minimum with --min-duration SECONDS (e.g. --min-duration 30).")
        return None


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


def clip_id_for(name: str | os.PathLike, segment: int) -> str:
    """Stable clip id: file stem, 8 hex digits of the SHA-1 of the video's *name* (its path relative to the source
    folder, see :func:`~framecap_core.data.video_io.find_named_videos`), segment number. It never depends on where
    the folder is mounted, so a moved dataset and shards built on machines with other mount points keep their ids
    (and their annotations)."""
    name = Path(name).as_posix()
    return f"{_slug(Path(name).stem)}-{hashlib.sha1(name.encode()).hexdigest()[:8]}-s{segment}"


def nearest_frame(position: float) -> int:
    """The nearest source frame to a fractional frame position, halves rounded up. Python's ``round`` rounds halves
    to even, which resamples 24 -> 16 fps as 2,1,1,2,2,1,1,2 source frames apart instead of alternating 2,1."""
    return int(math.floor(position + 0.5))


def _source_for_manifest(path: str | os.PathLike, output_dir: Path) -> str:
    """A record's ``source``: relative to the manifest's folder (which readers resolve it against), so a manifest
    does not depend on the mount point when videos and output keep their layout; absolute across drives."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), output_dir.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())


def plan_clips(info: VideoInfo, config: DatasetConfig) -> list[ClipPlan]:
    """The clips of one video (paper section 3), from its frame rate and length alone.

    Frames ``[trim * F, (1 - trim) * F)`` are split into ``num_segments`` equal segments; each gives one clip of
    ``round(clip_seconds * source_fps)`` frames centred in it (segments shorter than a clip give none). Sample
    frames are at ``k * sample_every / sample_fps`` seconds, training frames at ``i / fps`` seconds from the clip
    start (the nearest source frame, :func:`nearest_frame`). Clip ids come from ``info.name`` (the file name when
    empty), never from the absolute path.
    """
    total = info.num_frames
    first = int(math.floor(total * config.trim_fraction))
    last = int(math.ceil(total * (1.0 - config.trim_fraction)))
    span = last - first
    length = nearest_frame(config.clip_seconds * info.fps)
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
        samples = [min(end - 1, start + nearest_frame(t * info.fps)) for t in times]
        frames = [min(end - 1, start + nearest_frame(i * info.fps / config.fps)) for i in range(config.train_frames)]
        plans.append(ClipPlan(clip_id_for(info.name or Path(info.path).name, k), info.path, info.fps, k, start, end, samples, times, frames,
                              config.fps))
    return plans


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
        raise DatasetError(f"shard must be i/n with 0 <= i < n (shards are numbered from 0: 0/{count} .. "
                           f"{max(count, 1) - 1}/{count}), got {index_no}/{count}.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if count == 1 else f".{index_no}-of-{count}"
    table = load_annotations(annotations) if annotations else {}
    if annotator is None and not table and not plan_only:
        annotator = gemini_annotator(max_side=config.max_side)
    summary = BuildSummary()
    named = find_named_videos(inputs)
    summary.videos = len(named)

    # 1. probe + perceptual hashes of every video (cached; the same in every shard)
    hash_path = out / f"phash{suffix}.jsonl"
    # keyed by name, size and mtime (not the absolute path), so a moved folder keeps its cache
    cached = {(r.get("name", r["path"]), r["size"], r["mtime"]): r for r in _read_jsonl(hash_path)}
    kept: list[tuple[VideoInfo, list[int]]] = []
    for path, name in tqdm(named.items(), desc="probing videos", disable=not progress, unit="video"):
        stat = path.stat()
        key = (name, stat.st_size, stat.st_mtime_ns)
        entry = cached.get(key)
        if entry is None:
            entry = {"path": str(path.resolve()), "name": name, "size": key[1], "mtime": key[2]}
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
        info = VideoInfo(**{**entry["info"], "path": str(path), "name": name})
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
    summary.min_duration_s = config.min_duration_s
    if plan_only:
        lines = []
        for info in mine:
            for plan in plan_clips(info, config):
                lines.append(json.dumps({**asdict(plan), "source": _source_for_manifest(plan.source, out)},
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
                        clip_id=plan.clip_id, source=_source_for_manifest(plan.source, out), source_fps=plan.source_fps,
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
    # clips retried on a later run were appended at the end: restore the one canonical order (that of a single
    # uninterrupted run, and of merged shards)
    sort_manifest(out / f"manifest{suffix}.jsonl")
    return summary
