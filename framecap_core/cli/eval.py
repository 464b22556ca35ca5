"""``framecap eval``: score videos against their timelines with the paper's metrics and print a table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from framecap_core.errors import ConfigError, TimelineError

DESCRIPTION = """\
Score every VIDEO.mp4 in FOLDER against its timeline (VIDEO.timeline.json, as `framecap generate` writes it, or
VIDEO.json) with the paper's metrics: Confusion Degree (eqs. 3-5, lower is better), video-level text-video
consistency (eq. 2: the whole story against the video) and frame-level text-video consistency (each frame against
its own caption). Subfolders holding videos become one table row each (e.g. one folder per method); otherwise
FOLDER is one row. Values are mean ± std over the row's videos.

Embedders:
  toy         the toy world's pixel oracle (exact for videos of the bundled toy model; no weights)
  clip:PATH   a local transformers CLIP folder (frames embedded one by one; the video embedding averages 8
              uniformly sampled frames, a ViCLIP-style stand-in)

Examples:
  framecap eval runs/demo --embedder toy
  framecap eval runs/compare --embedder clip:/models/clip-vit-base-patch32 --json scores.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="score videos + timelines (Confusion Degree, text-video consistency)", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="folder of VIDEO.mp4 + VIDEO.timeline.json (or subfolders of them)")
    parser.add_argument("--embedder", default="toy", help="toy | clip:PATH (default: toy)")
    parser.add_argument("--stride", type=int, default=4,
                        help="score every N-th pixel frame (default 4: one frame per latent)")
    parser.add_argument("--per-video", action="store_true", help="also print one line per video")
    parser.add_argument("--json", dest="json_out", help="write all scores to this JSON file")
    parser.set_defaults(func=run)


def make_embedder(spec: str):
    """``toy`` or ``clip:PATH`` -> an :class:`~framecap_core.metrics.Embedder`."""
    if spec == "toy":
        from framecap_core.toyworld import OracleEmbedder

        return OracleEmbedder()
    if spec.startswith("clip:"):
        from framecap_core.metrics import ClipEmbedder

        return ClipEmbedder(spec[len("clip:"):])
    raise ConfigError(f"Unknown embedder {spec!r}; use 'toy' or 'clip:PATH' (a local CLIP folder).")


def timeline_for(video: Path) -> Path | None:
    for candidate in (video.with_suffix(".timeline.json"), video.with_suffix(".json")):
        if candidate.is_file():
            return candidate
    return None


def find_groups(folder: Path) -> list[tuple[str, list[Path]]]:
    """``[(row name, videos)]``: each subfolder with videos is a row; else the folder itself."""
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; pass the folder holding VIDEO.mp4 + VIDEO.timeline.json files.")
    groups = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        videos = sorted(sub.glob("*.mp4"))
        if videos:
            groups.append((sub.name, videos))
    own = sorted(folder.glob("*.mp4"))
    if own:
        groups.insert(0, (folder.name or str(folder), own))
    if not groups:
        raise ConfigError(f"No .mp4 videos in {folder} or its subfolders; generate some with `framecap generate`.")
    return groups


def score_video(embedder, video: Path, stride: int) -> dict[str, Any]:
    from framecap_core.metrics import evaluate_video
    from framecap_core.timeline import Timeline
    from framecap_core.video import read_mp4

    tl_path = timeline_for(video)
    if tl_path is None:
        raise TimelineError(
            f"No timeline for {video}: expected {video.with_suffix('.timeline.json').name} beside it (written by "
            f"`framecap generate`) or {video.with_suffix('.json').name}."
        )
    timeline = Timeline.from_json(tl_path.read_text(encoding="utf-8"))
    frames = read_mp4(video)
    if len(frames) != timeline.num_frames:
        if abs(len(frames) - timeline.num_frames) > 4:
            raise TimelineError(
                f"{video.name} has {len(frames)} frames but its timeline {tl_path.name} covers {timeline.num_frames}; "
                f"pair each video with the timeline it was generated from."
            )
        frames = frames[: timeline.num_frames]
        if len(frames) < timeline.num_frames:  # a codec dropped a frame or two: repeat the last
            import numpy as np

            frames = np.concatenate([frames, np.repeat(frames[-1:], timeline.num_frames - len(frames), axis=0)])
    scores = evaluate_video(embedder, frames, timeline, stride=stride)
    return {"video": str(video), **scores.as_dict()}


def run(args) -> int:
    from framecap_core.metrics import format_table

    embedder = make_embedder(args.embedder)
    groups = find_groups(Path(args.folder))
    rows, everything = [], {}
    for name, videos in groups:
        scores = [score_video(embedder, v, args.stride) for v in videos]
        rows.append((name, scores))
        everything[name] = scores
        if args.per_video:
            for s in scores:
                print(f"{s['video']}: CD {s['confusion_degree']:.4f}  video {s['video_consistency']:.4f}  "
                      f"frame {s['frame_consistency']:.4f}")
    print(format_table(rows))
    if args.json_out:
        from framecap_core.fileio import atomic_write_text

        atomic_write_text(args.json_out, json.dumps({"embedder": args.embedder, "rows": everything}, indent=1))
    return 0
