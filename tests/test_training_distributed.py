"""Data-parallel fine-tuning really run with two processes: ``accelerate launch --multi_gpu --num_processes 2
training/finetune.py`` on the CPU (gloo), against one process drawing the same global batch. (``accelerate launch
--cpu --num_processes 2`` starts one process — accelerate's CPU launcher needs MPI for more — which refuses to train
alone.)

What two processes must give: one set of checkpoints and one log (main process only); the samples of each step
split between the processes without overlap, an epoch covering every clip once; the losses of a one-process run
with ``batch_size`` doubled; and an exact resume from a checkpoint of the two-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from framecap_core.testing import save_tiny_wan

REPO = Path(__file__).resolve().parents[1]
FINETUNE = REPO / "training" / "finetune.py"
CLIPS = 6  # one epoch = 3 steps of a global batch of 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate_two_processes(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), str(FINETUNE), *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from test_training import TEXT_LEN, _make_cache

    root = tmp_path_factory.mktemp("ddp")
    _make_cache(root / "cache", clips=CLIPS)
    base = save_tiny_wan(root / "base", text_len=TEXT_LEN)["diffusers"]
    config = root / "config.json"
    config.write_text(json.dumps({
        "base_model": str(base), "cache_dir": str(root / "cache"), "output_dir": str(root / "two"),
        "height": 32, "width": 32, "window_latents": 4, "max_steps": 3, "batch_size": 1, "learning_rate": 2e-3,
        "lr_warmup_steps": 1, "checkpoint_every": 2, "keep_checkpoints": 0, "report_to": "none",
        "export_format": "none", "seed": 3,
    }))
    two = _accelerate_two_processes(["--config", str(config), "--no-progress"], cwd=root)
    # resume the two-process run from its step-2 checkpoint, into a fresh folder
    _accelerate_two_processes(["--config", str(config), "--no-progress", "--output-dir", str(root / "resumed"),
                               "--resume", str(root / "two" / "checkpoints" / "step-00000002")], cwd=root)
    # one process, the same global batch
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("framecap_finetune_ddp", FINETUNE)
    finetune = module_from_spec(spec)
    spec.loader.exec_module(finetune)
    assert finetune.main(["--config", str(config), "--no-progress", "--set", "batch_size=2", "--output-dir",
                          str(root / "one")]) == 0
    return root, two


def test_one_set_of_checkpoints_and_one_log(runs):
    root, two = runs
    assert sorted(p.name for p in (root / "two" / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    assert [r["step"] for r in _log(root / "two")] == [1, 2, 3]
    assert two.stdout.count("steps 1-3") == 1  # the main process reports for both


def test_each_step_splits_the_global_batch_and_the_epoch_covers_every_clip(runs):
    root, _ = runs
    records = _log(root / "two")
    positions = [[d["position"] for d in r["df"]] for r in records]
    assert positions == [[0, 1], [2, 3], [4, 5]]  # rank 0 took 2s, rank 1 2s + 1: disjoint, nothing skipped
    clips = [d["clip"] for r in records for d in r["df"]]
    assert sorted(clips) == sorted(f"clip{c}" for c in range(CLIPS))  # one epoch: every clip exactly once
    # the very samples (clip, crop, Diffusion Forcing noise) one process draws for the same global batch
    assert [r["df"] for r in records] == [r["df"] for r in _log(root / "one")]


def test_loss_matches_one_process_with_the_same_global_batch(runs):
    """Same samples, weights and noise: the two runs differ only in float32 rounding — the batch mean of two losses
    against the mean of two processes' losses, and in-batch gradient sums against the gloo all-reduce of two
    gradients (measured: ~1e-7 relative, the same as one process computing the batch as 2 accumulated
    micro-batches). Three Adam steps carry that forward without amplifying it beyond 1e-5 relative."""
    root, _ = runs
    two = [r["loss"] for r in _log(root / "two")]
    one = [r["loss"] for r in _log(root / "one")]
    assert len(two) == len(one) == 3
    for a, b in zip(two, one):
        assert abs(a - b) <= 1e-5 * abs(b), (two, one)
    assert two != [two[0]] * 3  # the model is learning, so later steps test the synchronized updates


def test_resume_from_a_two_process_checkpoint_is_exact(runs):
    root, _ = runs
    assert [(r["step"], r["loss"]) for r in _log(root / "resumed")] == [
        (r["step"], r["loss"]) for r in _log(root / "two")[2:]]
    final = load_file(str(root / "two" / "checkpoints" / "step-00000003" / "model.safetensors"))
    resumed = load_file(str(root / "resumed" / "checkpoints" / "step-00000003" / "model.safetensors"))
    assert final.keys() == resumed.keys()
    assert all((final[k] == resumed[k]).all() for k in final)


def test_accelerate_cpu_launcher_starting_one_process_for_two_refuses_and_names_the_commands_that_work(tmp_path):
    """``accelerate launch --num_processes 2 --cpu`` starts ONE process (accelerate's CPU launcher needs MPI for
    more); that process must not train alone on another global batch but say which commands start two."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(FINETUNE), "--config", str(REPO / "training" / "configs" / "toy.json")]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("error: accelerate launch --cpu started only this one process") == 1
    assert "accelerate launch --multi_gpu --num_processes N training/finetune.py" in done.stderr
    assert "torchrun --nproc_per_node N training/finetune.py" in done.stderr
    assert list(tmp_path.iterdir()) == []  # refused before reading data or writing anything


def test_the_launcher_check_reads_only_what_accelerate_sets():
    from framecap_core.errors import ConfigError
    from framecap_core.training import check_all_processes_started

    alone = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(ConfigError, match="started only this one process"):
        check_all_processes_started(alone)
    check_all_processes_started({"ACCELERATE_USE_CPU": "True"})  # --cpu, one process asked for
    check_all_processes_started({**alone, "WORLD_SIZE": "2", "RANK": "0"})  # --multi_gpu / torchrun
    check_all_processes_started({**alone, "OMPI_COMM_WORLD_SIZE": "2"})  # --cpu with --mpirun_hostfile
    check_all_processes_started({"MASTER_ADDR": "127.0.0.1"})  # not accelerate's CPU launcher
