"""Frame-level training data: dataset construction, the JSON Lines manifest, the latent cache, the training dataset.

Three stages, each resumable and each writing only through atomic or append-and-fsync writes:

1. **Construction** (:func:`build_dataset`, paper section 3, :mod:`.build`): long source videos (longer than
   ``min_duration_s``) are deduplicated by a perceptual hash (:mod:`.hashing`), their first and last
   ``trim_fraction`` dropped, the rest split into ``num_segments`` segments with one ``clip_seconds`` clip from the
   middle of each; inside a clip every ``sample_every``-th frame at ``sample_fps`` is annotated (frames sent as
   images to a vision LLM — Gemini or a local OpenAI-compatible server — with the shared annotation template, or
   captions brought with an annotations file;
   :mod:`.annotations`). One manifest line per clip (:mod:`.manifest`).
2. **Latent cache** (:func:`build_latent_cache`, :mod:`.encode`): each clip's training frames are read, resized and
   center-cropped (:mod:`.video_io`), encoded by the Wan VAE into *normalized* latents ``(z - mean) / std`` (what
   the transformer sees), and the clip's unique captions are encoded once by the text encoder. Both go into
   safetensors shards plus an ``index.json`` (:mod:`.cache`); training then never runs the VAE or UMT5.
3. **Training dataset** (:class:`LatentCache`, :mod:`.cache`): random crops of ``window_latents`` latent frames with
   the frame-major stacked caption context of frame-level attention.

Training frame ``i`` (at ``fps``) takes the caption of the sample frame nearest to it in time; latent ``j`` then
takes the caption of most of its pixel frames, through :meth:`framecap_core.timeline.Timeline.latent_caption_indices`
(:mod:`.captions`).
"""

from .annotations import ANNOTATOR_BACKENDS, Annotator, gemini_annotator, llm_annotator, load_annotations
from .build import BuildSummary, ClipPlan, DatasetConfig, build_dataset, clip_id_for, nearest_frame, plan_clips
from .cache import CACHE_FORMAT, CACHE_INDEX, EMPTY_CAPTION_FILE, CacheWriter, LatentCache, cached_clip_ids
from .captions import clip_latent_captions, frame_captions
from .encode import CacheSummary, build_latent_cache, encode_video_latents
from .hashing import hamming, phash, video_distance
from .manifest import MANIFEST_FORMAT, ClipRecord, ManifestWriter, merge_manifests, read_manifest
from .video_io import (
    VIDEO_EXTENSIONS,
    VideoInfo,
    find_named_videos,
    find_videos,
    probe_video,
    read_clip_frames,
    read_video_frames,
)

__all__ = [
    "ANNOTATOR_BACKENDS",
    "CACHE_FORMAT",
    "CACHE_INDEX",
    "EMPTY_CAPTION_FILE",
    "MANIFEST_FORMAT",
    "VIDEO_EXTENSIONS",
    "Annotator",
    "BuildSummary",
    "CacheSummary",
    "CacheWriter",
    "ClipPlan",
    "ClipRecord",
    "DatasetConfig",
    "LatentCache",
    "ManifestWriter",
    "VideoInfo",
    "build_dataset",
    "build_latent_cache",
    "cached_clip_ids",
    "clip_id_for",
    "nearest_frame",
    "clip_latent_captions",
    "encode_video_latents",
    "find_named_videos",
    "find_videos",
    "frame_captions",
    "gemini_annotator",
    "llm_annotator",
    "hamming",
    "load_annotations",
    "merge_manifests",
    "phash",
    "plan_clips",
    "probe_video",
    "read_clip_frames",
    "read_manifest",
    "read_video_frames",
    "video_distance",
]
