"""Live previews (nodes/previews.py): the x0 buffer a sampler run leaves, the strip previewers get, and the progress
callback that attaches previews at every step."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from comfy_executor import load_pack

from framecap_core import sampling
from framecap_core.schedule import flow_sigmas

PACK = load_pack(Path(__file__).resolve().parents[1])
previews = sys.modules[f"{PACK.__name__}.nodes.previews"]


class ToTarget:
    """Analytic denoiser whose x0 prediction is always ``target`` (v = (x - target) / s)."""

    def __init__(self, target):
        self.target = target
        self.calls = 0

    def __call__(self, x, t, frames):
        self.calls += 1
        s = (t / 1000).view(x.shape[0], 1, x.shape[2], 1, 1)
        return (x - self.target[:, frames].permute(1, 0, 2, 3, 4)) / s


def test_collector_keeps_the_x0_of_every_latent_and_forwards_the_velocity():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(4, 9, 2, 3, generator=gen)
    inner = ToTarget(target)
    collector = previews.PreviewCollector(inner, 9)
    assert collector.strip() is None
    noise = torch.randn(4, 9, 2, 3, generator=gen)
    out = sampling.pmwd(collector, noise, flow_sigmas(3, 5.0), window=5, stride=2)
    torch.testing.assert_close(out, target, rtol=1e-5, atol=1e-5)  # forwarded unchanged: lands on the target
    torch.testing.assert_close(collector.x0, target, rtol=1e-5, atol=1e-5)
    assert collector.calls == inner.calls == 3  # attributes of the wrapped denoiser


def test_strip_puts_evenly_spaced_latents_side_by_side():
    collector = previews.PreviewCollector(None, 11)
    collector.x0 = torch.arange(11.0).view(1, 11, 1, 1).expand(2, 11, 2, 3).clone()
    strip = collector.strip(max_frames=3)
    assert strip.shape == (1, 2, 1, 2, 9)
    assert strip[0, 0, 0, 0].tolist() == [0.0] * 3 + [5.0] * 3 + [10.0] * 3


def test_progress_attaches_a_preview_at_steps_only():
    class Bar:
        def __init__(self):
            self.updates = []

        def update_absolute(self, value, total=None, preview=None):
            self.updates.append((value, total, preview))

    class Previewer:
        def decode_latent_to_preview_image(self, fmt, x0):
            return (fmt, tuple(x0.shape))

    collector = previews.PreviewCollector(None, 2)
    collector.x0 = torch.zeros(16, 2, 4, 4)
    bar = Bar()
    on_progress = previews.preview_progress(bar, Previewer(), collector)
    event = type("E", (), {"phase": "denoise", "kind": "window", "done": 1, "total": 4})
    on_progress(event)
    event.kind = "step"
    on_progress(event)
    event.phase = "decode"
    on_progress(event)
    assert bar.updates == [(1, 4, None), (1, 4, ("JPEG", (1, 16, 1, 4, 8)))]
