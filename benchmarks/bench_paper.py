"""The paper's Tables 1 and 2 at toy scale, scored by the toy world's pixel oracle (mean ± std over seeds).

Table 1 — video-level against frame-level prompting. "Video-level" is a toy transformer trained exactly like the
bundled one's last phase (``training/finetune.py``, Diffusion Forcing; same clips, steps, learning rate and seed, and
with ``--baseline-from`` the same start) but with one caption per clip (the whole story as prose), and given the
whole story at inference; "frame-level" is the bundled toy model with the story's timeline. Short videos are one
training window (33 frames); long ones are 4x that (129 frames; ``--long-frames``), sampled with PMWD. Both rows of a
length use the same stories and seeds, so the script also prints their paired differences.

Table 2b (``--hold-frames``) — the three samplers on stories of 2-3 long scenes (a quarter of the video or more),
scored on how well each scene keeps, to its end, the shape's identity and size it started with
(``toyworld.scene_hold``): the property in which an autoregressive sampler's error accumulates.

Table 2 — PMWD against sequential sliding window and FIFO, long videos with frame-level prompts, bundled model, at
each of ``--long-frames`` (e.g. 129 257 513). The three samplers run on the same story with the same seed, so besides
``mean ± std`` per sampler the script reports the *paired* differences (PMWD − FIFO, PMWD − sliding: the mean of
the per-story differences with its 95% Student-t interval, ``framecap_core.metrics.paired_difference``); a ``*``
marks an interval that excludes zero.

Columns: Confusion Degree (eqs. 3-5, lower is better), video-level consistency (eq. 2), frame-level consistency, and
a quality-drift proxy: how far the last quarter of the frames strays from the toy world's palette (mean RGB distance
of each pixel to its nearest palette colour, 0..1) — toy frames are flat palette colours, so error accumulation
shows up as off-palette pixels.

    python benchmarks/bench_paper.py --seeds 3                # Table 2 (needs only the bundled model)
    python benchmarks/bench_paper.py --seeds 3 --table1       # also trains the video-level baseline (as long as the toy build's last phase)
    python benchmarks/bench_paper.py --seeds 10 --long-frames 129 257 513   # Table 2 at 4x, 8x and 16x, paired
    python benchmarks/bench_paper.py --seeds 10 --skip-table2 --hold-frames 513   # Table 2b only
    python benchmarks/bench_paper.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framecap_core import toyworld as tw  # noqa: E402
from framecap_core.metrics import evaluate_video, format_paired_table, format_table  # noqa: E402
from framecap_core.timeline import Scene, Timeline  # noqa: E402

COLUMNS = (
    ("confusion_degree", "Confusion Degree ↓"),
    ("video_consistency", "Video-level consistency ↑"),
    ("frame_consistency", "Frame-level consistency ↑"),
    ("drift", "Drift (off-palette, last quarter) ↓"),
)
HOLD_COLUMNS = (
    ("identity_hold", "Identity held ↑"),
    ("size_drift", "Size drift ↓"),
    ("frame_consistency", "Frame-level consistency ↑"),
    ("drift", "Drift (off-palette, last quarter) ↓"),
)
SHORT, LONG = 33, 129
SAMPLERS = (("fifo", "FIFO"), ("sliding", "Sequential sliding window"), ("pmwd", "PMWD"))
PAIRS = (("PMWD − FIFO", "PMWD", "FIFO"), ("PMWD − sliding", "PMWD", "Sequential sliding window"))


def off_palette(frames: np.ndarray) -> float:
    """Mean distance (0..1) of each pixel to its nearest toy palette colour."""
    palette = np.array(list(tw.COLOURS.values()), np.float32) / 255.0
    x = frames.astype(np.float32).reshape(-1, 1, 3) / 255.0
    return float(np.sqrt(((x - palette) ** 2).sum(-1)).min(-1).mean() / np.sqrt(3))


def drift(frames: np.ndarray) -> float:
    return off_palette(frames[-max(1, len(frames) // 4):])


def story_for(seed: int, frames: int, scenes: tuple[int, int]) -> tw.ToyStory:
    return tw.random_story(10_000 + seed, num_frames=frames, num_scenes=scenes, min_scene_frames=12)


def long_scene_story(seed: int, frames: int) -> tw.ToyStory:
    """2-3 scenes, each at least a quarter of the video (64+ frames at 257): where a sampler's errors accumulate."""
    return tw.random_story(11_000 + seed, num_frames=frames, num_scenes=(2, 3), min_scene_frames=frames // 4)


def scenes_for(frames: int) -> tuple[int, int]:
    """Scene count range of a long story: 4-6 scenes per 129 frames (about one per 2 s at 16 fps)."""
    return (4, 6) if frames <= LONG else (4 * frames // LONG, 6 * frames // LONG)


def score(frames: np.ndarray, story: tw.ToyStory) -> dict[str, float]:
    timeline = story.timeline()
    s = evaluate_video(tw.OracleEmbedder(), frames, timeline, prompt=tw.story_text(story))
    return {**s.as_dict(), "drift": drift(frames)}


def score_hold(frames: np.ndarray, story: tw.ToyStory) -> dict[str, float]:
    return {**score(frames, story), **tw.scene_hold(frames, story)}


def toy_defaults() -> dict:
    """The bundled toy model's generation defaults (its ``framecap.json``), as ``framecap generate --model toy``
    uses them; one window is SHORT frames."""
    from framecap_core.model_settings import read_model_settings
    from framecap_core.models import TOY_MODEL_DIR

    return read_model_settings(TOY_MODEL_DIR).generation_defaults


def run_generation(model, timeline: Timeline, method: str, seed: int) -> np.ndarray:
    from framecap_core.pipeline import GenerationSettings, generate

    d = toy_defaults()
    settings = GenerationSettings(method=method, window=d["window"], overlap=d["overlap"], steps=d["steps"],
                                  guidance=d["guidance"], shift=d["shift"], seed=seed, width=d["width"],
                                  height=d["height"], fps=16, negative=d["negative"])
    return np.asarray(generate(model, timeline, settings).frames)


def video_level_timeline(story: tw.ToyStory) -> Timeline:
    return Timeline([Scene(0, story.num_frames, tw.story_text(story))], num_frames=story.num_frames)


def bundled_build() -> dict:
    """How the bundled toy model was built (``framecap.json`` "build"): the baseline is trained the same way."""
    from framecap_core.model_settings import read_model_settings
    from framecap_core.models import TOY_MODEL_DIR

    return read_model_settings(TOY_MODEL_DIR).build


def train_video_level(work: Path, steps: int, clips: int, threads: int, seed: int = 0, *,
                      start_from: Path | None = None, learning_rate: float = 1e-3, grow: str | None = None) -> Path:
    """The video-level baseline: the toy build's data and training, one caption (the story) per clip. From a random
    transformer, or (``start_from``, a toy model folder) from the transformer the bundled model's last training phase
    started from, grown as that phase grew it (``grow``), so the two differ only in the captions of that phase."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_toy_model as build
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    from framecap_core.models import TOY_MODEL_DIR

    start = f"_from_{start_from.resolve().parent.name}_{start_from.name}" if start_from else ""
    start += f"_grown_{grow}" if grow else ""
    out = f"video_level_seed{seed}_{clips}clips_{steps}steps_lr{learning_rate:g}{start}"  # a finished run is reused
    export = work / out / "framecap_transformer.safetensors"
    if export.is_file():
        return export
    work.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(TOY_MODEL_DIR / "tokenizer"))
    enc = UMT5EncoderModel.from_pretrained(str(TOY_MODEL_DIR / "text_encoder")).eval()
    vae = AutoencoderKLWan.from_pretrained(str(TOY_MODEL_DIR / "vae")).eval()
    stories = build.make_dataset(clips, seed + 2)  # the bundled model's training stories
    build.write_cache(stories, work / "cache_global", vae, enc, tok, global_captions=True)
    # the bundled transformer's shapes (the build script's current config may be newer than the bundled model)
    config = {k: v for k, v in WanTransformer3DModel.load_config(str(TOY_MODEL_DIR / "transformer")).items()
              if not k.startswith("_")}
    if start_from:
        transformer = WanTransformer3DModel.from_pretrained(str(start_from / "transformer")).eval()
        if grow:
            transformer = build.grow_transformer(transformer, grow, seed)
    else:
        transformer = build.make_transformer(seed, **config)
    build.save_folder(work / "base", transformer=transformer, vae=vae, text_encoder=enc, tokenizer=tok,
                      text_len=4 * build.TEXT_LEN)
    cfg = build.train_config(work, steps, seed, cache="cache_global", out=out, text_len=4 * build.TEXT_LEN,
                             learning_rate=learning_rate)
    build.run_finetune(cfg, threads)
    return export


def table(rows, label="Method") -> str:
    return format_table(rows, columns=COLUMNS, label=label)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--table1", action="store_true", help="train the video-level baseline and run Table 1")
    parser.add_argument("--train-steps", type=int, help="baseline training steps (default: the bundled model's)")
    parser.add_argument("--clips", type=int, help="baseline training clips (default: the bundled model's)")
    parser.add_argument("--learning-rate", type=float, help="baseline peak learning rate (default: the bundled "
                        "model's last phase's)")
    parser.add_argument("--baseline-from", help="a toy model folder to start the baseline's transformer from (the "
                        "one the bundled model's last phase started from: the two then differ only in the captions "
                        "of that phase); default: a random transformer")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_paper"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--long-frames", type=int, nargs="+", default=[LONG],
                        help="frames of the long videos (4k+1; default 129, 4x the training window); several values "
                        "run Table 2 at each length (Table 1's long rows use the first)")
    parser.add_argument("--hold-frames", type=int, nargs="*", default=[],
                        help="also run Table 2b at these lengths: stories of 2-3 long scenes, scored on how well each "
                        "scene keeps its shape's identity and size to its end (toyworld.scene_hold)")
    parser.add_argument("--skip-table2", action="store_true", help="skip Table 2 (run only 2b and/or Table 1)")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from framecap_core.models import load_wan

    for frames in [*args.long_frames, *args.hold_frames]:
        if frames < SHORT or (frames - 1) % 4:
            parser.error(f"--long-frames and --hold-frames must be 4k+1 and at least {SHORT}; got {frames}")
    if any(frames < 193 for frames in args.hold_frames):
        parser.error("--hold-frames needs at least 193 frames: scenes of a quarter of the video or more must reach "
                     "the 48 frames toyworld.scene_hold measures")
    if args.baseline_from and not (Path(args.baseline_from) / "transformer").is_dir():
        parser.error(f"--baseline-from {args.baseline_from}: not a toy model folder (no transformer/ in it); the README "
                     "gives the git archive command that makes it")
    if args.table1 and args.skip_table2:
        parser.error("Table 1's long frame-level row is Table 2's PMWD row: --table1 needs Table 2")
    results: dict[str, dict] = {"table1": {}, "table2": {}, "table2b": {}}
    t0 = time.time()
    frame_model = load_wan("toy", device="cpu")
    stories_by_length = {frames: [story_for(s, frames, scenes_for(frames)) for s in range(args.seeds)]
                         for frames in args.long_frames}

    def compare_samplers(table_name: str, stories: list[tw.ToyStory], scorer, columns) -> dict[str, list]:
        """Every sampler on every story (seed = the story's index: the same noise for all three), then the table
        and the paired differences."""
        frames = stories[0].num_frames
        by_sampler = {}
        for method, name in SAMPLERS:
            by_sampler[name] = [scorer(run_generation(frame_model, story.timeline(), method, seed), story)
                                for seed, story in enumerate(stories)]
            print(f"[{time.time() - t0:.0f} s] {table_name}, {frames} frames: {name} done", file=sys.stderr)
        print(f"\n{table_name} (toy): samplers, {frames} frames, frame-level prompts\n")
        print(format_table(list(by_sampler.items()), columns=columns))
        if args.seeds >= 2:
            print(f"\nPaired differences at {frames} frames (same story and seed), mean [95% interval]\n")
            print(format_paired_table([(label, by_sampler[a], by_sampler[b]) for label, a, b in PAIRS],
                                      columns=columns))
        return by_sampler

    # Table 2: samplers on long videos, frame-level prompts; the same story and seed for every sampler (paired)
    if not args.skip_table2:
        for frames, stories in stories_by_length.items():
            results["table2"][str(frames)] = compare_samplers("Table 2", stories, score, COLUMNS)
    # Table 2b: long scenes, where an autoregressive sampler's errors accumulate
    for frames in args.hold_frames:
        stories = [long_scene_story(s, frames) for s in range(args.seeds)]
        results["table2b"][str(frames)] = compare_samplers("Table 2b, long scenes", stories, score_hold,
                                                           HOLD_COLUMNS)

    if args.table1:
        long_frames = args.long_frames[0]
        long_label = f"long ({(long_frames - 1) / (SHORT - 1):g}x)"
        built = bundled_build()
        last_phase = (built.get("phases") or [built])[-1]
        export = train_video_level(Path(args.work), args.train_steps or last_phase["train_steps"],
                                   args.clips or last_phase.get("clips", built["clips"]), args.threads,
                                   built["seed"], start_from=Path(args.baseline_from) if args.baseline_from else None,
                                   learning_rate=args.learning_rate or last_phase["learning_rate"],
                                   grow=last_phase.get("grow"))
        video_model = load_wan("toy", checkpoint=export, text_len=4 * 16, device="cpu")
        short_stories = [story_for(s, SHORT, (2, 3)) for s in range(args.seeds)]
        def runs(model, stories, video_level: bool):
            return [score(run_generation(model, video_level_timeline(st) if video_level else st.timeline(), "pmwd",
                                         i), st) for i, st in enumerate(stories)]

        rows = {
            "DF + video-level prompt, short": runs(video_model, short_stories, True),
            "DF + frame-level prompt, short": runs(frame_model, short_stories, False),
            f"DF + video-level prompt, {long_label}": runs(video_model, stories_by_length[long_frames], True),
            f"DF + frame-level prompt, {long_label}": results["table2"][str(long_frames)]["PMWD"],
        }
        results["table1"] = rows
        print("\nTable 1 (toy): video-level vs frame-level prompting\n")
        print(table(list(rows.items())))
        if args.seeds >= 2:  # the same stories and seeds in both rows of a length: paired
            names = list(rows)
            print("\nPaired differences, frame-level − video-level (same story and seed), mean [95% interval]\n")
            print(format_paired_table([("frame − video, short", rows[names[1]], rows[names[0]]),
                                       (f"frame − video, {long_label}", rows[names[3]], rows[names[2]])],
                                      columns=COLUMNS))
    print(f"\n{args.seeds} seeds, {time.time() - t0:.0f} s", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
