"""The shipped fine-tune config for the bundled toy model (``training/configs/toy.json``) improves it: a short run
on new toy clips lowers the loss on held-out toy clips (seeds neither the fine-tune data nor the model's build used),
measured on the same fixed windows, noise and timesteps before and after.

The run uses the config as shipped; only what makes it CI-sized changes: the data (a handful of clips rendered here
instead of a dataset built with ``training/build_dataset.py``), the number of steps, and the output paths.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TOY_CONFIG = REPO / "training" / "configs" / "toy.json"
FINE_TUNE_SEEDS = range(10_000, 10_012)  # the model was built from default_rng(0)'s stories
HELD_OUT_SEEDS = range(20_000, 20_006)  # benchmarks/bench_toy_model.py's held-out range
STEPS = 40
HELD_OUT_DRAWS = 16  # fixed micro-batches: clip, window offset, Diffusion Forcing timesteps and noise


def _load_script(relative: str):
    """A script of the repo (``scripts/...``, ``benchmarks/...``) imported as a module."""
    spec = importlib.util.spec_from_file_location("framecap_" + Path(relative).stem, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_script():
    return _load_script("scripts/build_toy_model.py")


def held_out_loss(transformer, config, cache_dir) -> float:
    """Mean flow-matching loss of ``transformer`` over fixed draws from the cache at ``cache_dir`` (the config's
    window and noise settings, its own seed, no caption dropout)."""
    from framecap_core.data import LatentCache
    from framecap_core.training import df_flow_matching_loss, draw_batch

    held = dataclasses.replace(config, cache_dir=str(cache_dir), seed=12345, caption_dropout=0.0)
    cache = LatentCache(cache_dir)
    transformer.eval()
    with torch.no_grad():
        losses = [df_flow_matching_loss(transformer, b["latents"], b["context"], b["sigmas"], b["noise"]).item()
                  for b in (draw_batch(cache, held, step, 0) for step in range(HELD_OUT_DRAWS))]
    return sum(losses) / len(losses)


def test_toy_config_fine_tune_lowers_held_out_loss(tmp_path):
    from framecap_core import toyworld as tw
    from framecap_core.data import LatentCache
    from framecap_core.models import TOY_MODEL_DIR, load_wan
    from framecap_core.training import TrainConfig, load_base_transformer, prepare_transformer, train

    if not (TOY_MODEL_DIR / "model_index.json").is_file():
        pytest.skip("toy model not built (scripts/build_toy_model.py)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build = _build_script()
        model = load_wan("toy", device="cpu", dtype="fp32")

        def cache(seeds, folder):
            stories = [tw.random_story(seed, num_frames=build.CLIP_FRAMES, num_scenes=(1, 4)) for seed in seeds]
            with torch.no_grad():
                build.write_cache(stories, folder, model.vae, model.text_encoder, model.tokenizer)
            return folder

        config = TrainConfig.from_file(TOY_CONFIG, [
            f"cache_dir={cache(FINE_TUNE_SEEDS, tmp_path / 'fine_tune')}", f"output_dir={tmp_path / 'run'}",
            f"max_steps={STEPS}"])
        held_out = cache(HELD_OUT_SEEDS, tmp_path / "held_out")
        assert config.base_model == "toy"
        transformer = load_base_transformer(config)
        text_len = LatentCache(held_out).text_len
        before = held_out_loss(prepare_transformer(transformer, config, text_len), config, held_out)
        result = train(config, transformer=transformer, progress=False, log=lambda line: None)
        after = held_out_loss(transformer, config, held_out)
    finally:
        torch.set_num_threads(threads)
    assert result.step == STEPS
    assert after < before, (before, after)


def test_training_phases_carry_the_history_and_the_clips(tmp_path):
    """``framecap.json`` of a rebuilt toy model lists every phase its transformer went through, each with the clips
    it trained on: phases written before that field take their build's clip count."""
    import json

    phases = _build_script().training_phases
    speed = _build_script().tw.SPEED
    assert phases(None, 300, 1e-3, 64) == [{"train_steps": 300, "learning_rate": 1e-3, "clips": 64, "start": "random",
                                            "toy_speed": speed, "seed": 0, "df_zero_step_prob": 0.3,
                                            "clip_scenes": [1, 4]}]
    earlier = [{"train_steps": 3000, "learning_rate": 1e-3, "start": "previous toy model"},
               {"train_steps": 1000, "learning_rate": 7e-4, "clips": 256, "start": "the phase before"}]
    (tmp_path / "framecap.json").write_text(json.dumps({"build": {"clips": 512, "phases": earlier}}))
    assert phases(tmp_path, 6000, 5e-4, 2048, seed=1, df_zero_step_prob=0.8, clip_scenes=(1, 2)) == [
        {"train_steps": 3000, "learning_rate": 1e-3, "clips": 512, "start": "previous toy model", "toy_speed": 0.75,
         "df_zero_step_prob": 0.3, "clip_scenes": [1, 4]},
        {"train_steps": 1000, "learning_rate": 7e-4, "clips": 256, "start": "the phase before", "toy_speed": 0.75,
         "df_zero_step_prob": 0.3, "clip_scenes": [1, 4]},
        {"train_steps": 6000, "learning_rate": 5e-4, "clips": 2048, "start": "the phase before", "toy_speed": speed,
         "seed": 1, "df_zero_step_prob": 0.8, "clip_scenes": [1, 2]}]


