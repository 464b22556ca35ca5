"""Fine-tune Wan2.1 with frame-level captions and Diffusion Forcing (paper sections 4.2, 4.3, 5.1).

Reads top to bottom: settings, the latent cache (built from the dataset manifest when missing), the base model,
the training loop, the export. All logic lives in ``framecap_core.training`` and ``framecap_core.data``.

One GPU::

    python training/finetune.py --config training/configs/wan_1.3b_df.json

Several GPUs (one process each, data parallel)::

    accelerate launch --config_file training/configs/accelerate_multi_gpu.yaml \\
        training/finetune.py --config training/configs/wan_1.3b_df.json

Several CPU processes (gloo; accelerate's ``--cpu`` launcher starts several only through MPI, so
``accelerate launch --cpu --num_processes 2`` starts one, which refuses to train alone)::

    accelerate launch --multi_gpu --num_processes 2 training/finetune.py --config training/configs/toy.json
    torchrun --nproc_per_node 2 training/finetune.py --config training/configs/toy.json

Override any setting: ``--set learning_rate=2e-5 --set lora_rank=32``, ``--resume latest``, ``--max-steps 10``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from framecap_core.errors import FrameCapError  # noqa: E402
from framecap_core.training import TrainConfig, check_all_processes_started, train  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="training config (.json or .yaml); see training/configs/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting (repeatable), value parsed as JSON: --set lora_rank=32")
    parser.add_argument("--resume", help='"latest" or a checkpoint folder (same as --set resume=...)')
    parser.add_argument("--max-steps", type=int, help="same as --set max_steps=N")
    parser.add_argument("--output-dir", help="same as --set output_dir=DIR")
    parser.add_argument("--stop-at-step", type=int, help="stop after this many steps in total (with a checkpoint)")
    parser.add_argument("--cache-only", action="store_true", help="build the latent cache and exit")
    parser.add_argument("--export-from", metavar="CHECKPOINT", help="export a checkpoint folder (step-*) and exit")
    parser.add_argument("--export-format", choices=("diffusers", "original", "lora", "lora_original"),
                        help="format for --export-from (default: the run's export_format)")
    parser.add_argument("--export-path", help="file for --export-from (default: beside the checkpoint)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not args.config and not args.export_from:
        parser.error("--config is required (or --export-from CHECKPOINT)")
    return args


def cache_is_complete(config: TrainConfig) -> bool:
    """True when every clip of the manifest is in the cache (or there is no manifest and a cache exists)."""
    from framecap_core.data import cached_clip_ids, read_manifest

    cached = cached_clip_ids(config.cache_dir) if config.cache_dir else set()
    if not config.manifest:
        return bool(cached)
    return {r.clip_id for r in read_manifest(config.manifest)} <= cached


def build_cache(config: TrainConfig, progress: bool) -> None:
    """Encode the manifest's clips with the base model's VAE and text encoder into ``config.cache_dir``.

    Under ``accelerate launch`` every process encodes its share of the clips (``shard = rank / world``) and all
    wait for each other before training starts.
    """
    import torch
    from accelerate import PartialState

    from framecap_core import models, text
    from framecap_core.data import build_latent_cache

    state = PartialState(cpu=not torch.cuda.is_available())  # several CPU processes: a gloo group, as in train()
    device = state.device if torch.cuda.is_available() else torch.device("cpu")
    vae = models.load_vae(config.vae or config.base_model, config=config.model_config, device=device)  # fp32
    encoder = text.load_caption_encoder(config.text_encoder or config.base_model, config=config.model_config,
                                        device=device, text_len=config.text_len)
    summary = build_latent_cache(
        config.manifest, config.cache_dir, vae=vae, encode_text=encoder, height=config.height, width=config.width,
        device=device, shard=(state.process_index, state.num_processes),
        progress=progress and state.is_local_main_process,
    )
    print(f"latent cache (process {state.process_index}): {summary.cached} clips encoded, {summary.skipped} already "
          f"cached, {summary.failed} failed")
    for failure in summary.failures:
        print(f"  failed: {failure}")
    del vae, encoder
    if device.type == "cuda":
        torch.cuda.empty_cache()
    state.wait_for_everyone()


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    for key, value in (("resume", args.resume), ("max_steps", args.max_steps), ("output_dir", args.output_dir)):
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        # 0. exporting a checkpoint of a run (e.g. an intermediate step) needs only the checkpoint
        if args.export_from:
            from framecap_core.training import export_checkpoint

            target = args.export_path or str(Path(args.export_from).resolve()) + f"_{args.export_format or 'export'}"
            target = target if target.endswith(".safetensors") else target + ".safetensors"
            print(f"exported: {export_checkpoint(args.export_from, target, format=args.export_format)}")
            return 0

        # 1. settings: the config file, then the command-line overrides (first: every process was started)
        check_all_processes_started()
        config = TrainConfig.from_file(args.config, overrides)

        # 2. the latent cache: built once from the manifest (VAE + text encoder), then training never runs them
        if not cache_is_complete(config):
            if not config.manifest:
                raise FrameCapError(
                    f"No latent cache in {config.cache_dir!r} and no manifest to build one from; set manifest (made by "
                    f"training/build_dataset.py) or point cache_dir at an existing cache."
                )
            build_cache(config, progress=not args.no_progress)
        if args.cache_only:
            return 0

        # 3. train: loads the base model, installs frame-level attention, runs DF flow matching, checkpoints, exports
        result = train(config, stop_at_step=args.stop_at_step, progress=not args.no_progress)
    except FrameCapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # 4. report (the main process speaks for all)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    if result.losses:
        print(f"steps {result.step - len(result.losses) + 1}-{result.step}: first loss {result.losses[0]:.4f}, "
              f"last loss {result.losses[-1]:.4f}")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    if result.export_path:
        print(f"exported: {result.export_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
