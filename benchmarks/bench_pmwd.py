"""Cost of Parallel Multi-Window Denoising on a small random Wan transformer, on the CPU, side by side in one run.

Measured with the real backend (``WanDenoiser``: frame-level captions, cond + uncond in one batch) and the real
sampler (``sampling.pmwd``, one Euler step over the whole sequence):

(a) overhead: one PMWD step over K windows vs K separate one-window forwards, ``t_step(K) / (K * t_window)``.
    Target <= 1.10. Printed for ``window_batch_size=1`` (windows one after the other: pure overhead of slicing,
    fusion and the solver step) and for all K windows in one batch.
(b) scaling: PMWD step time for 2, 4, 8, 16 windows; linear scaling means a constant cost per window, so the
    figure is the per-window cost at K over that at K = 2 (the ratios of (a) divided by K = 2's); within 10% of 1.
(c) memory: peak resident memory added by one PMWD step at 16 windows over that at 1 window, both with
    ``window_batch_size=1``. Each run is a fresh subprocess that builds the model and inputs, records its RSS, then
    samples RSS every 0.5 ms in a thread during the step (torch releases the GIL while computing); the figure is
    ``max(RSS) - RSS before``. Target <= 1.5: with one window per call the activations are those of one window,
    and only the O(L) buffers (latents, fused velocity, weights) grow with the video.
(d) forwards per generated latent for pmwd, sliding and fifo at equal steps on a 30 s video (121 latents,
    windows of 21 with overlap 7), from ``sampling.estimate_cost`` and checked by running each sampler with a
    counting zero denoiser.

Each step is timed right after a one-window forward and ratios are taken within such pairs (median over repeats),
so drift in machine load cancels; raw step times are the fastest repeat. One thread by default (``--threads 0``: torch's default), so the
figures measure compute rather than thread scheduling on a shared machine.

    python benchmarks/bench_pmwd.py            # the table
    python benchmarks/bench_pmwd.py --json     # one JSON object
    python benchmarks/bench_pmwd.py --quick    # smaller model and fewer repeats (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import torch


def build(args):
    """The transformer (frame-level attention installed) and a ``WanDenoiser`` over random caption embeddings."""
    from framecap_core.attention import install_frame_level_attention
    from framecap_core.backend import WanDenoiser
    from framecap_core.testing import make_tiny_transformer

    transformer = make_tiny_transformer(
        seed=0, num_attention_heads=args.heads, attention_head_dim=args.head_dim, ffn_dim=args.ffn_dim,
        num_layers=args.layers, text_dim=args.text_dim, rope_max_seq_len=1024,
    )
    install_frame_level_attention(transformer, text_len=args.text_len)
    g = torch.Generator().manual_seed(0)
    max_latents = args.window + 15 * args.stride + 8
    embeds = torch.randn(4, args.text_len, args.text_dim, generator=g)
    index = (torch.arange(max_latents) * 4 // max_latents).tolist()  # four scenes
    negative = torch.randn(1, args.text_len, args.text_dim, generator=g)
    return WanDenoiser(transformer, embeds, index, negative, guidance_scale=5.0)


def latents_for(num_windows: int, args) -> int:
    """Sequence length whose PMWD plan has exactly ``num_windows`` windows."""
    return args.window + (num_windows - 1) * args.stride


def noise(num_latents: int, args) -> torch.Tensor:
    return torch.randn(16, num_latents, args.size, args.size, generator=torch.Generator().manual_seed(1))


def pmwd_step(denoiser, x, args, window_batch_size):
    from framecap_core.sampling import pmwd
    from framecap_core.schedule import flow_sigmas

    # one step from sigma 1: every window is evaluated once, fused, and the sequence moves once
    return pmwd(denoiser, x, flow_sigmas(1), window=args.window, stride=args.stride,
                window_batch_size=window_batch_size, solver="euler")


def one_window(denoiser, x, args):
    n = args.window
    t = torch.full((1, n), 1000.0)
    return denoiser(x[None, :, :n], t, torch.arange(n)[None])


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------------- memory


def child_memory(args) -> dict:
    """Run in a subprocess: peak RSS added by one PMWD step with ``args.child_windows`` windows."""
    import psutil

    denoiser = build(args)
    x = noise(latents_for(args.child_windows, args), args)
    proc = psutil.Process()
    import gc

    gc.collect()
    before = proc.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.0005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    pmwd_step(denoiser, x, args, window_batch_size=1)
    stop.set()
    thread.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return {"windows": args.child_windows, "latents": int(x.shape[1]), "rss_before_mb": before / 2**20,
            "peak_added_mb": (peak[0] - before) / 2**20}


def measure_memory(args, windows: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child-windows", str(windows), *args.passthrough]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------ forwards


def forwards_per_latent(steps: int, num_latents: int = 121, window: int = 21, overlap: int = 7) -> dict:
    """Window forwards per generated latent, from estimate_cost and from running the samplers (zero velocity)."""
    from framecap_core import sampling
    from framecap_core.schedule import flow_sigmas

    class Counting:
        windows = 0

        def __call__(self, x, t, frames):
            self.windows += x.shape[0]
            return torch.zeros_like(x)

    x = torch.zeros(1, num_latents, 1, 1)
    runs = {
        "pmwd": lambda d: sampling.pmwd(d, x, flow_sigmas(steps), window=window, stride=window - overlap),
        "sliding": lambda d: sampling.sliding_window(d, x, flow_sigmas(steps), window=window, context=overlap),
        "fifo": lambda d: sampling.fifo(d, x, flow_sigmas(window), window=window),
    }
    out = {}
    for method, run in runs.items():
        counter = Counting()
        run(counter)
        kwargs = dict(window=window, num_steps=steps)
        if method == "pmwd":
            kwargs["stride"] = window - overlap
        if method == "sliding":
            kwargs["context"] = overlap
        estimate = sampling.estimate_cost(method, num_latents, **kwargs).window_forwards
        assert counter.windows == estimate, (method, counter.windows, estimate)
        out[method] = {"forwards": counter.windows, "per_latent": counter.windows / num_latents,
                       "steps": window if method == "fifo" else steps}
    return out


# ---------------------------------------------------------------------------------------------------------- main


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks (default: 4)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default: 4)")
    parser.add_argument("--head-dim", type=int, default=32, help="dims per head (default: 32)")
    parser.add_argument("--ffn-dim", type=int, default=512, help="feed-forward width (default: 512)")
    parser.add_argument("--text-dim", type=int, default=64, help="caption embedding width (default: 64)")
    parser.add_argument("--text-len", type=int, default=64, help="tokens per caption (default: 64)")
    parser.add_argument("--size", type=int, default=24, help="latent height = width (default: 24 -> 144 tokens "
                        "per latent frame)")
    parser.add_argument("--window", type=int, default=9, help="window in latents (default: 9)")
    parser.add_argument("--stride", type=int, default=6, help="window stride in latents (default: 6)")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats, median taken (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1; 0 = torch's default)")
    parser.add_argument("--quick", action="store_true", help="small model, 2 repeats: a smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--child-windows", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.heads, args.head_dim, args.ffn_dim, args.size, args.repeats = 2, 2, 16, 64, 12, 2
    # what a memory subprocess needs to rebuild the same model
    args.passthrough = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                        ("layers", "heads", "head_dim", "ffn_dim", "text_dim", "text_len", "size", "window",
                         "stride", "threads")]
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.child_windows is not None:
        with torch.no_grad():
            print(json.dumps(child_memory(args)))
        return 0

    denoiser = build(args)
    result: dict = {"config": {k: getattr(args, k) for k in ("layers", "heads", "head_dim", "ffn_dim", "text_dim",
                                                              "text_len", "size", "window", "stride", "repeats",
                                                              "threads")},
                    "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    tokens = args.window * (args.size // 2) ** 2
    result["config"]["tokens_per_window"] = tokens

    with torch.no_grad():
        x16 = noise(latents_for(16, args), args)
        one_window(denoiser, x16, args)  # warm-up
        pmwd_step(denoiser, noise(latents_for(2, args), args), args, None)

        # (a) + (b): every step is timed right after a one-window forward, and each ratio is taken within that
        # pair, so machine-load drift over the run cancels; the figure is the median over repeats.
        ks = (2, 4, 8, 16)
        inputs = {k: noise(latents_for(k, args), args) for k in ks}
        pairs: dict[tuple[str, int], list[tuple[float, float]]] = {
            (mode, k): [] for k in ks for mode in ("serial", "batched")}
        for _ in range(args.repeats):
            for k in ks:
                for mode, wbs in (("serial", 1), ("batched", None)):
                    t_window = median_time(lambda: one_window(denoiser, x16, args), 1)
                    t_step = median_time(lambda k=k, wbs=wbs: pmwd_step(denoiser, inputs[k], args, wbs), 1)
                    pairs[mode, k].append((t_step, t_window))
        ratio = {(mode, k): statistics.median(step / (k * win) for step, win in v) for (mode, k), v in pairs.items()}
        step_s = {key: min(step for step, _ in v) for key, v in pairs.items()}
        t1 = min(win for v in pairs.values() for _, win in v)
        result["window_forward_s"] = t1
        result["overhead"] = {str(k): {"serial_ratio": ratio["serial", k], "batched_ratio": ratio["batched", k]}
                              for k in ks}
        # linear scaling <=> the per-window cost of a step does not depend on K: compare it with K = 2
        result["scaling"] = {
            str(k): {"serial_s": step_s["serial", k], "batched_s": step_s["batched", k],
                     "serial_vs_linear": ratio["serial", k] / ratio["serial", 2],
                     "batched_vs_linear": ratio["batched", k] / ratio["batched", 2]}
            for k in ks
        }

    mem1, mem16 = measure_memory(args, 1), measure_memory(args, 16)
    result["memory"] = {"1": mem1, "16": mem16, "ratio": mem16["peak_added_mb"] / max(mem1["peak_added_mb"], 1e-9)}
    result["forwards_per_latent"] = {"steps_21": forwards_per_latent(21), "steps_50": forwards_per_latent(50)}

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    cfg = result["config"]
    print(f"PMWD on a random Wan transformer ({cfg['layers']} layers, {cfg['heads']}x{cfg['head_dim']}, ffn "
          f"{cfg['ffn_dim']}), windows of {cfg['window']} latents at {cfg['size']}x{cfg['size']} ({tokens} tokens), "
          f"stride {cfg['stride']}, CFG in one batch; {args.threads or torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}")
    print(f"one-window forward: {1000 * t1:.1f} ms")
    print("\n(a) step over K windows / (K x one-window forward)   target <= 1.10")
    print("   K   window_batch_size=1   all windows in one batch")
    for k, v in result["overhead"].items():
        print(f"  {k:>2}   {v['serial_ratio']:>19.3f}   {v['batched_ratio']:>24.3f}")
    print("\n(b) step time (fastest run) vs windows; per-window cost relative to K = 2   target within 10% of 1")
    print("   K   batch=1 (ms)  vs linear   all-in-one (ms)  vs linear")
    for k, v in result["scaling"].items():
        print(f"  {k:>2}   {1000 * v['serial_s']:>11.1f}  {v['serial_vs_linear']:>9.3f}   "
              f"{1000 * v['batched_s']:>15.1f}  {v['batched_vs_linear']:>9.3f}")
    m = result["memory"]
    print("\n(c) peak RSS added by one PMWD step, window_batch_size=1   target ratio <= 1.5")
    for k in ("1", "16"):
        print(f"  {k:>2} window(s), {m[k]['latents']:>3} latents: {m[k]['peak_added_mb']:8.1f} MB")
    print(f"  ratio 16 / 1: {m['ratio']:.3f}")
    print("\n(d) window forwards per generated latent, 121 latents (30 s), window 21, overlap 7")
    print("   method    steps 21          steps 50")
    for method in ("pmwd", "sliding", "fifo"):
        a, b = result["forwards_per_latent"]["steps_21"][method], result["forwards_per_latent"]["steps_50"][method]
        fifo_note = " (fifo: steps forced to 21)" if method == "fifo" else ""
        print(f"   {method:<8} {a['forwards']:>4} = {a['per_latent']:.2f}    {b['forwards']:>5} = "
              f"{b['per_latent']:.2f}{fifo_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