def test_train_config_takes_the_share_of_synchronous_samples(tmp_path, capsys):
    """``--df-zero-step-prob`` reaches training/finetune.py's config; outside [0, 1] it stops in one line."""
    import json

    build = _build_script()
    assert json.loads(build.train_config(tmp_path, 10, 0).read_text())["df_zero_step_prob"] == 0.3
    path = build.train_config(tmp_path, 10, 0, df_zero_step_prob=0.8)
    assert json.loads(path.read_text())["df_zero_step_prob"] == 0.8
    with pytest.raises(SystemExit):
        build.main(["--work", str(tmp_path), "--df-zero-step-prob", "1.5"])
    assert "--df-zero-step-prob 1.5: a probability, between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build.main(["--work", str(tmp_path), "--clip-scenes", "3", "2"])
    assert "--clip-scenes 3 2: give FEWEST MOST with 1 <= FEWEST <= MOST <= 4" in capsys.readouterr().err


def test_clip_scenes_bound_the_scenes_of_every_training_clip():
    """``--clip-scenes`` sets how many scenes a training clip has; the default keeps the seeded stream earlier toy
    models trained on."""
    build = _build_script()
    long_scenes = build.make_dataset(40, 2, (1, 2))
    assert {len(story.scenes) for story in long_scenes} == {1, 2}
    assert all(story.num_frames == build.CLIP_FRAMES for story in long_scenes)
    rng = np.random.default_rng(2)
    assert build.make_dataset(5, 2) == [build.tw.random_story(rng, num_frames=49, num_scenes=(1, 4)) for _ in range(5)]


@pytest.mark.parametrize("how", ["wide", "deep"])
def test_grown_transformer_computes_what_it_grew_from(how):
    """``grow_transformer`` keeps the function (before the wide copies' symmetry-breaking noise) and doubles what it
    says: heads of the same size and the feed-forward (wide), or the blocks (deep)."""
    build = _build_script()
    small = build.make_transformer(3, num_attention_heads=2, attention_head_dim=8, ffn_dim=24, num_layers=2,
                                   text_dim=32, freq_dim=16).eval()
    with torch.no_grad():  # non-zero everywhere, so every copied or zeroed weight shows in the output
        for p in small.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.manual_seed(0)
    latents, timestep = torch.randn(2, 16, 3, 4, 4), torch.tensor([250.0, 900.0])
    text = torch.randn(2, 5, 32)
    grown = build.grow_transformer(small, how, symmetry_noise=0.0)
    with torch.no_grad():
        expected = small(latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        got = grown(latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
    config = grown.config
    assert config.attention_head_dim == 8
    assert (config.num_attention_heads, config.ffn_dim, config.num_layers) == {"wide": (4, 48, 2),
                                                                                "deep": (2, 24, 4)}[how]
    noisy = build.grow_transformer(small, how, seed=1)  # the default: wide copies made unequal, deep stays exact
    with torch.no_grad():
        moved = noisy(latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0] - expected
    assert (moved.abs().max() > 1e-4) == (how == "wide")
    assert moved.abs().max() < 0.1 * expected.abs().max()
    with pytest.raises(ValueError, match="grow must be one of"):
        build.grow_transformer(small, "tall")


def test_training_phases_record_a_growth():
    phases = _build_script().training_phases
    assert phases(None, 300, 1e-3, 64, "wide") == [
        {"train_steps": 300, "learning_rate": 1e-3, "clips": 64, "start": "random", "toy_speed": _build_script().tw.SPEED,
         "seed": 0, "df_zero_step_prob": 0.3, "clip_scenes": [1, 4], "grow": "wide"}]


def test_vae_motion_steps_continue_a_finished_vae_and_keep_its_latent_space(tmp_path):
    """``--vae-continue`` runs only the decoder's clip steps on a finished toy VAE: its encoder and latent statistics
    (what a transformer trained on its latents relies on) stay exactly, its decoder learns."""
    from diffusers import AutoencoderKLWan

    source = REPO / "framecap_core" / "toy_model" / "vae"
    if not (source / "config.json").is_file():
        pytest.skip("toy model not built (scripts/build_toy_model.py)")
    code = _build_script().main(["--work", str(tmp_path), "--stage", "vae", "--until", "vae", "--vae-continue",
                                 str(source), "--vae-motion-steps", "2"])
    assert code == 0
    before = AutoencoderKLWan.from_pretrained(str(source))
    after = AutoencoderKLWan.from_pretrained(str(tmp_path / "vae"))
    assert (after.config.latents_mean, after.config.latents_std) == (before.config.latents_mean,
                                                                      before.config.latents_std)
    old, new = before.state_dict(), after.state_dict()
    kept = [k for k in old if k.startswith(("encoder.", "quant_conv."))]
    assert kept and all(torch.equal(old[k], new[k]) for k in kept)
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))


