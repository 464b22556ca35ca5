"""The latent cache on disk: safetensors shards plus ``index*.json``, written by :class:`CacheWriter` and read by
:class:`LatentCache` (random training windows with frame-major stacked captions)."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..fileio import atomic_path, atomic_write_text

CACHE_INDEX = "index.json"
CACHE_FORMAT = "framecap-latent-cache/1"
EMPTY_CAPTION_FILE = "empty_caption.safetensors"  # the empty caption's embedding, for caption dropout


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

        from ..attention import stack_frame_captions

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
