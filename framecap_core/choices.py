"""The named choices of a generation: methods, fusions, solvers, dtypes and placements, each with what it means.

One table that ``GenerationSettings.validate``, the CLI's argparse ``choices`` and the ComfyUI node widgets all
read, so a new method or solver is added here once. Order is the order shown to users (the first is the default).
Pure Python: importing it costs nothing.
"""

from __future__ import annotations

import textwrap

__all__ = ["DTYPES", "FUSIONS", "METHODS", "OFFLOAD", "SOLVERS", "TEXT_ENCODER_DEVICES", "VAE_DTYPES", "WEIGHT_DTYPES",
           "describe_choices"]

METHODS = {
    "pmwd": "Parallel Multi-Window Denoising (default): all windows at every step, averaged where they overlap, "
            "one solver step for the whole video.",
    "sliding": "sequential sliding window: each window continues from the last --overlap frames of the previous "
               "one.",
    "fifo": "FIFO-Diffusion: a queue with diagonal noise; steps are forced to the window length in latents.",
    "single": "the whole video as one window (plain Wan sampling).",
}

FUSIONS = {
    "flat": "the paper's plain average where windows overlap",
    "pyramid": "window centres weigh more",
    "overlap-linear": "a linear cross-fade across each overlap",
}

SOLVERS = {
    "auto": "UniPC when every latent shares the timestep, else Euler",
    "euler": "flow Euler, per latent (works with per-latent timesteps)",
    "unipc": "diffusers' UniPC multistep (every latent at the same timestep)",
}

DTYPES = {
    "auto": "bf16 on a GPU, fp32 on the CPU",
    "bf16": "bfloat16",
    "fp16": "float16",
    "fp32": "float32",
}

# Where the model's parts rest and run (framecap_core.placement). Node widgets keep ComfyUI's order of first
# appearance, so the defaults are named where they are used: offload "model", the others their first entry.
OFFLOAD = {
    "none": "every part stays on the device all the time (fastest when it fits)",
    "model": "each part (text encoder, transformer, VAE) on the device only while it runs",
    "sequential": "also the transformer's blocks one at a time (smallest cards, slowest)",
}

TEXT_ENCODER_DEVICES = {
    "auto": "the device when UMT5 fits its free memory, else the CPU",
    "cpu": "the CPU (keeps UMT5-XXL's ~11 GB off the GPU; it runs once per new caption)",
    "device": "the compute device",
}

WEIGHT_DTYPES = {
    "default": "the transformer's block weights stored in its compute dtype",
    "fp8_e4m3fn": "stored in float8 e4m3fn (half the memory of bf16), computed in the compute dtype",
}

VAE_DTYPES = {
    "fp32": "float32 (diffusers' Wan examples)",
    "bf16": "bfloat16 (half the decoding memory)",
    "fp16": "float16",
}


def describe_choices(table: dict[str, str], width: int = 8, line_width: int = 110) -> str:
    """``name  meaning`` lines for help texts, meanings wrapped under themselves."""
    indent = " " * (width + 3)
    return "\n".join(
        textwrap.fill(meaning, line_width, initial_indent=f"  {name:<{width}} ", subsequent_indent=indent)
        for name, meaning in table.items()
    )
