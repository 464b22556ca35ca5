"""The paper's prompt-adherence metrics (section 5.3, eqs. 2-5) over pluggable embedders.

- :func:`video_text_similarity` — eq. 2, ``S_global = Sim(Phi_T(P_g), Phi_V(V))``.
- :func:`confusion_degree` — eqs. 3-5: from the raw frame-level text-text similarities ``S_TT [F, F]`` and
  text-frame similarities ``S_TF [F, F]`` (row ``i`` = caption ``P_i``, column ``j`` = caption ``P_j`` / frame
  ``V_j``), normalize each row by its diagonal, ``CD_i = sum_j max(0, ~S_TF(i, j) - ~S_TT(i, j))``, ``CD = mean_i``.
- :func:`frame_text_consistency` — the frame-level text-video consistency: mean over frames of ``Sim(P_i, V_i)``.
- :func:`evaluate_video` — all three for one video and its :class:`~framecap_core.timeline.Timeline`.

Embedders share one interface (:class:`Embedder`): ``embed_texts``, ``embed_frames`` (one embedding per frame) and
``embed_video`` (one embedding per video). :class:`ClipEmbedder` wraps a local CLIP folder (transformers),
:class:`FrameAverageVideoEmbedder` makes a ViCLIP-style video embedder out of any frame embedder, and the toy
world's oracle lives in :mod:`framecap_core.toyworld`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .errors import ModelLoadError, NumericalError

__all__ = [
    "ClipEmbedder",
    "ConfusionResult",
    "Embedder",
    "FrameAverageVideoEmbedder",
    "VideoScores",
    "confusion_degree",
    "cosine_similarity",
    "cosine_similarity_matrix",
    "evaluate_video",
    "frame_text_consistency",
    "format_paired_table",
    "format_table",
    "global_caption",
    "mean_std",
    "paired_difference",
    "PairedDifference",
    "sample_frame_indices",
    "video_text_similarity",
]

VIDEO_FRAMES = 8  # ViCLIP's input: 8 uniformly sampled frames (paper, eq. 2)


# --------------------------------------------------------------------------------------------------------------------
# Similarities
# --------------------------------------------------------------------------------------------------------------------


def _as_tensor(x: Any) -> torch.Tensor:
    return x.detach().float().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)


def cosine_similarity_matrix(a: Any, b: Any, eps: float = 1e-8) -> torch.Tensor:
    """``[n, d]`` x ``[m, d]`` -> ``[n, m]`` cosine similarities (float32)."""
    a, b = _as_tensor(a), _as_tensor(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"cosine_similarity_matrix needs [n, d] and [m, d]; got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a / a.norm(dim=1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(eps)
    return a @ b.T


def cosine_similarity(a: Any, b: Any) -> float:
    """Cosine similarity of two vectors ``[d]``."""
    return float(cosine_similarity_matrix(_as_tensor(a).reshape(1, -1), _as_tensor(b).reshape(1, -1))[0, 0])


@dataclass
class ConfusionResult:
    cd: float  # eq. 5: mean over captions
    per_frame: torch.Tensor  # [F] eq. 4: CD_i


def confusion_degree(s_tt: Any, s_tf: Any, eps: float = 1e-8) -> ConfusionResult:
    """Confusion Degree (paper eqs. 3-5) from raw similarity matrices.

    ``s_tt [F, F]``: ``S_TT(P_i, P_j)``; ``s_tf [F, F]``: ``S_TF(P_i, V_j)`` (caption ``i``, frame ``j``). Each row is
    divided by its diagonal entry (``~S(i, i) = 1``), then ``CD_i = sum_j max(0, ~S_TF(i, j) - ~S_TT(i, j))`` and
    ``CD = mean_i CD_i``. The normalization needs positive diagonals (a caption must be more than orthogonal to its own
    frame); a diagonal entry ``<= eps`` raises :class:`NumericalError`.
    """
    s_tt, s_tf = _as_tensor(s_tt), _as_tensor(s_tf)
    if s_tt.ndim != 2 or s_tt.shape[0] != s_tt.shape[1] or s_tf.shape != s_tt.shape:
        raise ValueError(f"confusion_degree needs two [F, F] matrices; got {tuple(s_tt.shape)} and {tuple(s_tf.shape)}")
    d_tt, d_tf = s_tt.diagonal(), s_tf.diagonal()
    for name, diag in (("S_TT", d_tt), ("S_TF", d_tf)):
        bad = (diag <= eps).nonzero().flatten().tolist()
        if bad:
            raise NumericalError(
                f"{name}(i, i) <= 0 for frame(s) {bad[:8]}: Confusion Degree normalizes each row by its diagonal, so "
                f"every caption must be positively similar to itself and to its own frame; check the embedder."
            )
    n_tt = s_tt / d_tt[:, None]
    n_tf = s_tf / d_tf[:, None]
    per_frame = (n_tf - n_tt).clamp_min(0).sum(dim=1)
    return ConfusionResult(cd=float(per_frame.mean()), per_frame=per_frame)


def video_text_similarity(text_embedding: Any, video_embedding: Any) -> float:
    """Eq. 2: ``Sim(Phi_T(P_g), Phi_V(V))`` for one global-caption embedding ``[d]`` and one video embedding ``[d]``."""
    return cosine_similarity(text_embedding, video_embedding)


def frame_text_consistency(text_embeddings: Any, frame_embeddings: Any) -> float:
    """Frame-level text-video consistency: ``mean_i Sim(Phi_T(P_i), Phi_V(V_i))`` for ``[F, d]`` and ``[F, d]``."""
    t, f = _as_tensor(text_embeddings), _as_tensor(frame_embeddings)
    if t.shape != f.shape or t.ndim != 2:
        raise ValueError(f"frame_text_consistency needs two [F, d] arrays; got {tuple(t.shape)} and {tuple(f.shape)}")
    return float(cosine_similarity_matrix(t, f).diagonal().mean())


# --------------------------------------------------------------------------------------------------------------------
# Embedders
# --------------------------------------------------------------------------------------------------------------------


@runtime_checkable
class Embedder(Protocol):
    """Text and visual embeddings in one space (cosine similarity is what the metrics use)."""

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``n`` captions -> ``[n, d]``."""
        ...

    def embed_frames(self, frames: Any) -> torch.Tensor:
        """``[T, H, W, 3]`` frames (uint8 0..255 or float 0..1) -> ``[T, d]``, one embedding per frame."""
        ...

    def embed_video(self, frames: Any) -> torch.Tensor:
        """``[T, H, W, 3]`` frames -> ``[d]``, one embedding for the whole video."""
        ...


