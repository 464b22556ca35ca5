"""What the bundled toy model draws, on stories it has never seen, through the README's main command.

Each story is a random toy story (2-3 scenes, 65 frames) told as prose (``toyworld.story_text``: "A red circle moves
right on a blue background. Then ..."), given to ``framecap generate --model toy --prompt STORY`` exactly as the
README's first command does (the offline prompt builder makes the timeline, the model's own defaults sample it, the
mp4 is written and read back), and every frame is read by the toy oracle and compared with the caption the timeline
gives that frame. Reported: the share of frames whose shape, shape colour, background and motion are right, and of
frames with all four right, over all stories (and the spread over stories); and, pooled over the frame pairs where a
shape should move, the share of steps that go the caption's way and of those that go back (``toyworld.track_steps``:
a model that carries the shape's position only a few frames draws a sawtooth).

Held-out seeds: the stories come from ``toyworld.random_story(HELD_OUT_SEED + i)`` for ``i < --stories``. The toy
build's data uses ``default_rng(seed)`` streams 0-2, the tests fixed stories or small seeds, the paper benchmark
10000+, and tuning used 500-599: nothing else draws from 20000-20999.

    python benchmarks/bench_toy_model.py                   # 24 stories, ~6 min on 2 cores
    python benchmarks/bench_toy_model.py --model runs/toy_build/candidate --stories 8 --first-seed 500   # tuning
    python benchmarks/bench_toy_model.py --json new.json --compare old.json   # paired: same stories, two models
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framecap_core import toyworld as tw  # noqa: E402

HELD_OUT_SEED = 20_000
ATTRIBUTES = ("shape", "colour", "background", "motion")
TARGETS = {"shape": 0.90, "colour": 0.95, "background": 0.98, "motion": 0.80}


def held_out_story(seed: int) -> tw.ToyStory:
    return tw.random_story(seed, num_frames=65, num_scenes=(2, 3), min_scene_frames=12)


def main_command_frames(model: str, story_text: str, out: Path) -> tuple[np.ndarray, list[dict]]:
    """Run the README's main command on ``story_text``; return the frames read back from the mp4 ``[T, H, W, 3]``
    and the caption attributes of every frame from the timeline it wrote."""
    from framecap_core.cli import main
    from framecap_core.timeline import Timeline
    from framecap_core.video import read_mp4

    code = main(["generate", "--model", model, "--prompt", story_text, "--out", str(out), "--quiet",
                 "--no-storyboard"])
    if code != 0:
        raise RuntimeError(f"framecap generate failed ({code}) on {story_text!r}")
    timeline = Timeline.from_json(out.with_name(out.stem + ".timeline.json").read_text())
    truth = [tw.parse_caption(s.caption) for s in timeline.scenes for _ in range(s.num_frames)]
    return np.asarray(read_mp4(out))[: timeline.num_frames], truth


def score_story(frames: np.ndarray, truth: list[dict]) -> dict[str, float]:
    """Share of frames with each attribute right (and all four), and how the shape moves between frames where it
    should move (``toyworld.track_steps``: ``forward`` / ``back`` shares of frame pairs, ``pairs``)."""
    reads = tw.read_video_attributes(frames)
    right = {k: [r[k] == t[k] for r, t in zip(reads, truth, strict=True)] for k in ATTRIBUTES}
    out = {k: float(np.mean(v)) for k, v in right.items()}
    out["all"] = float(np.mean([all(right[k][i] for k in ATTRIBUTES) for i in range(len(truth))]))
    steps = tw.track_steps(frames, truth)
    out.update(forward=steps["forward"], back=steps["back"], pairs=steps["pairs"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy", help="toy (the bundled model) or a toy-model folder")
    parser.add_argument("--stories", type=int, default=24)
    parser.add_argument("--first-seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--compare", help="a --json file of another model on the same stories: also print the "
                        "paired differences (this model - that one) with 95%% intervals")
    args = parser.parse_args(argv)
    earlier = None
    if args.compare:
        if not Path(args.compare).is_file():
            parser.error(f"--compare {args.compare}: no such file (write one with --json on the same stories)")
        earlier = json.loads(Path(args.compare).read_text())
        if earlier["first_seed"] != args.first_seed or len(earlier["stories"]) != args.stories:
            parser.error(f"{args.compare} has stories {earlier['first_seed']}.. ({len(earlier['stories'])}); this "
                         f"run {args.first_seed}.. ({args.stories}): pairs need the same stories")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.stories):
            story = held_out_story(args.first_seed + i)
            frames, truth = main_command_frames(args.model, tw.story_text(story), Path(tmp) / f"story{i}.mp4")
            rows.append(score_story(frames, truth))
            print(f"[{time.time() - t0:.0f} s] story {args.first_seed + i}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1].items() if k != "pairs" and v is not None),
                  file=sys.stderr)
    keys = (*ATTRIBUTES, "all")
    kind = "Held-out toy stories" if args.first_seed >= HELD_OUT_SEED else "Toy stories (NOT held-out seeds)"
    print(f"\n{kind} {args.first_seed}..{args.first_seed + args.stories - 1} (65 frames, 2-3 scenes), "
          f"share of frames right, mean over stories (std across stories)\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    print("| " + " | ".join(f"{np.mean([r[k] for r in rows]):.3f} ({np.std([r[k] for r in rows]):.3f})"
                            for k in keys) + " |")
    pairs = sum(r["pairs"] for r in rows)
    if pairs:  # pooled over stories: a story with still scenes only has no pairs
        share = {k: sum(r[k] * r["pairs"] for r in rows if r["pairs"]) / pairs for k in ("forward", "back")}
        print(f"\nwhere the shape should move ({pairs} frame pairs): {share['forward']:.1%} of steps go the "
              f"caption's way, {share['back']:.1%} go back more than a pixel (a toy video: all forward)")
    print("\ntargets: " + ", ".join(f"{k} >= {v}" for k, v in TARGETS.items()) + "; "
          + ("all met" if all(np.mean([r[k] for r in rows]) >= v for k, v in TARGETS.items()) else "NOT all met"))
    if earlier is not None:
        from framecap_core.metrics import format_paired_table

        print(f"\nPaired differences, this model - {args.compare} (same stories), mean [95% interval]\n")
        print(format_paired_table([("this - that", rows, earlier["stories"])], columns=[(k, k) for k in keys]))
    print(f"{time.time() - t0:.0f} s", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"first_seed": args.first_seed, "stories": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
