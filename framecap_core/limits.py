"""Upper bounds on every length, size and count a user can give, checked before any work starts.

One number or one string must never make FrameCap run for hours or fill the memory: a ``--seconds 1e9``, a caption
duration of ``1e300`` or a 1 MB caption is refused with a message naming the bound, before anything is allocated.
The bounds are far above what Wan2.1 can use (it was trained on 5 s clips at 832x480; FrameCap targets 30 s and
more), so no real use meets them. The README's "Limits" table lists them.

Pure Python (no torch): the timeline parser, the prompt builder, the nodes and dry runs check them cheaply.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError, FrameCapError
from .grid import num_latents_for_frames

__all__ = [
    "MAX_CAPTION_CHARS",
    "MAX_FPS",
    "MAX_NUM_FRAMES",
    "MAX_NUM_LATENTS",
    "MAX_SAMPLER_ITERATIONS",
    "MAX_SECONDS_AT_16_FPS",
    "MAX_SIDE",
    "MAX_STEPS",
    "MAX_STORY_CHARS",
    "MAX_TIMELINE_CHARS",
    "SEED_MODULUS",
    "check_int",
    "check_number",
    "check_text_length",
    "reduce_seed",
]

# Video length: 10 minutes at 16 fps (2401 latents, 120x Wan's training length).
MAX_NUM_FRAMES = 9601
MAX_NUM_LATENTS = num_latents_for_frames(MAX_NUM_FRAMES)
MAX_SECONDS_AT_16_FPS = (MAX_NUM_FRAMES - 1) / 16
MAX_FPS = 120
# Width and height in pixels (Wan2.1 works at 832x480 or 1280x720).
MAX_SIDE = 2048
# Sampler steps per latent (the model was trained on 1000 timesteps) and all iterations of a Diffusion Forcing run
# (steps + df_step * (blocks - 1)); the per-latent sigma table is iterations x latents floats.
MAX_STEPS = 1000
MAX_SAMPLER_ITERATIONS = 20000
# Text. A caption reaches the text encoder as at most 512 tokens (about 3000 characters); a story is a few pages.
MAX_CAPTION_CHARS = 10_000
MAX_STORY_CHARS = 100_000
MAX_TIMELINE_CHARS = 2_000_000
# Seeds: any integer >= 0, taken modulo 2**64 (torch generators and ComfyUI's seed widgets hold 64 bits), so every
# seed below 2**64 is used as given.
SEED_MODULUS = 2**64


def check_int(
    value: Any, name: str, low: int, high: int, hint: str, error: type[FrameCapError] = ConfigError
) -> int:
    """``value`` if it is an int (a whole float is accepted) in ``[low, high]``, else ``error`` naming both bounds."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{name} must be a whole number from {low} to {high}, got {value!r}; {hint}.", field=name)
    if not low <= value <= high:
        raise error(f"{name}={value} is out of range: it must be from {low} to {high}; {hint}.", field=name)
    return value


def check_number(
    value: Any,
    name: str,
    low: float,
    high: float,
    hint: str,
    *,
    low_inclusive: bool = True,
    error: type[FrameCapError] = ConfigError,
) -> float:
    """``value`` as a float if it is a finite number in ``[low, high]`` (``(low, high]`` when not
    ``low_inclusive``), else ``error`` naming the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name} must be a number, got {value!r}; {hint}.", field=name)
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf
    above_low = number >= low if low_inclusive else number > low
    if not (math.isfinite(number) and above_low and number <= high):
        low_text = f">= {low:g}" if low_inclusive else f"> {low:g}"
        high_text = f" and <= {high:g}" if math.isfinite(high) else ""
        raise error(f"{name} must be a number {low_text}{high_text} (and finite), got {value!r}; {hint}.", field=name)
    return number


def check_text_length(text: str, name: str, limit: int, hint: str, error: type[FrameCapError] = ConfigError) -> str:
    """``text`` if it has at most ``limit`` characters, else ``error`` saying how long it is and the bound."""
    if len(text) > limit:
        raise error(
            f"{name} is {len(text):,} characters long, more than the limit of {limit:,}; {hint}.", field=name
        )
    return text


def reduce_seed(seed: Any, name: str = "seed") -> int:
    """A seed as the generators use it: any integer >= 0, taken modulo ``2**64`` (seeds below that are unchanged)."""
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"{name} must be a whole number >= 0, got {seed!r}; use any non-negative integer.", field=name)
    return seed % SEED_MODULUS