def _frames_float(frames: Any) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 or float -> float32 in [0, 1]."""
    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3]; got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def sample_frame_indices(num_frames: int, count: int = VIDEO_FRAMES) -> list[int]:
    """``count`` uniformly spaced frame indices (segment centres, as video-CLIP models sample), with repeats when
    the video is shorter than ``count``."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    return [min(num_frames - 1, int((k + 0.5) * num_frames / count)) for k in range(count)]


class FrameAverageVideoEmbedder:
    """A ViCLIP-style video embedder over any frame embedder: 8 uniformly sampled frames, each embedded, the unit
    embeddings averaged (CLIP4Clip's mean pooling).

    Limits: ViCLIP itself (InternVid) is not a transformers model and is not bundled; this is the standard
    frame-averaging stand-in. It sees no motion beyond what single frames show, so video-level scores of a real run
    are comparable between methods scored with the same embedder, not to the paper's absolute numbers.
    """

    def __init__(self, frame_embedder: Embedder, num_frames: int = VIDEO_FRAMES):
        self.frame_embedder = frame_embedder
        self.num_frames = int(num_frames)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.frame_embedder.embed_texts(texts)

    def embed_frames(self, frames: Any) -> torch.Tensor:
        return self.frame_embedder.embed_frames(frames)

    def embed_video(self, frames: Any) -> torch.Tensor:
        arr = frames if isinstance(frames, np.ndarray | torch.Tensor) else np.asarray(frames)
        idx = sample_frame_indices(len(arr), self.num_frames)
        emb = _as_tensor(self.frame_embedder.embed_frames(arr[idx]))
        emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return emb.mean(dim=0)


