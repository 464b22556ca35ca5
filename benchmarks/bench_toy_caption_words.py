"""What each caption word is worth to a toy model's training loss: why some attributes learn slowly.

The toy model learns an attribute only as fast as getting it wrong costs in its training loss. This measures that
cost directly: the Diffusion Forcing flow-matching loss on held-out toy clips with their true frame-level captions,
and again with one attribute's word swapped for another value in every caption (the videos, windows, noise and
timesteps stay the same, so each swapped draw pairs with its true draw). A large increase means the loss strongly
rewards reading that word; a small one means the word moves few latent values, so its gradient is small beside the
rest of the loss. Reported: the true-caption loss and, per attribute, the mean paired increase with a 95% interval
over the draws.

Held-out clips: 49-frame toy stories from ``toyworld.random_story(31000 + i)`` (1-4 scenes, as the build's training
clips), a seed range nothing else draws from.

    python benchmarks/bench_toy_caption_words.py                                   # the bundled model, ~2 min
    python benchmarks/bench_toy_caption_words.py --model toy --model runs/toy_candidate   # several models
    python benchmarks/bench_toy_caption_words.py --model runs/w/train/checkpoints/step-00003000/model.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framecap_core import toyworld as tw  # noqa: E402

FIRST_SEED = 31_000
OPTIONS = tw.ATTRIBUTE_VALUES


def _build_script():
    spec = importlib.util.spec_from_file_location("framecap_build_toy_model", ROOT / "scripts" / "build_toy_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def swap_attribute(story: tw.ToyStory, attribute: str, rng: np.random.Generator) -> tw.ToyStory:
    """``story`` with ``attribute`` of every scene replaced by another value (a shape colour never equal to the
    background, and the other way round); scene lengths unchanged."""
    scenes = []
    for scene in story.scenes:
        avoid = {getattr(scene, attribute)}
        if attribute == "colour":
            avoid.add(scene.background)
        if attribute == "background":
            avoid.add(scene.colour)
        options = [o for o in OPTIONS[attribute] if o not in avoid]
        scenes.append(replace(scene, **{attribute: options[int(rng.integers(len(options)))]}))
    return replace(story, scenes=scenes)


def load_transformer(spec: str):
    """A toy model's transformer: ``toy``, a toy-model folder, or a training checkpoint's ``model.safetensors``
    (loaded into the bundled model's transformer). Also returns the folder whose VAE and text encoder to use."""
    from safetensors.torch import load_file

    from framecap_core.models import load_wan

    if spec.endswith(".safetensors"):
        model = load_wan("toy", device="cpu", dtype="fp32")
        model.transformer.load_state_dict(load_file(spec))
        return model
    return load_wan(spec, device="cpu", dtype="fp32")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="toy, a toy-model folder or a checkpoint's model.safetensors "
                        "(repeat to compare; default toy)")
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--draws", type=int, default=48, help="fixed training windows (batch 16) per loss")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from framecap_core.data import LatentCache
    from framecap_core.metrics import format_paired_table
    from framecap_core.training import TrainConfig, df_flow_matching_loss, draw_batch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    build = _build_script()
    stories = [tw.random_story(FIRST_SEED + i, num_frames=build.CLIP_FRAMES, num_scenes=(1, 4))
               for i in range(args.clips)]
    rows, means = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # the build's own training settings (window, batch, Diffusion Forcing noise), without caption dropout
        config = TrainConfig.from_file(build.train_config(Path(tmp), 1, 12345),
                                       ["caption_dropout=0", f"base_model={ROOT / 'framecap_core' / 'toy_model'}"])
        for spec in args.model or ["toy"]:
            model = load_transformer(spec)
            transformer = model.transformer.eval()
            losses = {}
            for attribute in ("true", *OPTIONS):
                rng = np.random.default_rng(7)
                told = None if attribute == "true" else [swap_attribute(s, attribute, rng) for s in stories]
                cache_dir = Path(tmp) / f"{len(rows)}-{attribute}"
                with torch.no_grad():
                    build.write_cache(stories, cache_dir, model.vae, model.text_encoder, model.tokenizer,
                                      captions_from=told)
                    cache = LatentCache(cache_dir)
                    run = dataclasses.replace(config, cache_dir=str(cache_dir))
                    losses[attribute] = [
                        df_flow_matching_loss(transformer, b["latents"], b["context"], b["sigmas"], b["noise"]).item()
                        for b in (draw_batch(cache, run, step, 0) for step in range(args.draws))]
            means.append((spec, float(np.mean(losses["true"]))))
            swapped = [{a: losses[a][i] for a in OPTIONS} for i in range(args.draws)]
            true = [{a: losses["true"][i] for a in OPTIONS} for i in range(args.draws)]
            rows.append((spec, swapped, true))
            print(f"[{time.time() - t0:.0f} s] {spec}", file=sys.stderr)
    print(f"\nFlow-matching loss on {args.clips} held-out toy clips ({FIRST_SEED}..), {args.draws} fixed windows\n")
    print("| model | loss, true captions |\n|---|---|")
    for spec, mean in means:
        print(f"| {spec} | {mean:.4f} |")
    print("\nIncrease when one attribute's word is swapped in every caption (swapped - true, paired by window), "
          "mean [95% interval]\n")
    print(format_paired_table(rows, columns=[(a, a) for a in OPTIONS], label="model"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
