"""PMWD shared by several processes (torch.distributed, gloo on 127.0.0.1): the same latents as one process, bit
for bit; uneven and empty shares; a process that raises, a callback that cancels, processes that disagree, and a
process that dies — each stops every process with a clear error within the timeout.

Each test starts real processes (spawn) that join one gloo group; they write what they got to files that the test
reads back. The analytic denoiser mixes the windows of one call (as a transformer's rounding depends on which windows
share a call), and a tiny random Wan transformer is run too, so the processes match one process only because they
evaluate exactly its chunks of ``window_batch_size`` windows.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from framecap_core.distributed import shard, shard_sizes, window_shares
from framecap_core.errors import CancelledError, NumericalError
from framecap_core.sampling import estimate_cost, pmwd
from framecap_core.schedule import df_sigma_matrix, flow_sigmas
from framecap_core.windows import window_chunks

TIMEOUT_S = 30  # the process group's timeout: every failure must surface well within it
C, H, W = 2, 3, 2


class Mixing:
    """Frames interact (through the window mean and the window's first index), as a transformer's do, and so do the
    windows of one call (through their mean): a window's prediction depends on which windows share its call."""

    def __call__(self, x, t, frames):
        mean = x.mean(dim=2, keepdim=True)
        tt = (t / 1000)[:, None, :, None, None]
        return (0.5 * x - 0.7 * mean * tt + 0.05 * frames[:, :1, None, None, None].float() + torch.sin(x) * tt
                + 0.01 * x.mean(dim=0, keepdim=True))


class FailsAt(Mixing):
    """Raises (or, with ``die``, ends the process without a word) at its ``step``-th call."""

    def __init__(self, step, die=False):
        self.step, self.die, self.calls = step, die, 0

    def __call__(self, x, t, frames):
        self.calls += 1
        if self.calls == self.step:
            if self.die:
                os._exit(3)
            raise NumericalError("the denoiser returned NaN (injected)")
        return super().__call__(x, t, frames)


def noise_for(L, seed=0):
    return torch.randn(C, L, H, W, generator=torch.Generator().manual_seed(seed))


# name -> (num_latents, pmwd keyword arguments)
# Processes share whole calls of window_batch_size windows (window_chunks), contiguous and balanced.
CASES = {
    # 5 windows in calls of 2, 2, 1: one call each on 3 processes (2+2+1 windows), 2+1 calls on 2 (4+1)
    "flat_euler": (23, dict(window=7, stride=4, window_batch_size=2)),
    "pyramid_unipc_batch1": (23, dict(window=7, stride=4, fusion="pyramid", solver="unipc", window_batch_size=1)),
    "overlap_linear_df": (23, dict(window=7, stride=3, fusion="overlap-linear", window_batch_size=2,
                                   df=dict(df_step=2, causal_block_size=2))),
    # 8 windows in calls of 3, 3, 2
    "batch3_uneven_calls": (35, dict(window=7, stride=4, window_batch_size=3)),
    # all windows in one call (the sampler's default): one process evaluates them, the others wait
    "all_in_one_call": (23, dict(window=7, stride=4)),
    "fewer_windows_than_processes": (9, dict(window=7, stride=4, window_batch_size=1)),  # 2 windows: 1+1+0 on 3
}


def run_case(name, group=None, seed=0, denoiser=None, callback=None):
    num_latents, kwargs = CASES[name]
    kwargs = dict(kwargs)
    df = kwargs.pop("df", None)
    sigmas = flow_sigmas(6, 3.0)
    matrix = df_sigma_matrix(6, num_latents, shift=3.0, **df) if df else None
    return pmwd(denoiser or Mixing(), noise_for(num_latents, seed), sigmas, df_sigma_matrix=matrix,
                callback=callback, process_group=group, **kwargs)


TINY_WAN_BATCHES = (1, 2, None)


def run_tiny_wan(batch, group=None):
    """PMWD over a tiny random Wan transformer (real attention, real rounding): 5 windows of 5 latents, CFG."""
    from framecap_core.attention import install_frame_level_attention
    from framecap_core.backend import WanDenoiser
    from framecap_core.testing import make_tiny_transformer

    transformer = make_tiny_transformer(0)
    install_frame_level_attention(transformer, text_len=8)
    g = torch.Generator().manual_seed(0)
    embeds, negative = torch.randn(2, 8, 16, generator=g), torch.randn(8, 16, generator=g)
    denoiser = WanDenoiser(transformer, embeds, [0] * 9 + [1] * 8, negative, guidance_scale=5.0)
    noise = torch.randn(16, 17, 4, 4, generator=g)
    with torch.no_grad():
        return pmwd(denoiser, noise, flow_sigmas(3, 3.0), window=5, stride=3, window_batch_size=batch,
                    process_group=group)


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank, world, port):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return dist