class ClipEmbedder:
    """CLIP (``transformers.CLIPModel`` + ``CLIPProcessor``) from a local folder; never downloads.

    ``embed_video`` averages 8 uniformly sampled frames (see :class:`FrameAverageVideoEmbedder`).
    """

    def __init__(self, path: str | os.PathLike, *, device: str | torch.device = "cpu", batch_size: int = 32):
        from transformers import CLIPModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is not a CLIP folder (no config.json); pass a local transformers CLIP folder such as "
                f"openai/clip-vit-base-patch32 saved with save_pretrained."
            )
        from .models.files import load_pretrained_folder

        # Safetensors only: a pytorch_model.bin would reach torch.load (pickle, which can run code).
        if not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
            raise ModelLoadError(
                f"{path} holds only pickle weights (*.bin); FrameCap loads safetensors only. Save the CLIP model "
                f"with save_pretrained(..., safe_serialization=True)."
            )
        self.model = load_pretrained_folder(CLIPModel.from_pretrained, path, "CLIP model", local_files_only=True,
                                            use_safetensors=True).to(device).eval()
        self.tokenizer, self.image_processor = self._processors(path)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self._video = FrameAverageVideoEmbedder(self)

    @staticmethod
    def _processors(path: Path):
        from transformers import AutoTokenizer, CLIPImageProcessor

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"{path} has no usable CLIP tokenizer ({exc}); save it next to the model.") from None
        try:
            image_processor = CLIPImageProcessor.from_pretrained(str(path), local_files_only=True)
        except Exception:  # no preprocessor_config.json: CLIP's defaults at the model's resolution
            image_processor = None
        return tokenizer, image_processor

    def _pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        size = self.model.config.vision_config.image_size
        if self.image_processor is not None:
            out = self.image_processor(images=list((frames * 255).round().astype(np.uint8)), return_tensors="pt")
            return out["pixel_values"]
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        return (x - mean) / std

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        # transformers >= 5 may return a model output holding the projected embeddings in pooler_output
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        max_len = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                 max_length=max_len, return_tensors="pt").to(self.device)
            chunks.append(self._features(self.model.get_text_features(**tok)).float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.config.projection_dim)

    @torch.no_grad()
    def embed_frames(self, frames: Any) -> torch.Tensor:
        arr = _frames_float(frames)
        chunks = []
        for i in range(0, len(arr), self.batch_size):
            pixels = self._pixel_values(arr[i:i + self.batch_size]).to(self.device, self.model.dtype)
            chunks.append(self._features(self.model.get_image_features(pixel_values=pixels)).float().cpu())
        return torch.cat(chunks)

    def embed_video(self, frames: Any) -> torch.Tensor:
        return self._video.embed_video(frames)


# --------------------------------------------------------------------------------------------------------------------
# One video against its timeline
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class VideoScores:
    confusion_degree: float  # eq. 5, lower is better
    video_consistency: float  # eq. 2, Sim(P_g, V)
    frame_consistency: float  # mean_i Sim(P_i, V_i)
    per_frame_cd: list[float]
    frames: list[int]  # the pixel frames scored

    def as_dict(self) -> dict[str, Any]:
        return {"confusion_degree": self.confusion_degree, "video_consistency": self.video_consistency,
                "frame_consistency": self.frame_consistency}


def global_caption(timeline) -> str:
    """The story as one prompt ``P_g`` for eq. 2: the scenes' captions in order, joined as sentences."""
    return ". ".join(s.caption.strip().rstrip(".") for s in timeline.scenes) + "."


def _caption_of_frame(timeline, frame: int) -> str:
    for scene in timeline.scenes:
        if scene.start <= frame < scene.end:
            return scene.caption
    return timeline.scenes[-1].caption


def evaluate_video(
    embedder: Embedder,
    frames: Any,
    timeline,
    *,
    stride: int = 4,
    prompt: str | None = None,
) -> VideoScores:
    """Score one video ``frames [T, H, W, 3]`` against its timeline.

    The F scored frames are every ``stride``-th pixel frame (4 = one per latent frame); frame ``j``'s prompt ``P_j`` is
    the caption of the scene holding it. ``prompt`` is ``P_g`` for eq. 2 (default :func:`global_caption`).
    """
    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    idx = list(range(0, len(arr), max(1, int(stride))))
    captions = [_caption_of_frame(timeline, i) for i in idx]
    unique = list(dict.fromkeys(captions))
    text_unique = _as_tensor(embedder.embed_texts(unique))
    text = text_unique[[unique.index(c) for c in captions]]  # [F, d]
    frame_emb = _as_tensor(embedder.embed_frames(arr))[idx]  # embed all frames: an embedder may use neighbours
    s_tt = cosine_similarity_matrix(text, text)
    s_tf = cosine_similarity_matrix(text, frame_emb)
    cd = confusion_degree(s_tt, s_tf)
    p_g = prompt if prompt is not None else global_caption(timeline)
    video = video_text_similarity(_as_tensor(embedder.embed_texts([p_g]))[0], embedder.embed_video(arr))
    return VideoScores(
        confusion_degree=cd.cd,
        video_consistency=video,
        frame_consistency=float(s_tf.diagonal().mean()),
        per_frame_cd=cd.per_frame.tolist(),
        frames=idx,
    )


