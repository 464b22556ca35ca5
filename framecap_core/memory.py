"""Memory planning: the peak device memory of each phase of a generation, predicted without weights or a GPU.

A generation has three phases, each needing one model on the compute device (``offload="model"``, the default):

- **text encoding**: the UMT5 encoder's weights + one batch of captions through it (unless it runs on the CPU);
- **denoising**: the transformer's weights + the sampler's whole-video buffers + the activations of one
  transformer call over ``k`` windows (``window_batch_size``), which grow linearly with ``k``;
- **decoding**: the VAE's weights + its causal per-latent decode (feature cache and one latent's frames).

Weights are counted from the real module classes built on the ``meta`` device (no memory) with the dtypes the
loader gives them (fp32 islands, fp8-stored linears, tied embeddings counted once). Activations are *traced*: the
real forward code runs on meta tensors under a dispatch mode that records every tensor's allocation and, through
weak references, its release, so the peak of live bytes is what an allocator would see. Attention is traced as a
fused kernel (flash / memory-efficient attention on GPU, the flash kernel on CPU): its output only, never the
``[S, S]`` score matrix. Identical transformer blocks free their intermediates, so one block is traced.

The denoising activations are summarized as a per-window model, ``activation(k) = fixed + k * per_window`` (traced
at ``k = 1`` and ``k = 2``), which is what ``window_batch_size="auto"`` inverts: the largest ``k`` whose phase peak
fits the free memory. ``benchmarks/bench_memory.py`` checks the predictions against measured peaks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .grid import TEXT_LEN
from .model_settings import read_model_settings
from .models.state_dicts import cast_like_loader
from .placement import OFFLOAD_MODES, check_choice, store_linear_weights, weight_storage

GiB = 1024**3
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
CAPTION_BATCH = 8  # captions per text-encoder call (text.CaptionEncoder's default batch)
# Kept free on a GPU budget given as a card size: the CUDA context, cuBLAS workspaces and allocator fragmentation.
RESERVE_BYTES = int(0.5 * GiB)
RESERVE_FRACTION = 0.05


def gib(num_bytes: float) -> float:
    return num_bytes / GiB


# --------------------------------------------------------------------------------------------------------------------
# Allocation tracing on the meta device
# --------------------------------------------------------------------------------------------------------------------


def _returns_alias(func) -> bool:
    schema = getattr(func, "_schema", None)
    return bool(schema is not None and any(ret.alias_info is not None for ret in schema.returns))


def _conv3d_columns(func, args, out) -> int:
    """Bytes of the column buffer the CPU's 3-D convolution unfolds its input into (``C_in * kernel volume`` rows,
    one column per output position), freed when the convolution returns; 0 for pointwise kernels and for the
    convolutions PyTorch hands to oneDNN, which needs no such buffer (it picks oneDNN for larger inputs:
    ``N * C_in * T * H`` over about 20k, so a real-size VAE's wide layers have none while small ones do)."""
    if func is not torch.ops.aten.convolution.default or args[0].ndim != 5:
        return 0
    weight = args[1]
    kernel = weight.shape[2] * weight.shape[3] * weight.shape[4]
    if kernel == 1 or _cpu_conv_backend(func, args) != "Slow3d":
        return 0
    return weight.shape[1] * kernel * out.shape[2] * out.shape[3] * out.shape[4] * out.element_size()


def _cpu_conv_backend(func, args) -> str:
    """The kernel PyTorch's CPU convolution picks for these arguments ("Slow3d", "Mkldnn", ...), asked with
    zero-stride stand-ins of the shapes (no memory); "Slow3d" if this PyTorch cannot be asked."""
    names = [a.name for a in func._schema.arguments]
    call = dict(zip(names, args))
    stand_in = {k: torch.zeros((), dtype=call[k].dtype).expand(call[k].shape) for k in ("input", "weight")}
    try:
        backend = torch._C._select_conv_backend(
            stand_in["input"], stand_in["weight"], None, list(call["stride"]), list(call["padding"]),
            list(call["dilation"]), bool(call["transposed"]), list(call["output_padding"]), int(call["groups"]), None)
    except (AttributeError, RuntimeError, TypeError):
        return "Slow3d"
    return str(backend).rsplit(".", 1)[-1]


class _AllocationTracer:
    """``TorchDispatchMode`` that counts the bytes of every storage created while active and releases them when the
    last tensor using the storage dies (views keep their base alive, as in the real allocator). ``cpu_convolutions``:
    add the transient column buffer of the CPU's 3-D convolution."""

    def __new__(cls, cpu_convolutions: bool = False):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Tracer(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.refs: dict[int, int] = {}
                self.sizes: dict[int, int] = {}
                self.live = 0
                self.peak = 0

            def _release(self, key: int) -> None:
                self.refs[key] -= 1
                if self.refs[key] == 0:
                    del self.refs[key]
                    self.live -= self.sizes.pop(key)

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                aliasing = _returns_alias(func)
                for tensor in torch.utils._pytree.tree_leaves(out):
                    if not isinstance(tensor, torch.Tensor):
                        continue
                    storage = tensor.untyped_storage()
                    key = storage._cdata
                    if key not in self.refs:
                        if aliasing:  # a view of (or in-place op on) a tensor made before tracing: not ours
                            continue
                        self.refs[key] = 0
                        self.sizes[key] = storage.nbytes()
                        self.live += storage.nbytes()
                        self.peak = max(self.peak, self.live)
                    self.refs[key] += 1
                    weakref.finalize(tensor, self._release, key)
                if cpu_convolutions:
                    self.peak = max(self.peak, self.live + _conv3d_columns(func, args, out))
                return out

        return Tracer()


class _FusedAttention(torch.overrides.TorchFunctionMode):
    """``scaled_dot_product_attention`` as a fused kernel allocates it: the output (and a float32 log-sum-exp per
    query row), not the score matrix that the meta device's math fallback would build."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            names = ("query", "key", "value")
            q, _, v = (args[i] if i < len(args) else kwargs[n] for i, n in enumerate(names))
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # noqa: F841 - alive until the kernel returns
            return q.new_empty(q.shape[:-1] + v.shape[-1:])
        return func(*args, **kwargs)


class _PaddedCaptions(torch.overrides.TorchFunctionMode):
    """Answers "is every token real?" (``mask.all()``) with no, as it is for captions padded to ``text_len``: the
    text encoder then builds its padding mask as it does on real captions (meta tensors hold no values to check)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__bool__ and args[0].is_meta:  # only asked of mask.all() in the encoder
            return False
        return func(*args, **(kwargs or {}))


def trace_peak(fn, *args: Any, cpu_convolutions: bool = False, **kwargs: Any) -> tuple[int, Any]:
    """``(peak bytes allocated while fn runs, fn's result)``; run it with meta tensors and meta modules. Tensors that
    existed before are not counted (they are the caller's to count). ``cpu_convolutions``: count the column buffers
    of 3-D convolutions as the CPU kernels allocate them."""
    tracer = _AllocationTracer(cpu_convolutions)
    with torch.no_grad(), _FusedAttention(), tracer:
        result = fn(*args, **kwargs)
    return tracer.peak, result


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each storage once (tied weights count once)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


# --------------------------------------------------------------------------------------------------------------------
# Meta models with the loader's dtypes
# --------------------------------------------------------------------------------------------------------------------


def meta_transformer(config: dict, *, dtype: torch.dtype, weight_dtype: str = "default", text_len: int = TEXT_LEN,
                     num_layers: int | None = None):
    """A ``WanTransformer3DModel`` on the meta device as the loader builds it (frame-level attention installed)."""
    from diffusers import WanTransformer3DModel

    from .attention import install_frame_level_attention

    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    if num_layers is not None:
        cfg["num_layers"] = num_layers
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(cfg)
    keep = WanTransformer3DModel._keep_in_fp32_modules if dtype != torch.float32 else None
    cast_like_loader(model, dtype, keep)
    if weight_dtype != "default":
        store_linear_weights(model, weight_dtype)
    install_frame_level_attention(model, text_len=text_len)
    return model.eval()


def meta_text_encoder(config: dict, *, dtype: torch.dtype, num_layers: int | None = None):
    """A ``UMT5EncoderModel`` on the meta device (``shared`` and ``encoder.embed_tokens`` tied, fp16 keeps ``wo``
    in float32, as the loader does)."""
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = dict(config)
    if num_layers is not None:
        cfg["num_layers"] = num_layers
    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**cfg))
    keep = UMT5EncoderModel._keep_in_fp32_modules if dtype == torch.float16 else None
    return cast_like_loader(model, dtype, keep).eval()


