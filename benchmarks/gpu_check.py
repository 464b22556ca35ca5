"""GPU check at Wan2.1-T2V-1.3B size: speed and memory of a 30 s 480p PMWD run, with random weights, offline.

On one H100 / H200 (under 10 minutes, no internet: every weight is random and built on the GPU in bf16):

- **text encoding**: a UMT5-XXL-size encoder (24 layers, 4096 wide) encodes 4 captions + the negative;
- **PMWD step** for a 30 s video (121 latents, window 21, overlap 7: 9 windows) at 480x832 with guidance: seconds
  per step at window batch 1, 2, ``auto`` (``framecap_core.memory``'s choice for the free memory) and all windows;
- **plain loop**: the same 9 windows one after the other, one call each, no fusion (what serial context windows
  cost per step);
- **cross-attention**: one window forward with frame-level cross-attention (21 captions) vs the stock processor
  (one caption), same model;
- **decoding**: the Wan VAE (fp32) decodes the 121 latents into 481 frames;
- **peak memory of every phase** (``torch.cuda.max_memory_allocated`` above what was allocated before the phase)
  next to the memory plan's prediction for the same phase.

Writes one JSON file (``--out``) and prints it. ``--smoke`` runs the same code on the CPU with tiny random models
and small latents, decoding only 3 latents (CI-sized), so the script is known to work before a GPU sees it.

    python benchmarks/gpu_check.py --out gpu_check.json
    python benchmarks/gpu_check.py --smoke --out smoke.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "framecap_core" / "configs" / "wan2.1_t2v_1.3b"
SECONDS, FPS = 30, 16
WINDOW_FRAMES, OVERLAP_FRAMES = 81, 28  # 21 and 7 latents
CAPTIONS = ["a red fox wakes in its den at dawn", "the fox runs through deep snow",
            "the fox reaches a frozen lake at dusk", "night falls over the frozen lake"]


def geometry(smoke: bool) -> dict:
    """Configs, dtype, device and sizes of the run (real size, or the tiny ``--smoke`` stand-ins)."""
    if smoke:
        from framecap_core.testing import tiny_text_encoder_config, tiny_transformer_config, tiny_vae_config

        return dict(transformer=tiny_transformer_config(rope_max_seq_len=1024), text_len=16,
                    text_encoder=tiny_text_encoder_config(), vae=tiny_vae_config(), width=64, height=32,
                    dtype=torch.float32, device=torch.device("cpu"), repeats=1, decode_latents=3)

    def read(sub):
        return json.loads((SHIPPED / sub / "config.json").read_text(encoding="utf-8"))

    return dict(transformer=read("transformer"), text_len=512, text_encoder=read("text_encoder"), vae=read("vae"),
                width=832, height=480, dtype=torch.bfloat16, device=torch.device("cuda"), repeats=3,
                decode_latents=None)


class PeakMeter:
    """Peak memory of a phase: CUDA's allocator peak above the start, or peak RSS above the start on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            import psutil

            self.start = psutil.Process().memory_info().rss
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            import resource

            self.peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.start, 0)
        self.seconds = time.perf_counter() - self.t0
        return False


