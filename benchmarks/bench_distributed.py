"""PMWD window forwards per second with 1 and 2 processes (torch.distributed, gloo on the CPU), side by side.

The same random Wan transformer, captions and noise as ``bench_pmwd.py`` (frame-level captions, cond + uncond in
one batch, ``window_batch_size=1``); K windows, S Euler steps. Each configuration runs in freshly spawned
processes with ONE torch thread each, so 2 processes use 2 cores and 1 process uses 1: the figure is how well the
windows split, plus what the per-step all-gather of predictions costs. Runs alternate (1, 2, 1, 2, ...) and the
speed-up is the median over those pairs, so drift in machine load cancels. The second row divides by the CPU time
of the busiest process instead of the wall time: what the split gives on a machine with a free core per process,
which a machine shared with other jobs (where the wall-clock row is noise) still measures.

Also timed in the 2-process group: broadcasting Wan-sized caption embeddings (4 captions x 512 tokens x 4096,
float32, 32 MB) from rank 0, which is what a ``torchrun`` generation does instead of encoding on every process.

    python benchmarks/bench_distributed.py             # the table
    python benchmarks/bench_distributed.py --quick     # a smoke run
    python benchmarks/bench_distributed.py --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import time

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_pmwd's model and inputs
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a clone

from bench_pmwd import build, latents_for, noise  # noqa: E402


def worker(rank: int, world: int, port: int, args, results) -> None:
    """One process of a run: build, warm up, then time S steps of K windows between two barriers."""
    import torch.distributed as dist

    from framecap_core.distributed import broadcast_tensors
    from framecap_core.sampling import pmwd
    from framecap_core.schedule import flow_sigmas

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    group = dist.group.WORLD if world > 1 else None
    denoiser = build(args)
    x = noise(latents_for(args.windows, args), args)

    def run(steps):
        return pmwd(denoiser, x, flow_sigmas(steps), window=args.window, stride=args.stride, window_batch_size=1,
                    solver="euler", process_group=group)

    run(1)  # warm-up
    dist.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    run(args.steps)
    cpu = torch.tensor([time.process_time() - c0], dtype=torch.float64)
    dist.barrier()
    seconds = time.perf_counter() - t0
    if world > 1:  # the busiest process's CPU time bounds the run on a machine with a free core per process
        dist.all_reduce(cpu, op=dist.ReduceOp.MAX)
    broadcast = None
    if world > 1:
        embeds = torch.randn(4, 512, 4096) if rank == 0 else None
        dist.barrier()
        t0 = time.perf_counter()
        broadcast_tensors(group, embeds)
        dist.barrier()
        broadcast = time.perf_counter() - t0
    if rank == 0:
        results.put({"world": world, "seconds": seconds, "cpu_seconds": float(cpu), "broadcast_s": broadcast})
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, args) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, world, port, args, results)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"a {world}-process run failed (exit codes {[p.exitcode for p in procs]})")
    out = results.get()
    out["forwards_per_s"] = args.windows * args.steps / out["seconds"]
    out["forwards_per_cpu_s"] = args.windows * args.steps / out["cpu_seconds"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=4, help="windows per step, K (default: 4)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, S (default: 3)")
    parser.add_argument("--pairs", type=int, default=3, help="(1 process, 2 processes) runs, median taken")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--ffn-dim", type=int, default=512)
    parser.add_argument("--text-dim", type=int, default=64)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--size", type=int, default=24, help="latent height = width (default: 24 -> 144 tokens)")
    parser.add_argument("--window", type=int, default=9, help="window in latents (default: 9)")
    parser.add_argument("--stride", type=int, default=6, help="window stride in latents (default: 6)")
    parser.add_argument("--quick", action="store_true", help="a small model and one pair: a smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.size, args.pairs, args.steps = 1, 8, 1, 2

    one, two = [], []
    for _ in range(args.pairs):
        one.append(measure(1, args))
        two.append(measure(2, args))
    speedups = [b["forwards_per_s"] / a["forwards_per_s"] for a, b in zip(one, two)]
    cpu_speedups = [b["forwards_per_cpu_s"] / a["forwards_per_cpu_s"] for a, b in zip(one, two)]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "windows": args.windows, "steps": args.steps, "tokens_per_frame": (args.size // 2) ** 2,
        "one_process_forwards_per_s": statistics.median(r["forwards_per_s"] for r in one),
        "two_processes_forwards_per_s": statistics.median(r["forwards_per_s"] for r in two),
        "speedup_median_of_pairs": statistics.median(speedups),
        "speedups": speedups,
        "one_process_forwards_per_cpu_s": statistics.median(r["forwards_per_cpu_s"] for r in one),
        "two_processes_forwards_per_cpu_s": statistics.median(r["forwards_per_cpu_s"] for r in two),
        "cpu_speedup_median_of_pairs": statistics.median(cpu_speedups),
        "cpu_speedups": cpu_speedups,
        "caption_broadcast_ms": 1000 * statistics.median(r["broadcast_s"] for r in two),
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"PMWD, {args.windows} windows of {args.window} latents x {report['tokens_per_frame']} tokens, "
          f"{args.steps} steps, window_batch_size 1, one thread per process ({report['machine']})")
    print("| | 1 process | 2 processes | ratio (ideal 2.00) |")
    print("|---|---|---|---|")
    print(f"| window forwards / s | {report['one_process_forwards_per_s']:.2f} | "
          f"{report['two_processes_forwards_per_s']:.2f} | **{report['speedup_median_of_pairs']:.2f}** "
          f"(pairs: {', '.join(f'{s:.2f}' for s in speedups)}) |")
    print(f"| window forwards / CPU second of the busiest process | {report['one_process_forwards_per_cpu_s']:.2f} | "
          f"{report['two_processes_forwards_per_cpu_s']:.2f} | **{report['cpu_speedup_median_of_pairs']:.2f}** "
          f"(pairs: {', '.join(f'{s:.2f}' for s in cpu_speedups)}) |")
    print(f"caption embeddings (4 x 512 x 4096 float32, 32 MB) broadcast from rank 0: "
          f"{report['caption_broadcast_ms']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
