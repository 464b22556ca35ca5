"""Build a frame-level captioned video dataset (paper section 3) as a JSON Lines manifest.

Reads top to bottom: arguments, the recipe's numbers, the annotator (Gemini, a local OpenAI-compatible server with
a vision model, or captions brought from a file), the build, the summary. The logic lives in ``framecap_core.data``.

Examples::

    # the paper's recipe, annotated by Gemini (key from GEMINI_API_KEY)
    python training/build_dataset.py /data/raw_videos --out data/framecap

    # annotated by a vision model on a local server (Ollama here; --base-url for LM Studio, llama.cpp, vLLM)
    python training/build_dataset.py /data/raw_videos --out data/framecap --annotator openai --model qwen2.5vl:7b

    # on 8 machines: shards are numbered from 0, machine i (0..7) runs shard i/8, then merge the shard manifests
    # (clip ids come from names relative to the source folder, so each machine may mount the videos anywhere)
    python training/build_dataset.py /data/raw_videos --out data/framecap --shard 3/8
    python training/build_dataset.py --merge data/framecap/manifest.*-of-8.jsonl --out data/framecap

    # list the clips, caption them with another tool, bring the captions back
    python training/build_dataset.py /data/raw_videos --out data/framecap --plan-only
    python training/build_dataset.py /data/raw_videos --out data/framecap --annotations my_captions.jsonl

A rerun continues where a stopped one ended (finished clips are skipped); unreadable videos are logged and skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from framecap_core.data import (  # noqa: E402
    ANNOTATOR_BACKENDS,
    DatasetConfig,
    build_dataset,
    llm_annotator,
    merge_manifests,
)
from framecap_core.errors import FrameCapError  # noqa: E402


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like 3/8 (this machine's index / machine count), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(
            f"--shard {text}: shards are numbered from 0, so the index must be in 0..{n - 1} "
            f"(the machines of an {n}-way build run --shard 0/{n} .. {n - 1}/{n})")
    return i, n


def _gemini_key_set() -> bool:
    import os

    from framecap_core.prompting.gemini import API_KEY_ENV_VARS

    return any(os.environ.get(name, "").strip() for name in API_KEY_ENV_VARS)


def parse_args(argv=None) -> argparse.Namespace:
    defaults = DatasetConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="*", help="video files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (manifest.jsonl, phash.jsonl, plan.jsonl)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help="i/n: this machine's share of the videos")
    p.add_argument("--annotations", help="captions made elsewhere (JSON Lines: clip_id or source+segment, captions)")
    p.add_argument("--plan-only", action="store_true", help="write plan.jsonl (clips to annotate) and stop")
    p.add_argument("--merge", nargs="+", metavar="MANIFEST", help="merge shard manifests into OUT/manifest.jsonl")
    # the recipe (paper section 3)
    p.add_argument("--min-duration", type=float, default=defaults.min_duration_s, help="keep videos longer (s)")
    p.add_argument("--trim", type=float, default=defaults.trim_fraction, help="fraction dropped at each end")
    p.add_argument("--segments", type=int, default=defaults.num_segments, help="segments (one clip each) per video")
    p.add_argument("--clip-seconds", type=float, default=defaults.clip_seconds, help="clip length")
    p.add_argument("--sample-fps", type=float, default=defaults.sample_fps, help="rate at which frames are counted")
    p.add_argument("--sample-every", type=int, default=defaults.sample_every, help="annotate every n-th frame")
    p.add_argument("--fps", type=int, default=defaults.fps, help="training frame rate of the clips")
    p.add_argument("--phash-frames", type=int, default=defaults.phash_frames, help="frames hashed per video")
    p.add_argument("--phash-threshold", type=float, default=defaults.phash_threshold,
                   help="mean Hamming distance (of 64 bits) at or below which a video is a duplicate")
    # the annotator
    p.add_argument("--annotator", choices=ANNOTATOR_BACKENDS, default="gemini",
                   help="who writes the captions: gemini (key from GEMINI_API_KEY) or openai (an OpenAI-compatible "
                        "server you run with a vision model; a key only from OPENAI_API_KEY)")
    p.add_argument("--model", "--gemini-model", dest="model", default=None,
                   help="annotation model (default: gemini-2.5-pro for gemini, the vision model qwen2.5vl:7b for "
                        "openai)")
    p.add_argument("--base-url", "--gemini-base-url", dest="base_url", default=None,
                   help="the server: for openai its URL up to /v1 (default: Ollama's http://127.0.0.1:11434/v1); for "
                        "gemini another endpoint (proxies, tests)")
    p.add_argument("--max-side", type=int, default=defaults.max_side, help="longest side of the images sent")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        # shard manifests -> one manifest
        if args.merge:
            count = merge_manifests(args.merge, out / "manifest.jsonl")
            print(f"merged {len(args.merge)} manifests: {count} clips in {out / 'manifest.jsonl'}")
            return 0
        if not args.inputs:
            print("error: give video files or folders (or --merge)", file=sys.stderr)
            return 2

        # the recipe's numbers
        config = DatasetConfig(
            min_duration_s=args.min_duration, trim_fraction=args.trim, num_segments=args.segments,
            clip_seconds=args.clip_seconds, sample_fps=args.sample_fps, sample_every=args.sample_every, fps=args.fps,
            phash_frames=args.phash_frames, phash_threshold=args.phash_threshold, max_side=args.max_side,
        )

        # who writes the captions: the --annotator LLM, unless every clip is in --annotations (then it is never called)
        annotator = None
        if not args.plan_only and args.annotator == "gemini" and not args.annotations and not _gemini_key_set():
            # without a key every clip would fail one by one with a message about `framecap prompt`; say it once,
            # with this script's own ways out
            raise FrameCapError(
                "no Gemini API key to annotate the clips: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment, "
                "annotate with a local vision model (--annotator openai --model qwen2.5vl:7b), or caption the clips "
                "elsewhere (--plan-only writes plan.jsonl; bring the captions back with --annotations FILE)."
            )
        if not args.plan_only:
            annotator = llm_annotator(args.annotator, model=args.model, base_url=args.base_url, max_side=args.max_side)

        # the build: probe + dedup, plan, annotate, append to the manifest
        summary = build_dataset(
            args.inputs, out, config=config, annotator=annotator, annotations=args.annotations, shard=args.shard,
            plan_only=args.plan_only, progress=not args.no_progress,
        )
    except FrameCapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print(summary.report())
    reason = summary.nothing_kept_reason()
    if reason:
        print(f"error: nothing to build: {reason}", file=sys.stderr)
        return 1
    return 0 if not summary.clips_failed else 1


if __name__ == "__main__":
    sys.exit(main())