# --------------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    ("confusion_degree", "Confusion Degree ↓"),
    ("video_consistency", "Video-level Text-Video Consistency ↑"),
    ("frame_consistency", "Frame-level Text-Video Consistency ↑"),
)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation, as the paper's ``mean ± std``."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``0.5 <= p < 1``) of Student's t distribution with ``df`` degrees of freedom.

    Bisection on the CDF, itself the density integrated by Simpson's rule after the substitution ``x = tan(u)``
    (which maps the infinite tail onto a finite interval): accurate to ~1e-9, no SciPy needed."""
    from math import lgamma, pi

    if not 0.5 <= p < 1.0 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df >= 1; got p={p}, df={df}")
    log_norm = lgamma((df + 1) / 2) - lgamma(df / 2) - 0.5 * np.log(df * pi)

    def upper_tail(t: float) -> float:  # P(T > t), t >= 0
        u = np.linspace(np.arctan(t), np.pi / 2, 2001)
        x = np.tan(u[:-1])
        density = np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df)) * (1 + x * x)  # dx = (1 + x^2) du
        # at u = pi/2 the integrand tends to 0, or for df = 1 (Cauchy) to the constant 1/pi
        f = np.append(density, np.exp(log_norm) if df == 1 else 0.0)
        h = u[1] - u[0]
        return float(h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))

    lo, hi = 0.0, 1.0
    while upper_tail(hi) > 1 - p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if upper_tail(mid) > 1 - p else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class PairedDifference:
    """Mean of paired differences ``a_i - b_i`` with its two-sided confidence interval ``[low, high]`` (Student's t
    over the ``n`` pairs)."""

    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDifference:
    """``a`` and ``b`` measured on the same units (same story and seed, two methods): the mean difference ``a - b``
    and its ``level`` confidence interval, ``mean ± t_{(1 + level) / 2, n - 1} * sd / sqrt(n)`` with the sample
    standard deviation of the differences. Pairing removes what the units share (a hard story is hard for every
    method), which unpaired ``mean ± std`` columns cannot."""
    d = np.asarray(list(a), dtype=np.float64) - np.asarray(list(b), dtype=np.float64)
    if d.size < 2:
        raise ValueError(f"a paired interval needs at least 2 pairs; got {d.size}")
    half = t_quantile((1 + level) / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    return PairedDifference(float(d.mean()), float(d.mean() - half), float(d.mean() + half), int(d.size))


def format_table(rows: Sequence[tuple[str, Sequence[dict[str, float]]]], columns=TABLE_COLUMNS,
                 label: str = "Method") -> str:
    """A Markdown table: one row per ``(name, [score dicts])`` with ``mean ± std`` of each column over the dicts."""
    header = f"| {label} | n | " + " | ".join(title for _, title in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for name, scores in rows:
        cells = []
        for key, _ in columns:
            m, s = mean_std([d[key] for d in scores if key in d])
            cells.append(f"{m:.4f} ± {s:.4f}")
        lines.append(f"| {name} | {len(scores)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_paired_table(rows: Sequence[tuple[str, Sequence[dict[str, float]], Sequence[dict[str, float]]]],
                        columns=TABLE_COLUMNS, label: str = "Difference", level: float = 0.95) -> str:
    """A Markdown table of paired differences: one row per ``(name, scores_a, scores_b)`` (the score dicts of two
    methods on the same units, in the same order), each column ``mean [low, high]`` of ``a - b``
    (:func:`paired_difference`); a ``*`` marks an interval that excludes zero."""
    header = f"| {label} | pairs | " + " | ".join(title for _, title in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for name, scores_a, scores_b in rows:
        if len(scores_a) != len(scores_b):
            raise ValueError(f"{name}: {len(scores_a)} and {len(scores_b)} scores cannot be paired")
        cells = []
        for key, _ in columns:
            diff = paired_difference([d[key] for d in scores_a], [d[key] for d in scores_b], level)
            cells.append(f"{diff.mean:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}]{'*' if diff.excludes_zero() else ''}")
        lines.append(f"| {name} | {len(scores_a)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
