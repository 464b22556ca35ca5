"""The dataset manifest: one JSON Lines record per clip (:class:`ClipRecord`), read, appended and merged.

Manifest line (one JSON object per clip)::

    {"clip_id": "walk-3f2a9c01-s2", "source": "/data/walk.mp4", "source_fps": 24.0, "segment": 2,
     "start_frame": 7128, "end_frame": 7320,            # clip span in source frames, end exclusive
     "sample_frames": [7128, 7136, ...],               # annotated source frames (every 8th at 24 fps)
     "captions": ["a man walks ...", ...],             # one per sample frame
     "global_caption": "a man walks his dog in a park",
     "fps": 16, "frame_indices": [7128, 7129, 7131, ...],   # source frame of every training frame (4k+1 of them)
     "clip_path": null}                                # or a file (relative to the manifest) holding those frames
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..fileio import atomic_write_text
from ..grid import num_latents_for_frames

MANIFEST_FORMAT = "framecap-manifest/1"


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
        return num_latents_for_frames(len(self.frame_indices))

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


def _canonical_order(record: ClipRecord) -> tuple[str, int, str]:
    # the order one uninterrupted build writes: videos by source, then segments
    return record.source, record.segment, record.clip_id


def merge_manifests(paths: Iterable[str | os.PathLike], output: str | os.PathLike) -> int:
    """Merge shard manifests (``manifest.<i>-of-<n>.jsonl``) into one, atomically, in the order one build of all
    the videos writes (by source, then segment), so the merged file equals a one-machine build's byte for byte;
    returns the clip count."""
    records: dict[str, ClipRecord] = {}
    for path in paths:
        for record in read_manifest(path):
            records.setdefault(record.clip_id, record)
    ordered = sorted(records.values(), key=_canonical_order)
    atomic_write_text(output, "".join(r.to_json() + "\n" for r in ordered))
    return len(ordered)


def sort_manifest(path: str | os.PathLike) -> None:
    """Rewrite a manifest (atomically) in the canonical order if it is not in it; a missing file is left alone."""
    if not Path(path).is_file():
        return
    records = read_manifest(path)
    ordered = sorted(records, key=_canonical_order)
    if [r.clip_id for r in ordered] != [r.clip_id for r in records]:
        atomic_write_text(path, "".join(r.to_json() + "\n" for r in ordered))