@pytest.mark.parametrize("extra, message", [
    (["--stage", "data"], "--vae-continue takes effect in the vae stage"),
    (["--vae-from", "runs/vae_trained"], "exclude each other"),
    ([], "no VAE there"),
])
def test_vae_continue_mistakes_are_refused_in_one_line(tmp_path, capsys, extra, message):
    """A --vae-continue that would be ignored, contradicted or has no VAE behind it stops before any work."""
    source = REPO / "framecap_core" / "toy_model" / "vae"
    given = str(tmp_path / "missing") if message == "no VAE there" else str(source)
    with pytest.raises(SystemExit) as stop:
        _build_script().main(["--work", str(tmp_path), "--vae-continue", given, *extra])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_grow_outside_the_data_stage_is_refused_in_one_line(capsys):
    """--grow acts in the data stage; a run that skips it would record a growth that never happened."""
    with pytest.raises(SystemExit) as stop:
        _build_script().main(["--stage", "train", "--grow", "deep", "--work", "unused"])
    assert stop.value.code == 2
    assert "--grow takes effect in the data stage" in capsys.readouterr().err


def test_caption_word_benchmark_swaps_one_word_and_keeps_the_videos(tmp_path):
    """``bench_toy_caption_words.py`` compares losses on the same videos told with one attribute swapped: the swap
    changes exactly that attribute in every scene (never a shape the background's colour), and the cache written
    with ``captions_from`` holds the same latents under the swapped captions."""
    import numpy as np

    from framecap_core import toyworld as tw
    from framecap_core.data import LatentCache
    from framecap_core.models import load_wan

    bench = _load_script("benchmarks/bench_toy_caption_words.py")
    build = _build_script()
    stories = [tw.random_story(seed, num_frames=build.CLIP_FRAMES, num_scenes=(1, 4)) for seed in (31_000, 31_001)]
    rng = np.random.default_rng(0)
    for attribute in bench.OPTIONS:
        for story in stories:
            swapped = bench.swap_attribute(story, attribute, rng)
            for old, new in zip(story.scenes, swapped.scenes, strict=True):
                changed = {k for k in tw.ATTRIBUTES if getattr(old, k) != getattr(new, k)}
                assert changed == {attribute} and new.colour != new.background and new.frames == old.frames
    if not (REPO / "framecap_core" / "toy_model" / "model_index.json").is_file():
        pytest.skip("toy model not built (scripts/build_toy_model.py)")
    model = load_wan("toy", device="cpu", dtype="fp32")
    told = [bench.swap_attribute(s, "motion", rng) for s in stories]
    with torch.no_grad():
        build.write_cache(stories, tmp_path / "true", model.vae, model.text_encoder, model.tokenizer)
        build.write_cache(stories, tmp_path / "swapped", model.vae, model.text_encoder, model.tokenizer,
                          captions_from=told)
        with pytest.raises(ValueError, match="other scene lengths"):
            build.write_cache(stories, tmp_path / "wrong", model.vae, model.text_encoder, model.tokenizer,
                              captions_from=told[::-1])
    true, swapped = LatentCache(tmp_path / "true"), LatentCache(tmp_path / "swapped")
    for i, story in enumerate(told):
        assert torch.equal(true[i]["latents"], swapped[i]["latents"])
        assert swapped.meta[swapped.clip_ids[i]]["captions"] == [s.caption for s in story.scenes]
        assert not torch.equal(true[i]["text"], swapped[i]["text"])


def test_bench_toy_model_scores_a_story_and_its_motion_steps(tmp_path, capsys):
    """``benchmarks/bench_toy_model.py`` end to end on two tuning stories, one with still shapes only (no frame pairs
    where the shape should move): every share in [0, 1], the pairs counted, the pooled forward / back line printed."""
    import json

    if not (REPO / "framecap_core" / "toy_model" / "model_index.json").is_file():
        pytest.skip("toy model not built (scripts/build_toy_model.py)")
    bench = _load_script("benchmarks/bench_toy_model.py")
    out = tmp_path / "scores.json"
    assert bench.main(["--stories", "2", "--first-seed", "508", "--threads", "1", "--json", str(out)]) == 0
    still, row = json.loads(out.read_text())["stories"]
    assert still["pairs"] == 0 and still["forward"] is None and still["back"] is None
    assert all(0.0 <= row[k] <= 1.0 for k in (*bench.ATTRIBUTES, "all", "forward", "back"))
    assert row["pairs"] > 40  # story 509: two moving scenes in 65 frames
    printed = capsys.readouterr().out
    assert "NOT held-out seeds" in printed and f"where the shape should move ({row['pairs']} frame pairs)" in printed
