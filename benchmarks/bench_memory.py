"""The memory plan against measurement: predicted vs measured peak of every phase, side by side, in one run.

For each model size and phase (text encoding, denoising at window batch k, decoding) a fresh subprocess
warms the kernels up on a tiny model, records its resident memory, builds the part with random weights (directly in
its dtype, no float32 copy), runs the phase as the pipeline does (``encode_captions``, one ``sampling.pmwd`` step
over ``WanDenoiser``, ``decode_latents``), and reports ``peak RSS - RSS before`` (``ru_maxrss``; glibc is told to
return freed blocks to the system at once, so RSS follows live memory). With a GPU (``--device cuda``) the
measurement is ``torch.cuda.max_memory_allocated`` instead. The prediction is ``framecap_core.memory.plan_memory``
for the same part on its own (what ``offload="model"`` puts on a device): weights + whole-video buffers + traced
activations. Target: every prediction within 15% of the measurement.

Sizes: ``small`` and ``medium`` random Wan-like models where activations dominate, and ``wan2.1-1.3b``, the real
Wan2.1-T2V-1.3B transformer (30 layers, dim 1536, text_len 512) and Wan VAE at a small spatial size, with a
UMT5-XXL-width text encoder cut to one layer (its full 24 layers do not fit a shared CPU machine next to the rest).

    python benchmarks/bench_memory.py              # the table (a few minutes on 2 cores; the 1.3B runs take most)
    python benchmarks/bench_memory.py --sizes small medium --json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "framecap_core", "configs", "wan2.1_t2v_1.3b")


def size_spec(name: str) -> dict:
    """Configs and run geometry of one benchmark size."""
    from framecap_core.testing import tiny_text_encoder_config, tiny_transformer_config, tiny_vae_config

    if name == "small":
        return dict(
            transformer=tiny_transformer_config(num_layers=2, num_attention_heads=4, attention_head_dim=32,
                                                ffn_dim=512, text_dim=256, rope_max_seq_len=1024),
            text_encoder=tiny_text_encoder_config(d_model=256, d_kv=32, num_heads=8, d_ff=512),
            vae=tiny_vae_config(base_dim=8), dtype="fp32", text_len=64, window=9, stride=6, latent_hw=(32, 32),
            windows=3, ks=(1, 3), guided=True, captions=3, decode_latents=3, decode_hw=(16, 16))
    if name == "medium":
        return dict(
            transformer=tiny_transformer_config(num_layers=4, num_attention_heads=8, attention_head_dim=64,
                                                ffn_dim=2048, text_dim=1024, rope_max_seq_len=1024),
            text_encoder=tiny_text_encoder_config(d_model=1024, d_kv=64, num_heads=16, d_ff=2816, num_layers=2),
            vae=tiny_vae_config(base_dim=16), dtype="fp32", text_len=128, window=13, stride=9, latent_hw=(40, 40),
            windows=2, ks=(1, 2), guided=True, captions=5, decode_latents=3, decode_hw=(16, 24))
    if name == "wan2.1-1.3b":
        def read(sub):
            with open(os.path.join(SHIPPED, sub, "config.json"), encoding="utf-8") as f:
                return json.load(f)

        return dict(transformer=read("transformer"), text_encoder=dict(read("text_encoder"), num_layers=1),
                    vae=read("vae"), dtype="fp32", text_len=512, window=3, stride=3, latent_hw=(8, 8), windows=1,
                    ks=(1,), guided=False, captions=1, decode_latents=3, decode_hw=(8, 8))
    raise SystemExit(f"unknown size {name!r}")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def architecture(spec: dict):
    from framecap_core.memory import ModelArchitecture

    return ModelArchitecture(transformer_config=spec["transformer"], text_encoder_config=spec["text_encoder"],
                             vae_config=spec["vae"], text_len=spec["text_len"], dtype=DTYPES[spec["dtype"]])


def num_latents(spec: dict) -> int:
    return spec["window"] + (spec["windows"] - 1) * spec["stride"]


def predict(spec: dict, phase: str, k: int, device: str):
    """The plan's phase for this part alone: (peak bytes, the phase)."""
    from framecap_core.memory import plan_memory

    plan = plan_memory(
        architecture(spec), num_latents=num_latents(spec), latent_hw=spec["latent_hw"], window_latents=spec["window"],
        num_windows=spec["windows"], num_captions=spec["captions"], window_batch_size=k, guided=spec["guided"],
        solver="euler", offload="model", device=device, decode_frames=1 + 4 * (spec["decode_latents"] - 1)
        if phase == "decode" else None)
    if phase == "text":
        found = plan.phase("text encoding")
    elif phase == "denoise":
        found = plan.phases[1]
    else:
        found = plan.phase("decoding")
    return found.peak - found.resident, found


# ------------------------------------------------------------------------------------------------------ the child


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def warm_up() -> None:
    """First calls of oneDNN / attention / conv kernels allocate caches once; do them before measuring."""
    from framecap_core.backend import decode_latents
    from framecap_core.testing import make_tiny_text_encoder, make_tiny_tokenizer, make_tiny_transformer, make_tiny_vae

    transformer = make_tiny_transformer()
    with torch.no_grad():
        transformer(hidden_states=torch.randn(2, 16, 2, 4, 4), timestep=torch.tensor([1.0, 1.0]),
                    encoder_hidden_states=torch.randn(2, 8, 16), return_dict=False)
        encoder = make_tiny_text_encoder()
        ids = make_tiny_tokenizer()(["a cat"], padding="max_length", max_length=8, return_tensors="pt")
        encoder(ids.input_ids, ids.attention_mask)
    vae = make_tiny_vae()
    decode_latents(vae, torch.randn(16, 2, 4, 4), torch.zeros(16), torch.ones(16))
    del transformer, encoder, vae
    gc.collect()


