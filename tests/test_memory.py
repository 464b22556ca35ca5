"""The memory planner: allocation tracing on exact known programs, weights, the per-window model, the plan's
placement arithmetic, ``window_batch_size="auto"`` and the dry run's memory report."""

from __future__ import annotations

import pytest
import torch

from framecap_core import memory
from framecap_core.memory import GiB, ModelArchitecture, plan_memory, trace_peak
from framecap_core.testing import tiny_text_encoder_config, tiny_transformer_config, tiny_vae_config


def test_trace_counts_allocations_and_frees_exactly():
    def program():
        a = torch.empty(1000)  # 4000 B
        b = a * 2  # +4000 -> 8000
        v = b.view(10, 100)  # a view allocates nothing and keeps b alive
        del a, b
        c = v + 1  # 4000 (b via v) + 4000 -> 8000
        d = torch.cat([c, c])  # +8000 -> 16000: the peak
        del v, c, d
        return torch.empty(10)  # 40, alive at the end

    with torch.device("meta"):
        peak, out = trace_peak(program)
    assert peak == 16000 and out.shape == (10,)


def test_trace_of_a_feed_forward_matches_hand_count():
    batch, dim = 8, 32
    with torch.device("meta"):
        ffn = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))
        x = torch.empty(batch, dim)
        peak, _ = trace_peak(ffn, x)
    # during the GELU both [B, 4D] tensors are alive; the input (made before tracing) is not counted
    assert peak == 2 * batch * 4 * dim * 4


def test_attention_is_traced_as_a_fused_kernel():
    with torch.device("meta"):
        q = torch.empty(1, 2, 4096, 64)
        peak, _ = trace_peak(torch.nn.functional.scaled_dot_product_attention, q, q, q)
    out, lse = 1 * 2 * 4096 * 64 * 4, 1 * 2 * 4096 * 4
    assert peak == out + lse  # not the 4096 x 4096 score matrix


def test_cpu_convolutions_count_their_column_buffer():
    with torch.device("meta"):
        conv = torch.nn.Conv3d(4, 8, 3)
        x = torch.empty(1, 4, 3, 10, 10)
        gpu, _ = trace_peak(conv, x)
        cpu, _ = trace_peak(conv, x, cpu_convolutions=True)
    out = 8 * 1 * 8 * 8 * 4
    assert gpu == out and cpu == out + 4 * 27 * 1 * 8 * 8 * 4


def test_weights_count_tied_embeddings_once_and_fp8_blocks_at_one_byte():
    te = memory.meta_text_encoder(tiny_text_encoder_config(), dtype=torch.bfloat16)
    assert te.shared.weight.untyped_storage()._cdata == te.encoder.embed_tokens.weight.untyped_storage()._cdata
    params = {id(p): p for p in te.parameters()}
    assert memory.module_bytes(te) == sum(p.numel() * p.element_size() for p in params.values())

    cfg = tiny_transformer_config()
    bf16 = memory.meta_transformer(cfg, dtype=torch.bfloat16)
    fp8 = memory.meta_transformer(cfg, dtype=torch.bfloat16, weight_dtype="fp8_e4m3fn")
    linear_weights = sum(m.weight.numel() for b in bf16.blocks for m in b.modules()
                         if isinstance(m, torch.nn.Linear))
    assert memory.module_bytes(bf16) - memory.module_bytes(fp8) == linear_weights  # 2 bytes -> 1 byte each
    # the loader's float32 islands stay float32
    assert bf16.scale_shift_table.dtype == torch.float32 and bf16.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16


def test_real_size_weights():
    arch = ModelArchitecture.from_config_dir(memory_shipped())
    # Wan2.1-T2V-1.3B: 1.42 B parameters in the transformer; UMT5-XXL's encoder 5.68 B; the Wan VAE 127 M
    assert 2.6 < arch.transformer_bytes / GiB < 2.7
    assert 10.5 < arch.text_encoder_bytes / GiB < 10.7
    assert 0.45 < arch.vae_bytes / GiB < 0.5


def memory_shipped():
    from framecap_core.models import SHIPPED_CONFIG_DIR

    return SHIPPED_CONFIG_DIR