def _outcome(fn):
    """Run ``fn``; ``{"ok": True}`` or the exception's type and message, and how long it took."""
    t0 = time.monotonic()
    try:
        fn()
        return {"ok": True, "seconds": time.monotonic() - t0}
    except Exception as exc:
        return {"ok": False, "type": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - t0}


def worker_cases(rank, world, port, out):
    """Every case on all 3 processes and on a 2-process subgroup, then the failure cases on all 3."""
    dist = _join(rank, world, port)
    pair = dist.new_group([0, 1])  # every process must take part in creating a group
    results, report = {}, {}
    for name in CASES:
        events = []
        results[f"{name}.3"] = run_case(name, dist.group.WORLD, callback=events.append)
        report[f"{name}.3.events"] = [(e.kind, e.window, e.num_windows, e.forwards, e.total_forwards) for e in events]
        if rank < 2:
            results[f"{name}.2"] = run_case(name, pair)
    for batch in TINY_WAN_BATCHES:
        results[f"tiny_wan_{batch}.3"] = run_tiny_wan(batch, dist.group.WORLD)
        if rank < 2:
            results[f"tiny_wan_{batch}.2"] = run_tiny_wan(batch, pair)
    # a process raises at its 3rd denoiser call; the others must stop at the same step
    report["raises"] = _outcome(lambda: run_case("flat_euler", dist.group.WORLD,
                                                 denoiser=FailsAt(3) if rank == 1 else Mixing()))

    def cancel_on_rank0(event):
        if rank == 0 and event.kind == "step" and event.step == 1:
            raise CancelledError("generation cancelled (injected)")

    # a callback that raises after a step's collective (a cancel) on one process
    report["cancel"] = _outcome(lambda: run_case("flat_euler", dist.group.WORLD, callback=cancel_on_rank0))
    # processes started with different seeds
    report["disagree"] = _outcome(lambda: run_case("flat_euler", dist.group.WORLD, seed=1 if rank == 2 else 0))
    # the group still works after every reported failure
    results["after_failures.3"] = run_case("flat_euler", dist.group.WORLD)
    save_file({k: v.contiguous() for k, v in results.items()}, os.path.join(out, f"rank{rank}.safetensors"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


def worker_dies(rank, world, port, out):
    _join(rank, world, port)
    report = _outcome(lambda: run_case("flat_euler", torch.distributed.group.WORLD,
                                       denoiser=FailsAt(2, die=True) if rank == 1 else Mixing()))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


def launch(worker, world, out):
    """Start ``world`` spawned processes running ``worker(rank, world, port, out)``; wait for them all (a process
    that hangs fails the test after the timeout instead of hanging it). Returns their exit codes."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, world, port, str(out))) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 4 * TIMEOUT_S + 60  # process start-up on a loaded machine included
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a process hung instead of stopping with an error"
    return [p.exitcode for p in procs]


def test_shares_are_contiguous_balanced_and_cover_the_windows():
    assert shard_sizes(11, 2) == [6, 5]
    assert shard_sizes(5, 3) == [2, 2, 1]
    assert shard_sizes(2, 3) == [1, 1, 0]
    items = list(range(11))
    for world in (1, 2, 3, 4, 12):
        shares = [shard(items, r, world) for r in range(world)]
        assert sum(shares, []) == items
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_processes_share_one_process_calls_whole():
    assert window_chunks(range(5), 2) == [[0, 1], [2, 3], [4]]
    assert window_chunks([3, 5, 8], 5) == [[3, 5, 8]]
    assert window_shares(range(5), 2, 2) == [[[0, 1], [2, 3]], [[4]]]
    assert window_shares(range(5), 2, 3) == [[[0, 1]], [[2, 3]], [[4]]]
    assert window_shares(range(5), 5, 3) == [[[0, 1, 2, 3, 4]], [], []]
    windows = [1, 2, 4, 7, 8, 9, 11]
    for batch in (1, 2, 3, 7):
        chunks = window_chunks(windows, batch)
        assert sum(chunks, []) == windows and all(len(c) == batch for c in chunks[:-1])
        for world in (1, 2, 3, 5):
            shares = window_shares(windows, batch, world)
            assert sum(shares, []) == chunks  # every process count: the same calls, in the same order
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_the_plan_says_how_the_processes_share_the_windows():
    from framecap_core.errors import ConfigError
    from framecap_core.pipeline import GenerationSettings, plan_generation
    from framecap_core.timeline import parse_timeline

    timeline = parse_timeline("a red fox | the fox jumps", num_frames=481)  # 121 latents: 9 windows of 21, stride 14
    settings = GenerationSettings(window_batch_size=1)
    assert len(plan_generation(timeline, settings).window_spans) == 9
    assert "processes" not in plan_generation(timeline, settings).describe()
    assert "\n2 processes, 5 and 4 windows per step (1 per call)\n" in plan_generation(timeline, settings, 2).describe()
    assert "\n3 processes, 3 windows each per step (1 per call)\n" in plan_generation(timeline, settings, 3).describe()
    batch2 = GenerationSettings(window_batch_size=2)  # calls of 2, 2, 2, 2, 1
    assert "\n2 processes, 6 and 3 windows per step (2 per call)\n" in plan_generation(timeline, batch2, 2).describe()
    assert "\n3 processes, 4, 4 and 1 windows per step (2 per call)\n" in plan_generation(timeline, batch2,
                                                                                          3).describe()
    whole = GenerationSettings(window_batch_size=None)
    assert "\n2 processes, 9 and 0 windows per step (all in one call)\n" in plan_generation(timeline, whole,
                                                                                           2).describe()
    auto = plan_generation(timeline, GenerationSettings(), 2).describe()  # resolved on the devices at run time
    assert ("\n2 processes share each step's 9 windows by whole transformer calls of --window-batch-size auto (as "
            "many as fit one device; when all 9 fit, one process evaluates them all, so use --window-batch-size 5 or "
            "less to keep every process busy)\n") in auto
    for method in ("sliding", "fifo", "single"):
        with pytest.raises(ConfigError, match=f"method '{method}' evaluates one window at a time"):
            plan_generation(timeline, GenerationSettings(method=method), 2)


@pytest.fixture(scope="module")
def three_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist3")
    codes = launch(worker_cases, 3, out)
    assert codes == [0, 0, 0]
    results = [load_file(str(out / f"rank{r}.safetensors")) for r in range(3)]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(3)]
    return results, reports


@pytest.mark.parametrize("name", list(CASES))
def test_two_and_three_processes_give_the_latents_of_one_bit_for_bit(three_processes, name):
    results, _ = three_processes
    reference = run_case(name)
    for rank in range(3):
        assert torch.equal(results[rank][f"{name}.3"], reference), (name, rank)
    for rank in range(2):
        assert torch.equal(results[rank][f"{name}.2"], reference), (name, rank)


def test_a_real_transformer_on_two_and_three_processes_gives_the_bits_of_one(three_processes):
    """Windows of a Wan transformer get other rounding in other calls; the processes evaluate one process's calls."""
    results, _ = three_processes
    with one_thread():  # as each process runs: on CPUs the bits also depend on the thread count
        reference = {batch: run_tiny_wan(batch) for batch in TINY_WAN_BATCHES}
    assert not torch.equal(reference[1], reference[2])  # the call a window is in changes its bits
    for batch in TINY_WAN_BATCHES:
        for rank in range(3):
            assert torch.equal(results[rank][f"tiny_wan_{batch}.3"], reference[batch]), (batch, rank)
        for rank in range(2):
            assert torch.equal(results[rank][f"tiny_wan_{batch}.2"], reference[batch]), (batch, rank)


def test_uneven_shares_and_the_events_of_each_process(three_processes):
    _, reports = three_processes
    num_latents, kwargs = CASES["flat_euler"]
    total = estimate_cost("pmwd", num_latents, window=kwargs["window"], num_steps=6, stride=kwargs["stride"])
    for rank, share in enumerate([2, 2, 1]):  # 5 windows on 3 processes
        events = reports[rank]["flat_euler.3.events"]
        windows = [e for e in events if e[0] == "window"]
        steps = [e for e in events if e[0] == "step"]
        assert len(steps) == total.steps
        assert {e[2] for e in windows} == {share}  # a process's window events count its own share
        assert all(e[1] == e[2] == 5 for e in steps)  # step events count all the step's windows
        assert events[-1][3] == events[-1][4] == total.window_forwards
    # a process with no window in a step evaluates nothing but still takes every step
    events = reports[2]["fewer_windows_than_processes.3.events"]
    assert [e for e in events if e[0] == "window"] == []
    assert sum(e[0] == "step" for e in events) == 6


def test_a_process_that_raises_stops_all_at_the_same_step(three_processes):
    results, reports = three_processes
    mine = reports[1]["raises"]
    assert (mine["ok"], mine["type"]) == (False, "NumericalError")
    for rank in (0, 2):
        got = reports[rank]["raises"]
        assert (got["ok"], got["type"]) == (False, "DistributedError")
        # one denoiser call per step, so its 3rd call is in step 3
        assert got["message"].startswith("process 1 of 3 failed at step 3/6: NumericalError: the denoiser returned NaN")
        assert got["seconds"] < TIMEOUT_S / 2
    cancelled = reports[0]["cancel"]
    assert (cancelled["ok"], cancelled["type"]) == (False, "CancelledError")
    for rank in (1, 2):
        got = reports[rank]["cancel"]
        assert got["type"] == "DistributedError"
        assert got["message"].startswith("process 0 of 3 failed at step 3/6: CancelledError: generation cancelled")
    for rank in range(3):
        got = reports[rank]["disagree"]
        assert got["type"] == "DistributedError"
        assert "disagree" in got["message"] and "process 2" in got["message"]
        assert torch.equal(results[rank]["after_failures.3"], run_case("flat_euler"))


def test_a_process_that_dies_stops_the_others_within_the_timeout(tmp_path):
    codes = launch(worker_dies, 2, tmp_path)
    assert codes[1] == 3
    survivor = json.loads((tmp_path / "rank0.json").read_text())
    assert (survivor["ok"], survivor["type"]) == (False, "DistributedError")
    assert survivor["message"].startswith("lost the other processes at step 2/6")
    assert survivor["seconds"] < TIMEOUT_S + 10


# ---------------------------------------------------------------- the command line under torchrun

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 13 latents in 4 windows of 5 (window 17 frames, overlap 8), 2 steps; the default window batch
TOY_RUN = ["generate", "--model", "toy", "--timeline", "a red circle moves right on a blue background", "--seconds",
           "3", "--window", "17", "--overlap", "8", "--steps", "2", "--no-storyboard"]


def torchrun(args, cwd, nproc=2):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "framecap_core", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_generate_writes_the_video_of_one_process(tmp_path):
    from framecap_core.cli import main

    with one_thread():  # torchrun gives each process one thread; on CPUs the bits depend on the thread count
        assert main([*TOY_RUN, "--out", str(tmp_path / "one.mp4"), "--quiet"]) == 0
        assert main([*TOY_RUN, "--window-batch-size", "2", "--out", str(tmp_path / "one_b2.mp4"), "--quiet"]) == 0
    done = torchrun([*TOY_RUN, "--out", "two.mp4"], cwd=tmp_path)  # the default settings
    assert done.returncode == 0, done.stderr[-2000:]
    # rank 0 alone prints the plan (with how the processes share the windows) and writes
    assert done.stderr.count("2 processes share each step's 4 windows by whole transformer calls") == 1
    assert done.stdout.count("wrote ") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.mp4", "one.timeline.json", "one_b2.mp4",
                                                           "one_b2.timeline.json", "two.mp4", "two.timeline.json"]
    assert (tmp_path / "two.mp4").read_bytes() == (tmp_path / "one.mp4").read_bytes()
    # calls of 2 windows shared by 3 processes (2, 2 and 0 windows): the video of one process with calls of 2
    done = torchrun([*TOY_RUN, "--window-batch-size", "2", "--out", "three_b2.mp4"], cwd=tmp_path, nproc=3)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("3 processes, 2, 2 and 0 windows per step (2 per call)") == 1
    assert (tmp_path / "three_b2.mp4").read_bytes() == (tmp_path / "one_b2.mp4").read_bytes()

    # a sequential baseline cannot be shared: a clear error, no traceback, nothing written
    refused = torchrun([*TOY_RUN, "--method", "sliding", "--out", "sliding.mp4"], cwd=tmp_path)
    assert refused.returncode != 0
    assert ("framecap: error: method 'sliding' evaluates one window at a time, each after the previous, so 2 "
            "processes cannot share it") in refused.stderr
    assert "framecap_core/" not in refused.stderr  # no traceback of ours (torchrun prints its own summary)
    assert not list(tmp_path.glob("sliding*"))