def child(args) -> dict:
    torch.set_num_threads(1)
    from framecap_core import sampling
    from framecap_core.attention import install_frame_level_attention
    from framecap_core.backend import WanDenoiser, decode_latents
    from framecap_core.schedule import flow_sigmas
    from framecap_core.testing import make_random_part, make_tiny_tokenizer
    from framecap_core.text import encode_captions

    spec = size_spec(args.size)
    dtype = DTYPES[spec["dtype"]]
    cuda = args.device == "cuda"
    tokenizer = make_tiny_tokenizer()
    if not cuda:
        warm_up()
    gen = torch.Generator().manual_seed(0)
    h, w = spec["latent_hw"]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        gc.collect()
        before = rss()
    t0 = time.perf_counter()
    if args.phase == "text":
        encoder = make_random_part("text_encoder", spec["text_encoder"], dtype=dtype, device=args.device)
        captions = [f"a red fox number {i} runs through the snow" for i in range(spec["captions"] + 1)]
        encode_captions(encoder, tokenizer, captions, text_len=spec["text_len"])
    elif args.phase == "denoise":
        transformer = make_random_part("transformer", spec["transformer"], dtype=dtype, device=args.device)
        install_frame_level_attention(transformer, text_len=spec["text_len"])
        dim = spec["transformer"]["text_dim"]
        embeds = torch.randn(spec["captions"], spec["text_len"], dim, generator=gen).to(args.device, dtype)
        negative = torch.randn(1, spec["text_len"], dim, generator=gen).to(args.device, dtype)
        length = num_latents(spec)
        index = [i * spec["captions"] // length for i in range(length)]
        denoiser = WanDenoiser(transformer, embeds, index, negative, guidance_scale=5.0 if spec["guided"] else 1.0)
        noise = torch.randn(16, length, h, w, generator=gen).to(args.device)
        sampling.pmwd(denoiser, noise, flow_sigmas(1), window=spec["window"], stride=spec["stride"],
                      window_batch_size=args.k, solver="euler")
    else:
        vae = make_random_part("vae", spec["vae"], dtype=torch.float32, device=args.device)
        latents = torch.randn(16, spec["decode_latents"], *spec["decode_hw"], generator=gen)
        decode_latents(vae, latents, torch.zeros(16), torch.ones(16))
    seconds = time.perf_counter() - t0
    if cuda:
        measured = torch.cuda.max_memory_allocated() - before
    else:
        measured = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"measured": measured, "seconds": seconds}


def run_child(size: str, phase: str, k: int, device: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               PYTHONWARNINGS="ignore")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--size", size, "--phase", phase, "--k", str(k),
           "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"child {size}/{phase}/k={k} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def decode_spec(spec: dict) -> dict:
    """Decoding is measured on ``decode_latents`` latents of ``decode_hw`` (the CPU's 3-D convolutions are slow);
    the plan is asked for the same."""
    return dict(spec, windows=1, window=spec["decode_latents"], stride=spec["decode_latents"],
                latent_hw=spec["decode_hw"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["small", "medium", "wan2.1-1.3b"])
    parser.add_argument("--phases", nargs="+", default=["text", "denoise", "decode"])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0

    rows = []
    for size in args.sizes:
        spec = size_spec(size)
        for phase in args.phases:
            for k in (spec["ks"] if phase == "denoise" else (1,)):
                run_spec = decode_spec(spec) if phase == "decode" else spec
                predicted, parts = predict(run_spec, phase, k, args.device)
                got = run_child(size, phase, k, args.device)
                fixed = parts.weights + parts.buffers
                rows.append({
                    "size": size, "phase": phase if phase != "denoise" else f"denoise k={k}",
                    "predicted_gib": predicted / 2**30, "measured_gib": got["measured"] / 2**30,
                    "ratio": predicted / got["measured"],
                    "predicted_activations_gib": parts.activations / 2**30,
                    "measured_above_weights_and_buffers_gib": (got["measured"] - fixed) / 2**30,
                    "seconds": got["seconds"],
                })
                if not args.json:
                    r = rows[-1]
                    print(f"{size:<12} {r['phase']:<12} predicted {r['predicted_gib']:7.3f} GiB  measured "
                          f"{r['measured_gib']:7.3f} GiB  ratio {r['ratio']:.3f}   activations: predicted "
                          f"{r['predicted_activations_gib']:.3f}, measured {r['measured_above_weights_and_buffers_gib']:.3f}"
                          f"  ({r['seconds']:.0f} s)", flush=True)
    worst = max(abs(r["ratio"] - 1) for r in rows)
    result = {"device": args.device, "machine": platform.machine(), "torch": torch.__version__, "rows": rows,
              "worst_relative_error": worst, "target": 0.15, "met": worst <= 0.15}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"worst |predicted / measured - 1| = {worst:.3f} (target <= 0.15): {'met' if worst <= 0.15 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