def small_arch(**changes) -> ModelArchitecture:
    base = dict(transformer_config=tiny_transformer_config(num_layers=3, rope_max_seq_len=1024),
                text_encoder_config=tiny_text_encoder_config(), vae_config=tiny_vae_config(), text_len=16,
                dtype=torch.float32)
    base.update(changes)
    return ModelArchitecture(**base)


def test_window_activations_are_linear_in_the_window_batch():
    arch = small_arch()
    model = memory.window_activations(arch.transformer_config, dtype=arch.dtype, text_len=16, num_frames=5,
                                      latent_hw=(8, 8))
    block = memory.meta_transformer(arch.transformer_config, dtype=arch.dtype, text_len=16, num_layers=1)
    for k in (3, 5):
        traced = memory._trace_window_call(block, k=k, num_frames=5, latent_hw=(8, 8), text_len=16, guided=True,
                                           per_token=False)
        assert traced == model(k)
    assert model.max_windows(model(4)) == 4 and model.max_windows(model(4) - 1) == 3
    assert model.max_windows(model(1) - 1) == 0


def plan_for(arch, **changes):
    kwargs = dict(num_latents=13, latent_hw=(8, 8), window_latents=5, num_windows=4, num_captions=2)
    kwargs.update(changes)
    return plan_memory(arch, **kwargs)


def test_placements_change_what_each_phase_holds():
    arch = small_arch()
    none, model, seq = (plan_for(arch, offload=o) for o in ("none", "model", "sequential"))
    parts = arch.text_encoder_bytes + arch.transformer_bytes + arch.vae_bytes
    for a, b in zip(none.phases, model.phases):
        assert a.peak - b.peak == parts - b.weights  # without offload every phase also holds the other parts
    assert model.peak == max(p.peak for p in model.phases)
    block = arch.largest_block_bytes
    assert model.phases[1].weights - seq.phases[1].weights == 2 * block  # 3 layers -> one on the device
    cpu_text = plan_for(arch, text_encoder_device="cpu")
    assert cpu_text.phase("text encoding").peak == 0
    on_cpu = plan_for(arch, device="cpu", decode_frames=49)
    assert all(p.weights + p.resident == parts for p in on_cpu.phases)  # the CPU holds everything, always


def test_auto_window_batch_is_the_largest_that_fits():
    arch = small_arch()
    everything = plan_for(arch, window_batch_size=None)
    one = plan_for(arch, window_batch_size=1)
    per = one.activations.per_window
    fixed = one.phases[1].peak - one.activations(1)  # weights + buffers
    for k in (1, 2, 3):
        usable_target = fixed + one.activations(k) + per // 2  # room for k windows and a half
        budget = int((usable_target + memory.RESERVE_BYTES) / (1 - memory.RESERVE_FRACTION)) + 1
        plan = plan_for(arch, budget=budget)
        assert plan.window_batch_size == k and plan.phases[1].peak <= plan.usable
        assert fixed + plan.activations(k + 1) > plan.usable
    assert plan_for(arch, budget=10**12).window_batch_size == everything.window_batch_size == 4
    assert not plan_for(arch, budget=memory.RESERVE_BYTES).fits


def test_alternatives_offload_before_fp8_before_sequential():
    arch = ModelArchitecture.from_config_dir(memory_shipped())
    common = dict(num_latents=121, latent_hw=(60, 104), window_latents=21, num_windows=9, num_captions=3)
    plan = plan_memory(arch, **common, offload="none", budget=12 * GiB)
    assert not plan.fits
    better = memory.fitting_alternatives(arch, dict(common, budget=12 * GiB), plan)
    assert better.fits and better.offload == "model" and better.text_encoder_device == "cpu"
    assert better.weight_dtype == "default"
    tight = plan_memory(arch, **common, budget=8 * GiB)
    assert not tight.fits
    bf16_vae = memory.fitting_alternatives(arch, dict(common, budget=8 * GiB), tight)
    assert bf16_vae.fits and bf16_vae.vae_dtype == torch.bfloat16 and bf16_vae.weight_dtype == "default"
    hopeless = plan_memory(arch, **common, budget=2 * GiB)
    assert memory.fitting_alternatives(arch, dict(common, budget=2 * GiB), hopeless) is None
    assert "no placement fits" in memory.verdict(hopeless, None)