def meta_vae(config: dict, *, dtype: torch.dtype = torch.float32):
    from diffusers import AutoencoderKLWan

    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = AutoencoderKLWan.from_config(cfg)
    return cast_like_loader(model, dtype).eval()


# --------------------------------------------------------------------------------------------------------------------
# Per-phase activation models
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowActivations:
    """Peak bytes of one denoiser call over ``k`` windows: ``fixed + k * per_window`` (weights not included)."""

    fixed: int
    per_window: int

    def __call__(self, k: int) -> int:
        return self.fixed + k * self.per_window

    def max_windows(self, available: int) -> int:
        """The largest ``k`` with ``self(k) <= available`` (0 when not even one window fits)."""
        if available < self(1):
            return 0
        return int((available - self.fixed) // max(self.per_window, 1))


def _trace_window_call(transformer, *, k: int, num_frames: int, latent_hw: tuple[int, int], text_len: int,
                       guided: bool, per_token: bool) -> int:
    """Peak of one sampler chunk: stacking ``k`` windows, building their frame-level context, the (guided)
    transformer call and the float32 velocity, as :class:`~framecap_core.backend.WanDenoiser` does it."""
    from .backend import WanDenoiser

    cfg = transformer.config
    channels, (h, w) = int(cfg.in_channels), latent_hw
    with torch.device("meta"):
        video = torch.empty(channels, num_frames, h, w)  # the sampler's x (counted with the whole-video buffers)
        captions = torch.empty(1, text_len, int(cfg.text_dim), dtype=_param_dtype(transformer))
        negative = torch.empty(1, text_len, int(cfg.text_dim), dtype=captions.dtype)
    denoiser = WanDenoiser.__new__(WanDenoiser)
    denoiser.transformer = transformer
    denoiser.dtype, denoiser.device = captions.dtype, torch.device("meta")
    denoiser.negative_embeds, denoiser.guidance_scale = negative, 5.0 if guided else 1.0
    denoiser.calls = denoiser.samples = 0
    _, p_h, p_w = cfg.patch_size
    tokens = num_frames * (h // p_h) * (w // p_w)

    def chunk():
        xb = torch.stack([video] * k)
        frames = torch.zeros(k, num_frames, dtype=torch.int64)
        ctx = captions[frames].reshape(k, num_frames * text_len, -1)  # stack_frame_captions, minus its checks
        t = torch.zeros(k, tokens) if per_token else torch.zeros(k)
        return denoiser.predict(xb, t, ctx)

    with torch.device("meta"):
        peak, _ = trace_peak(chunk)
    return peak


def _param_dtype(module: torch.nn.Module) -> torch.dtype:
    """The compute dtype: that of the first floating parameter not kept in float32 (fp8 storage computes in it)."""
    dtypes = [p.dtype for p in module.parameters() if p.is_floating_point()]
    for dt in (torch.bfloat16, torch.float16):
        if dt in dtypes:
            return dt
    return torch.float32


@functools.lru_cache(maxsize=64)
def _window_activations_cached(config_json: str, dtype: torch.dtype, weight_dtype: str, text_len: int,
                               num_frames: int, latent_hw: tuple[int, int], guided: bool,
                               per_token: bool) -> WindowActivations:
    one_block = meta_transformer(json.loads(config_json), dtype=dtype, weight_dtype=weight_dtype, text_len=text_len,
                                 num_layers=1)
    peaks = [_trace_window_call(one_block, k=k, num_frames=num_frames, latent_hw=latent_hw, text_len=text_len,
                                guided=guided, per_token=per_token) for k in (1, 2)]
    per_window = peaks[1] - peaks[0]
    return WindowActivations(fixed=peaks[0] - per_window, per_window=per_window)


def window_activations(config: dict, *, dtype: torch.dtype, weight_dtype: str = "default", text_len: int = TEXT_LEN,
                       num_frames: int, latent_hw: tuple[int, int], guided: bool = True,
                       per_token: bool = False) -> WindowActivations:
    """The per-window activation model of a transformer ``config`` for windows of ``num_frames`` latents of
    ``latent_hw`` (traced; cached)."""
    return _window_activations_cached(_config_json(config), dtype, weight_dtype, int(text_len), int(num_frames),
                                      tuple(int(v) for v in latent_hw), bool(guided), bool(per_token))


def _config_json(config) -> str:
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, sort_keys=True, default=str)


@functools.lru_cache(maxsize=16)
def _text_activation_cached(config_json: str, dtype: torch.dtype, batch: int, text_len: int) -> int:
    encoder = meta_text_encoder(json.loads(config_json), dtype=dtype, num_layers=1)
    d_model = int(encoder.config.d_model)

    def run():
        ids = torch.zeros(batch, text_len, dtype=torch.int64)
        mask = torch.ones(batch, text_len, dtype=torch.int64)
        hidden = encoder(ids, mask).last_hidden_state
        keep = torch.ones(batch, text_len, 1, dtype=hidden.dtype)
        return hidden * keep

    with torch.device("meta"), _PaddedCaptions():
        peak, out = trace_peak(run)
    assert out.shape[-1] == d_model
    return peak


def text_activation(config: dict, *, dtype: torch.dtype, batch: int, text_len: int) -> int:
    """Peak activation bytes of one text-encoder call on ``batch`` captions of ``text_len`` tokens (traced)."""
    return _text_activation_cached(_config_json(config), dtype, int(batch), int(text_len))


@functools.lru_cache(maxsize=16)
def _decode_activation_cached(config_json: str, dtype: torch.dtype, latent_hw: tuple[int, int], on_cpu: bool) -> int:
    from .backend import iter_decoded_latents, to_uint8_frames

    vae = meta_vae(json.loads(config_json), dtype=dtype)
    channels = int(vae.config.z_dim)

    def run():
        z = torch.empty(1, channels, 3, *latent_hw, dtype=dtype)  # three latents reach the steady-state cache
        for out in iter_decoded_latents(vae, z):
            to_uint8_frames(out[0])
        return None

    with torch.device("meta"):
        peak, _ = trace_peak(run, cpu_convolutions=on_cpu)
    return peak


def decode_activation(config: dict, *, dtype: torch.dtype = torch.float32, latent_hw: tuple[int, int],
                      device: str = "cuda") -> int:
    """Peak activation bytes of the streaming Wan VAE decode (feature cache + one latent's frames; traced). On the
    CPU its 3-D convolutions also unfold their input into column buffers."""
    return _decode_activation_cached(_config_json(config), dtype, tuple(int(v) for v in latent_hw), device == "cpu")


# --------------------------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelArchitecture:
    """What the planner needs of a model: the three configs and the dtypes the loader gives each part."""

    transformer_config: dict
    text_encoder_config: dict | None
    vae_config: dict
    text_len: int = TEXT_LEN
    dtype: torch.dtype = torch.bfloat16
    text_encoder_dtype: torch.dtype | None = None
    vae_dtype: torch.dtype = torch.float32
    weight_dtype: str = "default"

    @classmethod
    def from_config_dir(cls, config_dir: str | Path, **kwargs: Any) -> ModelArchitecture:
        """From a diffusers-style folder (``transformer/``, ``text_encoder/``, ``vae/`` configs)."""
        root = Path(config_dir)

        def read(sub: str) -> dict | None:
            path = root / sub / "config.json"
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

        transformer, vae = read("transformer"), read("vae")
        if transformer is None or vae is None:
            raise ConfigError(f"{root} has no transformer/config.json or vae/config.json; pass a diffusers-style "
                              f"Wan folder (or the shipped configs, framecap_core/configs/wan2.1_t2v_1.3b).")
        if "text_len" not in kwargs:
            text_len = read_model_settings(root).text_len
            kwargs["text_len"] = TEXT_LEN if text_len is None else text_len
        return cls(transformer_config=transformer, text_encoder_config=read("text_encoder"), vae_config=vae, **kwargs)

    @classmethod
    def from_model(cls, model) -> ModelArchitecture:
        """From a loaded :class:`~framecap_core.models.WanModel` (its modules' configs and dtypes)."""
        te = getattr(model, "text_encoder", None)
        vae = getattr(model, "vae", None)
        vae_config = dict(vae.config) if vae is not None else {"z_dim": model.latent_channels}
        return cls(
            transformer_config=dict(model.transformer.config),
            text_encoder_config=te.config.to_dict() if te is not None else None,
            vae_config=vae_config if vae is not None else {},
            text_len=int(model.text_len),
            dtype=_param_dtype(model.transformer),
            text_encoder_dtype=_param_dtype(te) if te is not None else None,
            vae_dtype=next(vae.parameters()).dtype if vae is not None else torch.float32,
            weight_dtype=weight_storage(model.transformer),
        )

    def replace(self, **changes: Any) -> ModelArchitecture:
        return dataclasses.replace(self, **changes)

    @functools.cached_property
    def transformer_bytes(self) -> int:
        return module_bytes(meta_transformer(self.transformer_config, dtype=self.dtype, weight_dtype=self.weight_dtype,
                                             text_len=self.text_len))

    @functools.cached_property
    def largest_block_bytes(self) -> int:
        one = meta_transformer(self.transformer_config, dtype=self.dtype, weight_dtype=self.weight_dtype,
                               text_len=self.text_len, num_layers=1)
        return module_bytes(one.blocks[0])

    @functools.cached_property
    def text_encoder_bytes(self) -> int:
        if not self.text_encoder_config:
            return 0
        return module_bytes(meta_text_encoder(self.text_encoder_config, dtype=self.text_encoder_dtype or self.dtype))

    @functools.cached_property
    def vae_bytes(self) -> int:
        return module_bytes(meta_vae(self.vae_config, dtype=self.vae_dtype)) if self.vae_config else 0

    @property
    def text_dim(self) -> int:
        return int(self.transformer_config["text_dim"])

    @property
    def latent_channels(self) -> int:
        return int(self.transformer_config.get("in_channels", 16))


@dataclass
class PhaseMemory:
    """Predicted peak of one phase on the compute device, in bytes: the weights of the part that runs, the weights
    of the other parts that stay in the same memory (``resident``: all of them without offload, or on the CPU),
    whole-video buffers, and the traced activations."""

    name: str
    weights: int
    resident: int
    buffers: int
    activations: int
    note: str = ""

    @property
    def peak(self) -> int:
        return self.weights + self.resident + self.buffers + self.activations


@dataclass
class MemoryPlan:
    """Per-phase peaks of a generation on one device and whether they fit ``budget`` bytes.

    ``window_batch_size``: the windows per transformer call the plan is for (``auto`` resolved); ``usable``: the
    budget minus what is kept free (context, workspaces, fragmentation).
    """

    device: str
    budget: int | None
    usable: int | None
    offload: str
    text_encoder_device: str
    weight_dtype: str
    window_batch_size: int
    num_windows: int
    vae_dtype: torch.dtype
    activations: WindowActivations
    phases: list[PhaseMemory] = field(default_factory=list)
    budget_source: str = ""

    @property
    def peak(self) -> int:
        return max(p.peak for p in self.phases)

    @property
    def fits(self) -> bool:
        return self.usable is None or (self.window_batch_size >= 1 and self.peak <= self.usable)

    def phase(self, name: str) -> PhaseMemory:
        return next(p for p in self.phases if p.name == name)

    def flags(self) -> str:
        """The command-line options that select this plan's placement and window batch."""
        parts = [f"--offload {self.offload}"]
        if self.text_encoder_device != "device":
            parts.append(f"--text-encoder-device {self.text_encoder_device}")
        if self.weight_dtype != "default":
            parts.append(f"--weight-dtype {self.weight_dtype}")
        if self.vae_dtype != torch.float32:
            parts.append(f"--vae-dtype {DTYPE_NAMES[self.vae_dtype]}")
        parts.append(f"--window-batch-size {max(self.window_batch_size, 1)}")
        return " ".join(parts)

    def describe(self) -> str:
        budget = (f"budget {gib(self.budget):.2f} GiB ({self.budget_source}), {gib(self.usable):.2f} GiB usable"
                  if self.budget is not None else "no budget given")
        lines = [
            f"memory on {self.device} ({budget}); offload {self.offload}, text encoder on "
            f"{self.text_encoder_device}, transformer weights {self.weight_dtype}, VAE {DTYPE_NAMES[self.vae_dtype]}",
            f"  {'phase':<28}{'weights':>9}{'buffers':>9}{'activ.':>9}{'peak':>9}  GiB",
        ]
        for p in self.phases:
            lines.append(f"  {p.name:<28}{gib(p.weights + p.resident):>9.2f}{gib(p.buffers):>9.2f}{gib(p.activations):>9.2f}"
                         f"{gib(p.peak):>9.2f}  {p.note}".rstrip())
        lines.append(f"  per-window activation model: {gib(self.activations.fixed):.2f} + k x "
                     f"{gib(self.activations.per_window):.3f} GiB (k windows per transformer call)")
        return "\n".join(lines)


def _buffers_of_sampler(arch: ModelArchitecture, *, num_latents: int, latent_hw: tuple[int, int], unique: int,
                        solver: str) -> int:
    """Whole-video tensors alive while denoising: noise, x, the fused velocity's sum and result, the next x, UniPC's
    two saved model outputs (float32 ``[C, L, h, w]`` each), and the caption embeddings in the model's dtype."""
    video = arch.latent_channels * num_latents * latent_hw[0] * latent_hw[1] * 4
    copies = 5 + (2 if solver == "unipc" else 0)
    captions = (unique + 1) * arch.text_len * arch.text_dim * torch.empty((), dtype=arch.dtype).element_size()
    return copies * video + captions


def plan_memory(
    arch: ModelArchitecture,
    *,
    num_latents: int,
    latent_hw: tuple[int, int],
    window_latents: int,
    num_windows: int,
    num_captions: int,
    window_batch_size: int | str | None = "auto",
    guided: bool = True,
    per_token: bool = False,
    solver: str = "unipc",
    offload: str = "model",
    text_encoder_device: str = "device",
    device: str = "cuda",
    budget: int | None = None,
    budget_source: str = "",
    decode_frames: int | None = None,
) -> MemoryPlan:
    """Predict the peak memory of each phase on ``device`` (``"cuda"`` or ``"cpu"``).

    ``window_batch_size``: an int, None (all windows) or ``"auto"`` (the largest that fits ``budget``; all windows
    when no budget is given). ``text_encoder_device``: "device" or "cpu" (then text encoding needs no device memory).
    On the CPU every part stays in the same memory, so every phase also holds the other parts' weights.
    ``decode_frames``: pixel frames of the video (their uint8 copies are host memory; counted on the CPU only).
    """
    check_choice("offload", offload, OFFLOAD_MODES)
    usable = None if budget is None else usable_bytes(budget)
    on_cpu = device == "cpu"
    acts = window_activations(arch.transformer_config, dtype=arch.dtype, weight_dtype=arch.weight_dtype,
                              text_len=arch.text_len, num_frames=window_latents, latent_hw=latent_hw, guided=guided,
                              per_token=per_token)
    te_on_device = arch.text_encoder_config is not None and (text_encoder_device != "cpu" or on_cpu)
    weights = {"text": arch.text_encoder_bytes if te_on_device else 0,
               "transformer": arch.transformer_bytes, "vae": arch.vae_bytes}
    if offload == "sequential" and not on_cpu:
        # one block streams through the device at a time; the rest (embeddings, head) stays while denoising
        weights["transformer"] = arch.transformer_bytes - (int(arch.transformer_config["num_layers"]) - 1) * (
            arch.largest_block_bytes)
    resident_all = offload == "none" or on_cpu

    def resident(phase: str) -> int:
        return sum(v for k, v in weights.items() if k != phase) if resident_all else 0

    buffers = _buffers_of_sampler(arch, num_latents=num_latents, latent_hw=latent_hw, unique=num_captions,
                                  solver=solver)
    # Denoising: the window batch.
    fixed_part = weights["transformer"] + resident("transformer") + buffers
    if window_batch_size == "auto":
        k = num_windows if usable is None else min(num_windows, acts.max_windows(usable - fixed_part))
    else:
        k = num_windows if window_batch_size is None else min(int(window_batch_size), num_windows)

    phases = []
    batch = min(CAPTION_BATCH, num_captions + 1)
    if arch.text_encoder_config is not None:
        text_act = text_activation(arch.text_encoder_config, dtype=arch.text_encoder_dtype or arch.dtype,
                                   batch=batch, text_len=arch.text_len) if te_on_device else 0
        note = f"{num_captions} captions + negative, {batch} per call"
        phases.append(PhaseMemory("text encoding", weights["text"], resident("text"), 0, text_act,
                                  note=note + ("; UMT5 runs on the cpu" if not te_on_device else "")))
    phases.append(PhaseMemory(f"denoising (k={max(k, 1)} of {num_windows})", weights["transformer"],
                              resident("transformer"), buffers, acts(max(k, 1)),
                              note="one block at a time" if offload == "sequential" and not on_cpu else ""))
    if arch.vae_config:
        dec = decode_activation(arch.vae_config, dtype=arch.vae_dtype, latent_hw=latent_hw, device=device)
        latents = arch.latent_channels * num_latents * latent_hw[0] * latent_hw[1] * 4
        # the de-normalized latents and the post-quant conv's output (plus the input itself on the CPU)
        video_buffers = (3 if on_cpu else 2) * latents
        host = 0
        if on_cpu and decode_frames:
            host = 2 * decode_frames * latent_hw[0] * latent_hw[1] * 64 * 3  # uint8 frames, then one concatenation
        phases.append(PhaseMemory("decoding", weights["vae"], resident("vae"), video_buffers + host, dec,
                                  note="uint8 frames kept in RAM" if host else ""))
    return MemoryPlan(device=device, budget=budget, usable=usable, offload=offload,
                      text_encoder_device="cpu" if text_encoder_device == "cpu" else "device",
                      weight_dtype=arch.weight_dtype, window_batch_size=k, num_windows=num_windows,
                      vae_dtype=arch.vae_dtype,
                      activations=acts, phases=phases, budget_source=budget_source)


def fitting_alternatives(arch: ModelArchitecture, plan_kwargs: dict, current: MemoryPlan) -> MemoryPlan | None:
    """The first placement whose plan fits the same budget (each with the window batch that fits), those that leave
    the numbers unchanged first: model offload, the text encoder on the CPU, sequential offload; then a bf16 VAE, then
    fp8-stored transformer weights. None when nothing fits."""
    if current.budget is None or current.device == "cpu":
        return None
    kwargs = dict(plan_kwargs, window_batch_size="auto")
    bf16 = torch.bfloat16
    candidates = [  # offload, text encoder device, transformer weight storage, VAE dtype
        ("model", current.text_encoder_device, arch.weight_dtype, arch.vae_dtype),
        ("model", "cpu", arch.weight_dtype, arch.vae_dtype),
        ("sequential", "cpu", arch.weight_dtype, arch.vae_dtype),
        ("model", "cpu", arch.weight_dtype, bf16),
        ("sequential", "cpu", arch.weight_dtype, bf16),
        ("model", "cpu", "fp8_e4m3fn", bf16),
        ("sequential", "cpu", "fp8_e4m3fn", bf16),
    ]
    for offload, te_device, weight_dtype, vae_dtype in candidates:
        candidate_arch = arch.replace(weight_dtype=weight_dtype, vae_dtype=vae_dtype)
        plan = plan_memory(candidate_arch, **dict(kwargs, offload=offload, text_encoder_device=te_device))
        if plan.fits:
            return plan
    return None


def verdict(plan: MemoryPlan, alternative: MemoryPlan | None) -> str:
    """One line: fits or not, the peak against the usable budget, and what would fit."""
    if plan.usable is None:
        return f"verdict: peak {gib(plan.peak):.2f} GiB (no budget to compare with; pass --vram-gb N)"
    worst = max(plan.phases, key=lambda p: p.peak)
    if plan.fits:
        return (f"verdict: fits: peak {gib(plan.peak):.2f} GiB ({worst.name}) of {gib(plan.usable):.2f} GiB usable, "
                f"{plan.window_batch_size} of {plan.num_windows} windows per transformer call")
    why = ("not even one window fits" if plan.window_batch_size < 1 else
           f"{worst.name} needs {gib(worst.peak):.2f} GiB")
    line = f"verdict: does not fit: {why}, {gib(plan.usable):.2f} GiB usable"
    if alternative is not None:
        line += (f"\n  these settings fit (peak {gib(alternative.peak):.2f} GiB, {alternative.window_batch_size} "
                 f"windows per call): {alternative.flags()}")
    else:
        line += "\n  no placement fits this budget; lower --width/--height or use a larger card"
    return line


# --------------------------------------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------------------------------------


def device_budget(device: torch.device | str) -> tuple[int, str]:
    """Free bytes on ``device`` now: CUDA's free memory plus what torch's caching allocator holds unused; on the CPU
    the available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached), f"free on {device} of {gib(total):.1f} GiB"
    import psutil

    return int(psutil.virtual_memory().available), "available RAM"


def usable_bytes(budget: int) -> int:
    """What a GPU budget leaves for tensors: minus the CUDA context, workspaces and fragmentation."""
    return max(int(budget * (1 - RESERVE_FRACTION)) - RESERVE_BYTES, 0)


def text_encoder_fits(arch: ModelArchitecture, budget: int, num_captions: int = CAPTION_BATCH) -> bool:
    """Whether the text encoder's weights and one call on ``num_captions`` captions fit ``budget`` on a GPU."""
    if not arch.text_encoder_config:
        return True
    batch = min(CAPTION_BATCH, num_captions + 1)
    need = arch.text_encoder_bytes + text_activation(arch.text_encoder_config, dtype=arch.text_encoder_dtype or
                                                     arch.dtype, batch=batch, text_len=arch.text_len)
    return need <= usable_bytes(budget)


def auto_window_batch(model, *, num_windows: int, window_latents: int, latent_hw: tuple[int, int],
                      guided: bool, per_token: bool, num_latents: int, num_captions: int, solver: str) -> int:
    """``window_batch_size="auto"`` at run time, with the transformer already on its device: the largest number of
    windows per call whose activations fit the free memory (whole-video buffers counted first); at least 1.

    On the CPU memory is not the limit that matters (and results must not depend on how much RAM happens to be
    free), so all windows are batched as long as they fit the available RAM."""
    placement = getattr(model, "placement", None)
    device = placement.device if placement is not None else getattr(model, "device", torch.device("cpu"))
    arch = ModelArchitecture.from_model(model)
    acts = window_activations(arch.transformer_config, dtype=arch.dtype, weight_dtype=arch.weight_dtype,
                              text_len=arch.text_len, num_frames=window_latents, latent_hw=latent_hw, guided=guided,
                              per_token=per_token)
    free, _ = device_budget(device)
    if torch.device(device).type == "cuda":
        free = usable_bytes(free)
    buffers = _buffers_of_sampler(arch, num_latents=num_latents, latent_hw=latent_hw, unique=num_captions,
                                  solver=solver)
    return max(1, min(num_windows, acts.max_windows(free - buffers)))



def plan_generation_memory(arch: ModelArchitecture, plan, settings, *, device: str = "cuda",
                           budget: int | None = None, budget_source: str = "", offload: str = "model",
                           text_encoder_device: str = "device") -> tuple[MemoryPlan, MemoryPlan | None]:
    """The memory plan of a generation (``plan`` from :func:`~framecap_core.pipeline.plan_generation` with its
    ``settings``) and, when it does not fit ``budget``, the first placement that does (else None)."""
    kwargs = dict(
        num_latents=plan.num_latents, latent_hw=plan.latent_size, window_latents=plan.window_latents,
        num_windows=len(plan.window_spans) if plan.method == "pmwd" else 1, num_captions=len(plan.unique_captions),
        guided=plan.batch_rows_per_forward > 1, per_token=settings.df_step > 0 or plan.method == "fifo",
        solver=plan.solver, device=device, budget=budget, budget_source=budget_source, decode_frames=plan.num_frames,
    )
    memory = plan_memory(arch, window_batch_size=settings.window_batch_size if plan.method == "pmwd" else 1,
                         offload=offload, text_encoder_device=text_encoder_device, **kwargs)
    return memory, (None if memory.fits else fitting_alternatives(arch, kwargs, memory))
