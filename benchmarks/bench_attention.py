"""Cost of frame-level cross-attention: one Wan transformer forward, frame-level processor vs stock processor.

Both run in the same process on the same random model, interleaved (stock, frame-level, stock, ...) so drift in
machine load hits both equally. The figure is the median over pairs of (frame-level time / stock time), each pair
run back to back; the ratio of the two medians is printed too. One thread by default: it measures compute rather
than thread scheduling on a shared machine (``--threads 0`` uses torch's default).

- stock:       diffusers' ``WanAttnProcessor``, one caption for the whole video, context ``[B, text_len, text_dim]``
- frame-level: ``FrameLevelWanAttnProcessor``, one distinct caption per latent frame, ``[B, F*text_len, text_dim]``

The default config keeps Wan2.1's proportions where they decide the ratio -- 1560 video tokens per latent frame
(480x832), 512 text tokens per caption, several latent frames -- at a width a CPU runs in about a second
(Wan2.1-1.3B: dim 1536, 30 layers). The frame-level forward does the same attention work per query (each query
sees text_len keys); what it adds is projecting F captions instead of one (text embedder and k/v projections).

    python benchmarks/bench_attention.py            # prints both times and the ratio
    python benchmarks/bench_attention.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from framecap_core.attention import install_frame_level_attention, remove_frame_level_attention


def build_model(args) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=args.heads,
        attention_head_dim=args.head_dim,
        in_channels=16,
        out_channels=16,
        text_dim=args.text_dim,
        freq_dim=256,
        ffn_dim=args.ffn_dim,
        num_layers=args.layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
    ).eval()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=3, help="latent frames F (default 3)")
    parser.add_argument("--latent-height", type=int, default=60, help="latent height (480 px / 8)")
    parser.add_argument("--latent-width", type=int, default=104, help="latent width (832 px / 8)")
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--text-dim", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--ffn-dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed forwards per variant (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 16, args.frames, args.latent_height, args.latent_width, generator=g)
    t = torch.full((args.batch,), 500.0)
    one_caption = torch.randn(args.batch, args.text_len, args.text_dim, generator=g)
    per_frame = torch.randn(args.batch, args.frames * args.text_len, args.text_dim, generator=g)

    def stock():
        remove_frame_level_attention(model)
        with torch.inference_mode():
            model(x, t, one_caption, return_dict=False)

    def frame_level():
        install_frame_level_attention(model, text_len=args.text_len)
        with torch.inference_mode():
            model(x, t, per_frame, return_dict=False)

    for _ in range(args.warmup):
        stock()
        frame_level()
    stock_times, frame_times = [], []
    for _ in range(args.repeats):
        stock_times.append(timed(stock))
        frame_times.append(timed(frame_level))

    stock_s = statistics.median(stock_times)
    frame_s = statistics.median(frame_times)
    paired_ratio = statistics.median(f / s for f, s in zip(frame_times, stock_times))
    tokens_per_frame = (args.latent_height // 2) * (args.latent_width // 2)
    result = {
        "benchmark": "frame_level_cross_attention",
        "stock_forward_s": round(stock_s, 4),
        "frame_level_forward_s": round(frame_s, 4),
        "ratio": round(paired_ratio, 4),
        "ratio_of_medians": round(frame_s / stock_s, 4),
        "target_ratio": 1.05,
        "config": {
            "latent_frames": args.frames,
            "tokens_per_frame": tokens_per_frame,
            "video_tokens": tokens_per_frame * args.frames,
            "text_len": args.text_len,
            "text_dim": args.text_dim,
            "dim": args.heads * args.head_dim,
            "heads": args.heads,
            "ffn_dim": args.ffn_dim,
            "layers": args.layers,
            "batch": args.batch,
            "warmup": args.warmup,
            "repeats": args.repeats,
        },
        "stock_times_s": [round(v, 4) for v in stock_times],
        "frame_level_times_s": [round(v, 4) for v in frame_times],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        cfg = result["config"]
        print(
            f"Wan forward, {cfg['latent_frames']} latent frames x {cfg['tokens_per_frame']} tokens, "
            f"text_len {cfg['text_len']}, dim {cfg['dim']}, {cfg['layers']} layers, "
            f"{result['threads']} threads, median of {args.repeats}"
        )
        print(f"  stock processor (1 caption):                 {stock_s * 1000:8.1f} ms")
        print(f"  frame-level processor ({args.frames} captions):          {frame_s * 1000:8.1f} ms")
        print(
            f"  ratio frame-level / stock: {result['ratio']:.3f} (median of paired runs; ratio of medians "
            f"{result['ratio_of_medians']:.3f}; target <= 1.05)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