@pytest.mark.parametrize("vram, fits", [("12", True), ("3", False)])
def test_dry_run_prints_memory_per_phase_and_a_verdict(capsys, vram, fits):
    from framecap_core.cli import main

    code = main(["generate", "--timeline", "a red fox | the fox jumps | night falls", "--seconds", "30",
                 "--dry-run", "--vram-gb", vram])
    out = capsys.readouterr().out
    assert code == 0
    for phase in ("text encoding", "denoising (k=", "decoding"):
        assert phase in out
    assert f"--vram-gb {vram}" in out
    if fits:
        assert "verdict: fits" in out
    else:
        assert "verdict: does not fit" in out
        assert "these settings fit" in out or "no placement fits" in out


def test_dry_run_suggests_settings_that_fit(capsys):
    from framecap_core.cli import main

    assert main(["generate", "--timeline", "a red fox | the fox jumps", "--seconds", "30", "--dry-run",
                 "--vram-gb", "8", "--offload", "none", "--text-encoder-device", "device"]) == 0
    out = capsys.readouterr().out
    assert "verdict: does not fit" in out
    # UMT5-XXL (10.6 GiB) leaves the card, and the 480p fp32 decode (7.8 GiB) needs a bf16 VAE
    assert ("these settings fit" in out and "--offload model" in out and "--text-encoder-device cpu" in out
            and "--vae-dtype bf16" in out and "--weight-dtype" not in out)


def test_generate_resolves_auto_window_batch(tmp_path):
    from framecap_core.models import load_wan
    from framecap_core.pipeline import GenerationSettings, generate
    from framecap_core.testing import save_tiny_wan
    from framecap_core.timeline import parse_timeline

    folder = save_tiny_wan(tmp_path, formats=("diffusers",), text_len=8)["diffusers"]
    model = load_wan(folder, device="cpu", dtype="fp32")
    timeline = parse_timeline("a red fox | the fox jumps", num_frames=49)
    settings = GenerationSettings(window=17, overlap=8, steps=2, width=32, height=32)
    assert settings.window_batch_size == "auto"
    auto = generate(model, timeline, settings, decode=False)
    assert auto.window_batch_size == len(auto.plan.window_spans)  # a tiny model: every window fits at once
    fixed = generate(model, timeline, settings.replace(window_batch_size=None), decode=False)
    assert torch.equal(auto.latents, fixed.latents)


def test_gpu_check_smoke_mode_runs_on_the_cpu(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "smoke.json"
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "smoke"
    assert report["video"] == {"latents": 121, "latent_hw": [4, 8], "window": 21, "overlap": 7, "windows": 9}
    steps = report["pmwd_step"]
    assert list(steps)[:2] == ["1", "2"] and list(steps)[3] == "all" and list(steps)[2].startswith("auto (")
    assert all(s["seconds_per_step"] > 0 and s["predicted_peak_gib"] >= 0 for s in steps.values())
    assert report["plain_loop_step"]["seconds_per_step"] > 0
    assert report["cross_attention_window_forward"]["ratio"] > 0
    assert report["decoding"]["frames"] == 9  # 3 latents in smoke mode
    assert "denoising" in report["memory_plan"]


def test_a_random_text_encoder_holds_one_embedding_and_real_values():
    """make_random_part builds UMT5 on the meta device and gives it memory once: still tied, randomly initialized."""
    from framecap_core.testing import make_random_part, tiny_text_encoder_config

    encoder = make_random_part("text_encoder", tiny_text_encoder_config(), dtype=torch.float32)
    assert encoder.shared.weight is encoder.encoder.embed_tokens.weight
    weights = list(encoder.parameters())
    assert all(bool(torch.isfinite(p).all()) for p in weights)
    assert all(float(p.abs().sum()) > 0 for p in weights)
    again = make_random_part("text_encoder", tiny_text_encoder_config(), dtype=torch.float32)
    assert torch.equal(encoder.shared.weight, again.shared.weight)  # seeded
