"""Live latent previews for the samplers, as ComfyUI's own KSampler shows them.

ComfyUI's samplers pass ``x0`` (the denoised estimate) of every step to a previewer chosen by the user's
latent-preview setting (``--preview-method``: Latent2RGB with the latent format's ``latent_rgb_factors``, or
TAESD). FrameCap's samplers only see a ``Denoiser``, so :class:`PreviewCollector` wraps it: after every call it
writes ``x0 = x - sigma * v`` of each window's latents into a buffer of the whole video; at every step the node
turns a strip of evenly spaced latent frames into the preview image (a long video is many scenes; its first frame
alone would show one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads when a sampler runs, not when ComfyUI imports the pack
    import torch


class PreviewCollector:
    """A ``Denoiser`` that forwards to ``denoiser`` and keeps the latest ``x0`` of every latent frame.

    ``x0 [C, L, h, w]`` (float32, the samplers' normalized space = ComfyUI's model space) is None before the first
    call. Other attributes (``calls``, ``samples``, ...) are the wrapped denoiser's.
    """

    def __init__(self, denoiser, num_latents: int):
        self.denoiser = denoiser
        self.num_latents = num_latents
        self.x0: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.denoiser, name)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        import torch

        from framecap_core.schedule import NUM_TRAIN_TIMESTEPS

        v = self.denoiser(x, t, frames)
        k, c, n, h, w = x.shape
        sigma = (t.float() / NUM_TRAIN_TIMESTEPS).to(x.device).view(k, 1, n, 1, 1)
        x0 = (x.float() - sigma * v.float()).detach()
        if self.x0 is None:
            self.x0 = torch.zeros(c, self.num_latents, h, w, device=x.device)
        index = frames.reshape(-1).to(x.device)
        self.x0[:, index] = x0.permute(1, 0, 2, 3, 4).reshape(c, k * n, h, w)
        return v

    def strip(self, max_frames: int = 6) -> torch.Tensor | None:
        """``[1, C, 1, h, m*w]``: up to ``max_frames`` evenly spaced latent frames side by side (None before the
        first call), in the layout ComfyUI's previewers take (they show frame 0 of a video latent)."""
        import torch

        if self.x0 is None:
            return None
        count = min(max_frames, self.num_latents)
        picks = torch.linspace(0, self.num_latents - 1, count).round().long().tolist()
        frames = self.x0[:, picks]  # [C, m, h, w]
        c, m, h, w = frames.shape
        return frames.permute(0, 2, 1, 3).reshape(c, h, m * w)[None, :, None]


def preview_progress(bar, previewer, collector: PreviewCollector | None):
    """A pipeline progress callback that moves ``bar`` after every window chunk and step and, when a previewer is
    set, attaches the step's preview image (as ComfyUI's ``latent_preview`` callback does)."""

    def on_progress(event) -> None:
        if event.phase != "denoise":
            return
        preview = None
        if previewer is not None and collector is not None and event.kind == "step":
            strip = collector.strip()
            if strip is not None:
                preview = previewer.decode_latent_to_preview_image("JPEG", strip)
        bar.update_absolute(event.done, event.total, preview)

    return on_progress
