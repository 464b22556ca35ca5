"""Diffusion Forcing fine-tuning on tiny Wan models: loss, resume, checkpoints, export, DF noise logging."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors import safe_open

from framecap_core.data import CacheWriter, LatentCache
from framecap_core.errors import ConfigError, NumericalError
from framecap_core.schedule import shift_sigmas
from framecap_core.testing import TINY_TEXT_DIM, make_tiny_transformer
from framecap_core.training import (
    TrainConfig,
    df_flow_matching_loss,
    draw_batch,
    export_transformer,
    frame_timesteps,
    latest_checkpoint,
    lr_at_step,
    train,
)

TEXT_LEN = 4
CLIP_LATENTS = 6


def _make_cache(path, clips: int = 4, seed: int = 0):
    """Structured synthetic latents (a blob moving across frames, per-clip colour), 2-3 captions per clip."""
    g = torch.Generator().manual_seed(seed)
    captions = torch.randn(5, TEXT_LEN, TINY_TEXT_DIM, generator=g)
    yy, xx = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    with CacheWriter(path, settings={"height": 32, "width": 32}, shard_size=3) as writer:
        for c in range(clips):
            colour = torch.randn(16, 1, 1, 1, generator=g)
            frames = []
            for f in range(CLIP_LATENTS):
                cx = (f + c) % 4
                frames.append(torch.exp(-((xx - cx) ** 2 + (yy - 1.5) ** 2) / 2.0))
            latents = colour * torch.stack(frames)[None] + 0.05 * torch.randn(16, CLIP_LATENTS, 4, 4, generator=g)
            ids = [c % 5, (c + 1) % 5, (c + 2) % 5]
            index = [0, 0, 1, 1, 2, 2] if c % 2 == 0 else [0, 0, 0, 1, 1, 1]
            writer.add(f"clip{c}", latents, captions[ids], index, [f"caption {i}" for i in ids])
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return _make_cache(tmp_path_factory.mktemp("cache"))


def _config(tmp_path, cache_dir, **overrides):
    settings = dict(
        cache_dir=str(cache_dir), output_dir=str(tmp_path / "run"), text_len=TEXT_LEN, window_latents=4,
        height=32, width=32,  # the size the test cache was built at
        max_steps=6, learning_rate=2e-3, checkpoint_every=3, report_to="none", export_format="none", seed=3,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_cache_writer_and_window_crop(cache_dir):
    cache = LatentCache(cache_dir)
    assert len(cache) == 4 and cache.min_latents == CLIP_LATENTS
    assert len({m["shard"] for m in cache.meta.values()}) == 2  # shard_size=3 -> two shards
    item = cache[1]
    seen = set()
    for seed in range(20):
        w = cache.window(1, 4, torch.Generator().manual_seed(seed))
        o = w["offset"]
        seen.add(o)
        assert torch.equal(w["latents"], item["latents"][:, o : o + 4])
        for f in range(4):  # frame-major stacked captions: frame f's rows are its caption's embedding
            expect = item["text"][item["caption_index"][o + f]]
            assert torch.equal(w["context"][f * TEXT_LEN : (f + 1) * TEXT_LEN], expect)
    assert seen == {0, 1, 2}  # every start, including mid-clip windows


def test_frame_timesteps_scalar_and_per_token():
    same = torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.2, 0.2]])
    assert torch.equal(frame_timesteps(same, 4), torch.tensor([500.0, 200.0]))
    mixed = torch.tensor([[0.1, 0.5, 0.9]])
    t = frame_timesteps(mixed, 2)
    assert t.shape == (1, 6)
    assert torch.allclose(t, torch.tensor([[100.0, 100.0, 500.0, 500.0, 900.0, 900.0]]))


def test_loss_per_token_path_matches_scalar_path_and_manual_formula():
    model = make_tiny_transformer(0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 16, 3, 4, 4, generator=g)
    noise = torch.randn(1, 16, 3, 4, 4, generator=g)
    context = torch.randn(1, 8, TINY_TEXT_DIM, generator=g)
    sig = torch.full((1, 3), 0.3)
    loss = df_flow_matching_loss(model, x0, context, sig, noise)
    x_t = 0.7 * x0 + 0.3 * noise
    with torch.no_grad():
        pred = model(hidden_states=x_t, timestep=torch.tensor([300.0]), encoder_hidden_states=context,
                     return_dict=False)[0]
        per_token = model(hidden_states=x_t, timestep=torch.full((1, 3 * 4), 300.0), encoder_hidden_states=context,
                          return_dict=False)[0]
    assert torch.allclose(loss, ((pred - (noise - x0)) ** 2).mean(), atol=1e-6)
    assert torch.allclose(per_token, pred, atol=1e-5)  # per-token timesteps with equal values = scalar path
    # different per-frame sigmas change the prediction only through the noise mixture and the timesteps
    sig2 = torch.tensor([[0.0, 0.3, 1.0]])
    loss2 = df_flow_matching_loss(model, x0, context, sig2, noise)
    assert torch.isfinite(loss2) and not torch.allclose(loss2, loss)


def _held_out_loss(model, config, cache) -> float:
    """Mean loss over fixed draws (the first 8 micro-batches of a run with seed 99)."""
    held = dataclasses.replace(config, seed=99)
    total = 0.0
    with torch.no_grad():
        for step in range(8):
            b = draw_batch(cache, held, step, 0)
            total += df_flow_matching_loss(model, b["latents"], b["context"], b["sigmas"], b["noise"]).item()
    return total / 8


def test_loss_falls(tmp_path, cache_dir):
    config = _config(tmp_path, cache_dir, max_steps=25, checkpoint_every=0, learning_rate=5e-3)
    cache = LatentCache(cache_dir)
    model = make_tiny_transformer(0)
    from framecap_core.attention import install_frame_level_attention

    before = _held_out_loss(install_frame_level_attention(make_tiny_transformer(0), TEXT_LEN), config, cache)
    result = train(config, transformer=model, progress=False, log=lambda s: None)
    assert len(result.losses) == 25 and all(math.isfinite(x) for x in result.losses)
    model.eval()
    after = _held_out_loss(model, config, cache)
    assert after < 0.8 * before, (before, after)
    assert sum(result.losses[-8:]) < sum(result.losses[:8])


def test_resume_is_exact(tmp_path, cache_dir):
    kw = dict(batch_size=2, gradient_accumulation_steps=2, lr_warmup_steps=2, lr_schedule="cosine")
    full = train(_config(tmp_path / "a", cache_dir, **kw), transformer=make_tiny_transformer(0), progress=False,
                 log=lambda s: None)
    first = train(_config(tmp_path / "b", cache_dir, **kw), transformer=make_tiny_transformer(0), progress=False,
                  stop_at_step=3, log=lambda s: None)
    assert first.step == 3 and latest_checkpoint(tmp_path / "b" / "run").name == "step-00000003"
    resumed = train(_config(tmp_path / "b", cache_dir, resume="latest", **kw), transformer=make_tiny_transformer(0),
                    progress=False, log=lambda s: None)
    assert first.losses + resumed.losses == full.losses
    # the same final weights and optimizer state
    with safe_open(str(full.checkpoint / "model.safetensors"), "pt") as a, safe_open(
        str(resumed.checkpoint / "model.safetensors"), "pt"
    ) as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
    # the log of the resumed run holds each step once, with the uninterrupted losses
    records = [json.loads(line) for line in (tmp_path / "b" / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert [r["loss"] for r in records] == full.losses
    # never pickle: only safetensors and JSON in checkpoints
    files = {p.suffix for p in (tmp_path / "b" / "run").rglob("*") if p.is_file()}
    assert files <= {".safetensors", ".json", ".jsonl"}, files


def test_df_noise_has_the_configured_distribution(tmp_path, cache_dir):
    config = _config(tmp_path, cache_dir, batch_size=4, df_step_size_range=[0.05, 0.2], df_zero_step_prob=0.5,
                     df_shift=3.0)
    cache = LatentCache(cache_dir)
    batches = [draw_batch(cache, config, step, 0) for step in range(100)]
    draws = [d for b in batches for d in b["draws"]]
    assert len(draws) == 400
    counts = [sum(d["reference"] == r for d in draws) for r in range(4)]
    assert all(60 < c < 140 for c in counts), counts  # uniform over the 4 frames (100 expected each)
    zero = sum(d["step_size"] == 0.0 for d in draws) / len(draws)
    assert 0.38 < zero < 0.62  # p = 0.5
    steps = torch.tensor([d["step_size"] for d in draws if d["step_size"] != 0.0])
    assert steps.min() >= 0.05 and steps.max() <= 0.2 and abs(steps.mean().item() - 0.125) < 0.015
    # levels are shift(U[0,1]) with shift 3: un-shifting them gives uniform samples
    levels = torch.tensor([d["level"] for d in draws], dtype=torch.float64)
    uniform = levels / (3.0 - 2.0 * levels)
    assert torch.allclose(shift_sigmas(uniform, 3.0), levels, atol=1e-12)
    assert abs(uniform.mean().item() - 0.5) < 0.05 and abs((uniform < 0.25).double().mean().item() - 0.25) < 0.07
    # each sample's sigmas are exactly clip(level + (f - r) * step, 0, 1)
    for b in batches[:10]:
        for row, d in zip(b["sigmas"], b["draws"]):
            expect = (d["level"] + (torch.arange(4.0) - d["reference"]) * d["step_size"]).clamp(0, 1)
            assert torch.allclose(row, expect, atol=1e-6)
    assert {d["offset"] for d in draws} == {0, 1, 2}  # random crops, including mid-clip windows
    assert len({d["clip"] for d in draws}) == 4


def test_caption_dropout_swaps_whole_windows_for_the_empty_caption(tmp_path):
    from framecap_core.errors import DatasetError

    cache_dir = _make_cache(tmp_path / "cache")
    plain = _config(tmp_path, cache_dir, batch_size=4)
    # without the empty caption's embedding in the cache, dropout fails with the fix; 0 needs nothing
    with pytest.raises(DatasetError, match="empty-caption embedding"):
        draw_batch(LatentCache(cache_dir), dataclasses.replace(plain, caption_dropout=0.25), 0, 0)
    empty = torch.randn(1, TEXT_LEN, TINY_TEXT_DIM)
    CacheWriter(cache_dir, settings={"height": 32, "width": 32}).write_empty_caption(empty)
    cache = LatentCache(cache_dir)
    assert torch.equal(cache.empty_caption(), empty[0])
    config = dataclasses.replace(plain, caption_dropout=0.25)
    dropped = 0
    for step in range(50):
        a, b = draw_batch(cache, plain, step, 0), draw_batch(cache, config, step, 0)
        # the same data, crops and noise as without dropout
        for key in ("latents", "sigmas", "noise"):
            assert torch.equal(a[key], b[key])
        for i, d in enumerate(b["draws"]):
            if d["unconditional"]:
                dropped += 1
                assert torch.equal(b["context"][i], empty[0].repeat(4, 1))  # every frame: the empty caption
            else:
                assert torch.equal(b["context"][i], a["context"][i])
        assert not any(d["unconditional"] for d in a["draws"])
    assert 30 < dropped < 70  # 200 samples at p = 0.25
    with pytest.raises(ConfigError, match="caption_dropout"):
        dataclasses.replace(plain, caption_dropout=1.0)


def test_each_step_logs_its_df_noise(tmp_path, cache_dir):
    config = _config(tmp_path, cache_dir, max_steps=3, batch_size=2, gradient_accumulation_steps=2,
                     checkpoint_every=0, learning_rate=1e-4)
    train(config, transformer=make_tiny_transformer(0), progress=False, log=lambda s: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    cache = LatentCache(cache_dir)
    for r in records:
        expect = [d for micro in range(2) for d in draw_batch(cache, config, r["step"] - 1, micro)["draws"]]
        assert r["df"] == expect  # reference frame, level, step size, clip and crop of every sample
        assert math.isfinite(r["loss"]) and r["lr"] == 1e-4


def test_gradient_checkpointing_and_bf16_autocast(tmp_path, cache_dir):
    from accelerate.state import AcceleratorState

    plain = train(_config(tmp_path / "a", cache_dir, max_steps=2, checkpoint_every=0),
                  transformer=make_tiny_transformer(0), progress=False, log=lambda s: None)
    checkpointed = train(_config(tmp_path / "b", cache_dir, max_steps=2, checkpoint_every=0,
                                 gradient_checkpointing=True),
                         transformer=make_tiny_transformer(0), progress=False, log=lambda s: None)
    assert checkpointed.losses == plain.losses  # recomputation changes memory, not maths
    AcceleratorState._reset_state(True)  # accelerate keeps one mixed-precision setting per process
    try:
        bf16 = train(_config(tmp_path / "c", cache_dir, max_steps=2, checkpoint_every=0, mixed_precision="bf16"),
                     transformer=make_tiny_transformer(0), progress=False, log=lambda s: None)
    finally:
        AcceleratorState._reset_state(True)
    assert all(math.isfinite(x) for x in bf16.losses)
    assert bf16.losses != plain.losses and abs(bf16.losses[0] - plain.losses[0]) < 0.05 * plain.losses[0]


def test_non_finite_loss_raises_numerical_error(tmp_path, cache_dir):
    model = make_tiny_transformer(0)
    with torch.no_grad():
        model.proj_out.weight.fill_(float("nan"))
    with pytest.raises(NumericalError, match="learning_rate"):
        train(_config(tmp_path, cache_dir, max_steps=2), transformer=model, progress=False, log=lambda s: None)


def test_export_formats_load_and_change_output(tmp_path, cache_dir):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    from safetensors.torch import load_file

    config = _config(tmp_path, cache_dir, max_steps=3, checkpoint_every=0, export_format="original")
    result = train(config, transformer=make_tiny_transformer(0), progress=False, log=lambda s: None)
    assert result.export_path.name == "framecap_transformer_comfyui.safetensors"
    with safe_open(str(result.export_path), "pt") as f:
        meta = f.metadata()
    assert meta["framecap_format"] == "original" and json.loads(meta["training_config"])["max_steps"] == 3
    original = load_file(str(result.export_path))
    assert all(k.startswith("model.diffusion_model.") for k in original)
    converted = convert_wan_transformer_to_diffusers(dict(original))
    base = make_tiny_transformer(0)
    loaded = WanTransformer3DModel.from_config(base.config)
    missing, unexpected = loaded.load_state_dict(converted, strict=True), None
    del missing, unexpected
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 2, 4, 4, generator=g)
    ctx = torch.randn(1, TEXT_LEN, TINY_TEXT_DIM, generator=g)
    with torch.no_grad():
        out_base = base(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=ctx)[0]
        out_tuned = loaded(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=ctx)[0]
    assert not torch.allclose(out_base, out_tuned, atol=1e-4)

    # the diffusers-format export of the same model holds the same tensors under diffusers names
    path = export_transformer(loaded, tmp_path / "tuned.safetensors", format="diffusers", config=config)
    diffusers_state = load_file(str(path))
    assert set(diffusers_state) == set(loaded.state_dict())
    assert all(torch.equal(diffusers_state[k], converted[k]) for k in converted)


def _probe_inputs():
    """A fixed latent ``[1, 16, 2, 4, 4]`` and context ``[1, TEXT_LEN, TINY_TEXT_DIM]`` to compare transformers on."""
    g = torch.Generator().manual_seed(2)
    return torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, TEXT_LEN, TINY_TEXT_DIM, generator=g)


def test_lora_training_and_export(tmp_path, cache_dir):
    from safetensors.torch import load_file

    config = _config(tmp_path, cache_dir, max_steps=4, checkpoint_every=2, lora_rank=4, learning_rate=1e-2,
                     export_format="lora")
    model = make_tiny_transformer(0)
    result = train(config, transformer=model, progress=False, log=lambda s: None)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    state = load_file(str(result.export_path))
    assert state and all(k.startswith("transformer.") and "lora_" in k for k in state)
    # a fresh base model with the adapter loaded reproduces the trained model
    fresh = make_tiny_transformer(0)
    fresh.load_lora_adapter(str(result.export_path), prefix="transformer", adapter_name="framecap")
    x, ctx = _probe_inputs()
    model.eval()
    with torch.no_grad():
        a = model(hidden_states=x, timestep=torch.tensor([300.0]), encoder_hidden_states=ctx)[0]
        b = fresh(hidden_states=x, timestep=torch.tensor([300.0]), encoder_hidden_states=ctx)[0]
        base = make_tiny_transformer(0)(hidden_states=x, timestep=torch.tensor([300.0]), encoder_hidden_states=ctx)[0]
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, base, atol=1e-4)
    # ... and so does framecap_core's loader, which merges it into the weights
    from framecap_core.models import apply_checkpoint

    merged_by_loader = make_tiny_transformer(0)
    assert apply_checkpoint(merged_by_loader, result.export_path) == "lora"
    with torch.no_grad():
        d = merged_by_loader(hidden_states=x, timestep=torch.tensor([300.0]), encoder_hidden_states=ctx)[0]
    assert torch.allclose(a, d, atol=1e-5)
    comfy = export_transformer(model, tmp_path / "lora_comfy.safetensors", format="lora_original", config=config)
    keys = set(load_file(str(comfy)))
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys and "diffusion_model.blocks.1.cross_attn.o.lora_B.weight" in keys
    merged_comfy = make_tiny_transformer(0)
    assert apply_checkpoint(merged_comfy, comfy) == "lora"
    with torch.no_grad():
        e = merged_comfy(hidden_states=x, timestep=torch.tensor([300.0]), encoder_hidden_states=ctx)[0]
    assert torch.allclose(a, e, atol=1e-5)
    # merged full export of a LoRA run equals the adapted model
    merged = export_transformer(model, tmp_path / "merged.safetensors", format="diffusers", config=config)
    plain = make_tiny_transformer(0)
    plain.load_state_dict(load_file(str(merged)), strict=True)
    from framecap_core.models import apply_checkpoint

    assert apply_checkpoint(make_tiny_transformer(0), merged) == "full"
    with torch.no_grad():
        c = plain(hidden_states=x, timestep=torch.tensor([300.0]), encoder_hidden_states=ctx)[0]
    assert torch.allclose(a, c, atol=1e-5)


def test_lora_original_export_carries_alpha_for_readers_that_ignore_the_header(tmp_path):
    """ComfyUI's LoRA loader reads alpha only from ``<module>.alpha`` tensors; with lora_alpha != rank the
    ``lora_original`` file must give the adapted model to a reader that never looks at the header."""
    from safetensors.torch import load_file

    from framecap_core.models import merge_lora
    from framecap_core.training.model import prepare_transformer

    config = TrainConfig(lora_rank=4, lora_alpha=2.0, text_len=TEXT_LEN)
    model = prepare_transformer(make_tiny_transformer(0), config)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.2)
    path = export_transformer(model, tmp_path / "lora_comfy.safetensors", format="lora_original", config=config)
    state = load_file(str(path))
    alphas = {k: float(v) for k, v in state.items() if k.endswith(".alpha")}
    assert len(alphas) == sum(k.endswith(".lora_A.weight") for k in state) > 0
    assert set(alphas.values()) == {2.0} and "diffusion_model.blocks.0.self_attn.q.alpha" in alphas
    merged = make_tiny_transformer(0)
    merge_lora(merged, state, adapter_config=None)  # the header is not read
    x, ctx = _probe_inputs()
    model.eval()
    with torch.no_grad():
        adapted = model(hidden_states=x, timestep=torch.tensor([300.0]), encoder_hidden_states=ctx)[0]
        read = merged(hidden_states=x, timestep=torch.tensor([300.0]), encoder_hidden_states=ctx)[0]
    assert torch.allclose(adapted, read, atol=1e-5)


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 7\nlora_rank: 2\ndf_step_size_range: [0.0, 0.3]\n")
    cfg = TrainConfig.from_file(path, ["learning_rate=3e-4", "resume=latest", "lora_targets=[\"to_q\"]"])
    assert (cfg.max_steps, cfg.lora_rank, cfg.learning_rate, cfg.resume, cfg.lora_targets) == (
        7, 2, 3e-4, "latest", ["to_q"])
    assert cfg.df_noise().step_size_range == (0.0, 0.3)
    with pytest.raises(ConfigError, match="Unknown setting"):
        TrainConfig.from_file(path, ["learnign_rate=1"])
    with pytest.raises(ConfigError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")
    json_path = tmp_path / "c.json"
    json_path.write_text(json.dumps({"max_steps": 3, "lr_warmup_steps": 2, "learning_rate": 1.0}))
    cfg = TrainConfig.from_file(json_path)
    assert [lr_at_step(cfg, s) for s in range(3)] == [0.5, 1.0, 1.0]


def _load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "training" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"framecap_training_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_script_end_to_end_and_the_loader_reads_the_export(tmp_path, capsys):
    """finetune.py on a tiny diffusers Wan: manifest -> latent cache (VAE + UMT5) -> DF training -> ComfyUI export,
    which framecap_core.models loads on top of the base model and which changes its output."""
    import imageio.v2 as imageio
    import numpy as np

    from framecap_core.data import ClipRecord, ManifestWriter
    from framecap_core.models import load_wan
    from framecap_core.testing import save_tiny_wan

    base = save_tiny_wan(tmp_path / "base", text_len=8)["diffusers"]
    rng = np.random.default_rng(0)
    with ManifestWriter(tmp_path / "data" / "manifest.jsonl") as writer:
        for v in range(2):
            frames = [np.roll(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) // 4 + 100, f, axis=1)
                      for f in range(20)]
            imageio.mimwrite(tmp_path / "data" / f"v{v}.mp4", frames, fps=16, macro_block_size=1)
            writer.append(ClipRecord(
                clip_id=f"v{v}", source=f"v{v}.mp4", source_fps=16.0, start_frame=0, end_frame=17,
                sample_frames=[0, 8, 16], captions=["a red cat sits", "a red cat jumps", "a dog runs"],
                frame_indices=list(range(17)), global_caption="a cat and a dog"))
    config = tmp_path / "toy.json"
    config.write_text(json.dumps({
        "base_model": str(base), "manifest": str(tmp_path / "data" / "manifest.jsonl"),
        "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "run"), "height": 32, "width": 32,
        "window_latents": 4, "max_steps": 4, "learning_rate": 5e-3, "checkpoint_every": 2, "report_to": "tensorboard",
        "export_format": "original",
    }))
    finetune = _load_script("finetune")
    assert finetune.main(["--config", str(config), "--no-progress", "--stop-at-step", "2"]) == 0
    assert finetune.main(["--config", str(config), "--no-progress", "--resume", "latest"]) == 0
    out = capsys.readouterr().out
    assert "steps 3-4" in out
    cache = LatentCache(tmp_path / "cache")
    assert len(cache) == 2 and cache.text_len == 8 and cache[0]["latents"].shape == (16, 5, 4, 4)
    assert list((tmp_path / "run").glob("**/events.out.tfevents*")), "TensorBoard logs are written"
    export = tmp_path / "run" / "framecap_transformer_comfyui.safetensors"
    with safe_open(str(export), "pt") as f:
        assert f.metadata()["text_len"] == "8"

    # the loader applies the export on top of the base model: output changes, and equals the trained weights
    plain = load_wan(base, device="cpu", dtype="fp32", load_vae_model=False, load_text_encoder_model=False)
    tuned = load_wan(base, checkpoint=export, device="cpu", dtype="fp32", load_vae_model=False,
                     load_text_encoder_model=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 2, 4, 4, generator=g)
    ctx = torch.randn(1, 2 * 8, TINY_TEXT_DIM, generator=g)
    with torch.no_grad():
        a = plain.transformer(hidden_states=x, timestep=torch.tensor([400.0]), encoder_hidden_states=ctx)[0]
        b = tuned.transformer(hidden_states=x, timestep=torch.tensor([400.0]), encoder_hidden_states=ctx)[0]
    assert not torch.allclose(a, b, atol=1e-4)
    from safetensors.torch import load_file

    trained = load_file(str(latest_checkpoint(tmp_path / "run") / "model.safetensors"))
    tuned_state = tuned.transformer.state_dict()
    assert all(torch.equal(trained[k], tuned_state[k]) for k in trained)
    # an intermediate checkpoint exports on its own (base model from the run's config)
    step2 = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert step2.is_dir()
    assert finetune.main(["--export-from", str(step2), "--export-format", "diffusers", "--export-path",
                          str(tmp_path / "step2.safetensors")]) == 0
    exported = load_file(str(tmp_path / "step2.safetensors"))
    at_step2 = load_file(str(step2 / "model.safetensors"))
    assert all(torch.equal(exported[k], at_step2[k]) for k in at_step2)
    assert not all(torch.equal(exported[k], trained[k]) for k in trained)
    # a full fine-tune has no LoRA to export: one clear line naming the formats that work, nothing written
    capsys.readouterr()
    assert finetune.main(["--export-from", str(step2), "--export-format", "lora", "--export-path",
                          str(tmp_path / "step2_lora.safetensors")]) != 0
    err = capsys.readouterr().err
    assert "full fine-tune" in err and "--export-format diffusers or original" in err and "Traceback" not in err
    assert not (tmp_path / "step2_lora.safetensors").exists()
    with pytest.raises(ConfigError, match="not trained with LoRA"):
        export_transformer(tuned.transformer, tmp_path / "x.safetensors", format="lora_original")