def gib(value: float) -> float:
    return round(value / 2**30, 3)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(smoke: bool) -> dict:
    from framecap_core import memory, sampling
    from framecap_core.attention import install_frame_level_attention, remove_frame_level_attention
    from framecap_core.backend import WanDenoiser, decode_latents
    from framecap_core.pipeline import GenerationSettings, plan_generation
    from framecap_core.schedule import flow_sigmas
    from framecap_core.testing import make_random_part, make_tiny_tokenizer
    from framecap_core.text import encode_captions
    from framecap_core.timeline import parse_timeline

    g = geometry(smoke)
    device, dtype, text_len = g["device"], g["dtype"], g["text_len"]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or use --smoke for the CPU check")
    timeline = parse_timeline(" | ".join(CAPTIONS), num_frames=SECONDS * FPS + 1, fps=FPS)
    settings = GenerationSettings(window=WINDOW_FRAMES, overlap=OVERLAP_FRAMES, width=g["width"], height=g["height"],
                                  steps=1, solver="euler")
    plan = plan_generation(timeline, settings)
    arch = memory.ModelArchitecture(transformer_config=g["transformer"], text_encoder_config=g["text_encoder"],
                                    vae_config=g["vae"], text_len=text_len, dtype=dtype)
    mem_plan, _ = memory.plan_generation_memory(arch, plan, settings, device="cuda", offload="model")
    report: dict = {
        "mode": "smoke" if smoke else "full", "device": torch.cuda.get_device_name() if device.type == "cuda"
        else platform.processor() or "cpu", "torch": torch.__version__, "dtype": str(dtype),
        "video": {"latents": plan.num_latents, "latent_hw": list(plan.latent_size), "window": plan.window_latents,
                  "overlap": plan.overlap_latents, "windows": len(plan.window_spans)},
        "predicted_weights_gib": {"transformer": gib(arch.transformer_bytes), "text_encoder": gib(arch.text_encoder_bytes),
                                  "vae": gib(arch.vae_bytes)},
    }

    # --- text encoding -------------------------------------------------------------------------------------------
    tokenizer = make_tiny_tokenizer()  # offline stand-in: token ids do not change the cost
    with PeakMeter(device) as meter:
        encoder = make_random_part("text_encoder", g["text_encoder"], dtype=dtype, device=device)
        embeds = encode_captions(encoder, tokenizer, [*timeline.unique_captions(), "low quality"], text_len=text_len)
        sync(device)
    text_phase = mem_plan.phase("text encoding")
    report["text_encoding"] = {"seconds_with_build": round(meter.seconds, 2), "peak_gib": gib(meter.peak),
                               "predicted_gib": gib(text_phase.peak)}
    del encoder
    gc.collect()

    # --- denoising -----------------------------------------------------------------------------------------------
    transformer = make_random_part("transformer", g["transformer"], dtype=dtype, device=device)
    install_frame_level_attention(transformer, text_len=text_len)
    position = {c: i for i, c in enumerate(timeline.unique_captions())}
    index = [position[c] for c in timeline.latent_captions()]
    denoiser = WanDenoiser(transformer, embeds[:-1], index, embeds[-1:], guidance_scale=5.0)
    h, w = plan.latent_size
    noise = torch.randn(16, plan.num_latents, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    n, stride = plan.window_latents, plan.stride_latents
    one_window = (noise[None, :, :n], torch.full((1, n), 999.0, device=device),
                  torch.arange(n, device=device)[None])
    denoiser(*one_window)  # kernel selection, allocator warm-up
    sync(device)
    model = SimpleNamespace(transformer=transformer, text_encoder=None, vae=None, text_len=text_len,
                            latent_channels=16, device=device, placement=None)
    auto = memory.auto_window_batch(model, num_windows=len(plan.window_spans), window_latents=n,
                                    latent_hw=plan.latent_size, guided=True, per_token=False,
                                    num_latents=plan.num_latents, num_captions=len(plan.unique_captions),
                                    solver="euler")
    steps = {}
    denoise_phase = mem_plan.phases[1]
    for label, batch in (("1", 1), ("2", 2), (f"auto ({auto})", auto), ("all", len(plan.window_spans))):
        with PeakMeter(device) as meter:
            sampling.pmwd(denoiser, noise, flow_sigmas(1), window=n, stride=stride, window_batch_size=batch,
                          solver="euler")
            sync(device)
        predicted = (arch.transformer_bytes + denoise_phase.buffers + mem_plan.activations(batch))
        steps[label] = {"seconds_per_step": round(meter.seconds, 3), "peak_above_weights_gib": gib(meter.peak),
                        "predicted_above_weights_gib": gib(predicted - arch.transformer_bytes),
                        "predicted_peak_gib": gib(predicted)}
    report["pmwd_step"] = steps
    with PeakMeter(device) as meter:
        for start, _ in plan.window_spans:  # serial context windows: one call per window, nothing fused
            denoiser(noise[None, :, start:start + n], torch.full((1, n), 999.0, device=device),
                     torch.arange(start, start + n, device=device)[None])
        sync(device)
    report["plain_loop_step"] = {"seconds_per_step": round(meter.seconds, 3), "peak_above_weights_gib": gib(meter.peak),
                                 "pmwd_batch_1_over_loop": round(steps["1"]["seconds_per_step"] / meter.seconds, 3)}

    # --- frame-level vs stock cross-attention ---------------------------------------------------------------------
    def timed(fn) -> float:
        times = []
        for _ in range(g["repeats"]):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    x = noise[None, :, :n].to(dtype).repeat(2, 1, 1, 1, 1)
    t = torch.full((2,), 999.0, device=device)
    frame_ctx = torch.cat([denoiser.context(one_window[2]), denoiser.uncond_context(1, n)])
    stock_ctx = torch.cat([embeds[:1], embeds[-1:]]).to(device, dtype)
    with torch.no_grad():
        frame_level = timed(lambda: transformer(hidden_states=x, timestep=t, encoder_hidden_states=frame_ctx,
                                                return_dict=False))
        remove_frame_level_attention(transformer)
        transformer(hidden_states=x, timestep=t, encoder_hidden_states=stock_ctx, return_dict=False)
        stock = timed(lambda: transformer(hidden_states=x, timestep=t, encoder_hidden_states=stock_ctx,
                                          return_dict=False))
    report["cross_attention_window_forward"] = {"frame_level_seconds": round(frame_level, 4),
                                                "stock_seconds": round(stock, 4), "ratio": round(frame_level / stock, 3)}
    transformer = denoiser = x = frame_ctx = None  # free the transformer before the VAE phase
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # --- decoding ------------------------------------------------------------------------------------------------
    vae = make_random_part("vae", g["vae"], dtype=torch.float32, device=device)
    latents = noise.cpu()[:, :g["decode_latents"]]  # --smoke: a few latents (the CPU's 3-D convolutions are slow)
    with PeakMeter(device) as meter:
        frames = decode_latents(vae, latents, torch.zeros(16), torch.ones(16))
    report["decoding"] = {"seconds": round(meter.seconds, 2), "frames": int(frames.shape[0]),
                          "peak_gib": gib(meter.peak), "predicted_gib": gib(mem_plan.phase("decoding").peak - arch.vae_bytes),
                          "note": "peak above the VAE's weights (they were on the device before)"}
    report["memory_plan"] = mem_plan.describe()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (checks the script, not a GPU)")
    parser.add_argument("--out", default="gpu_check.json", help="JSON file to write (default: gpu_check.json)")
    args = parser.parse_args()
    if args.smoke:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    report = run(args.smoke)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2)
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
