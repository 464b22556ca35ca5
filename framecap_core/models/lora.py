"""LoRA weights (peft, diffusers ``transformer.``, ComfyUI ``diffusion_model.``, kohya ``lora_unet_`` with
``lora_down``/``lora_up``) merged into the transformer:
``W += scale * (alpha / r) * B @ A``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import ModelLoadError

_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z0-9_]+)?\.weight$")


# Original Wan module-name parts that contain an underscore; kohya names (``lora_unet_blocks_0_self_attn_q``, what
# musubi-tuner writes) join every part with one, so these are put back together after splitting at underscores.
_WAN_UNDERSCORED_PARTS = ("self_attn", "cross_attn", "norm_q", "norm_k", "text_embedding", "time_embedding",
                          "time_projection", "patch_embedding")


def _kohya_module_to_original(name: str) -> str:
    """``blocks_0_self_attn_q`` -> ``blocks.0.self_attn.q`` (original Wan names joined by underscores)."""
    dotted = name.replace("_", ".")
    for part in _WAN_UNDERSCORED_PARTS:
        dotted = dotted.replace(part.replace("_", "."), part)
    return dotted


def _lora_module_to_diffusers(module: str) -> str:
    for prefix in ("base_model.model.", "transformer.", "model.diffusion_model.", "diffusion_model.", "lora_unet_"):
        if module.startswith(prefix):
            module = module[len(prefix):]
            if prefix == "lora_unet_" and "." not in module:
                module = _kohya_module_to_original(module)
    if ".self_attn." in module or ".cross_attn." in module or re.search(r"\.ffn\.[02]$", module) or module.startswith(
        ("time_embedding.", "text_embedding.", "head.", "time_projection.")
    ):
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

        (module,) = [k[: -len(".weight")] for k in convert_wan_transformer_to_diffusers({module + ".weight": None})]
    return module


def _lora_alpha_config(path: Path, metadata: dict[str, str]) -> dict:
    """LoRA settings (r, lora_alpha, use_rslora, ...): the file's own header first, then adapter_config.json."""
    for key in ("lora_adapter_metadata", "adapter_config"):
        if key in metadata:
            try:
                return json.loads(metadata[key])
            except json.JSONDecodeError:
                pass
    candidate = path / "adapter_config.json" if path.is_dir() else path.with_name("adapter_config.json")
    if candidate.is_file():
        try:
            return json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{candidate} is not valid JSON ({exc}).") from None
    return {}


def merge_lora(transformer, state: dict[str, torch.Tensor], *, scale: float = 1.0, adapter_config: dict | None = None,
               path: Path | None = None) -> int:
    """Merge LoRA weights into ``transformer`` in place: ``W += scale * (alpha / r) * B @ A``; returns the number of
    merged layers. Keys: peft (``<module>.lora_A.weight``, optionally ``base_model.model.`` / ``transformer.``
    prefixed, original Wan or diffusers module names) or kohya (``lora_down`` / ``lora_up`` with ``.alpha``; also
    ``lora_unet_blocks_0_self_attn_q``-style names)."""
    adapter_config = adapter_config or {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    for key, value in state.items():
        if key.endswith(".alpha"):
            alphas[_lora_module_to_diffusers(key[: -len(".alpha")])] = float(value)
            continue
        match = _LORA_KEY.match(key)
        if not match:
            raise ModelLoadError(f"LoRA file {path}: tensor {key!r} is not a LoRA weight (lora_A / lora_B expected).")
        kind = "A" if match["kind"] in ("lora_A", "lora_down") else "B"
        pairs.setdefault(_lora_module_to_diffusers(match["module"]), {})[kind] = value
    modules = dict(transformer.named_modules())
    rank_pattern = adapter_config.get("rank_pattern") or {}
    alpha_pattern = adapter_config.get("alpha_pattern") or {}
    merged = 0
    for module_name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ModelLoadError(f"LoRA file {path}: {module_name} has only lora_{next(iter(ab))}; both A and B needed.")
        layer = modules.get(module_name)
        if layer is None or not hasattr(layer, "weight"):
            raise ModelLoadError(
                f"LoRA file {path}: layer {module_name!r} does not exist in the Wan transformer; the LoRA was made for "
                f"another model."
            )
        a, b = ab["A"].float(), ab["B"].float()
        weight = layer.weight
        if a.ndim != 2 or b.ndim != 2 or b.shape[0] != weight.shape[0] or a.shape[1] != weight.shape[1]:
            raise ModelLoadError(
                f"LoRA file {path}: {module_name} has A {tuple(a.shape)} / B {tuple(b.shape)}, which does not fit the "
                f"layer weight {tuple(weight.shape)}; the LoRA was made for another model size."
            )
        rank = a.shape[0]
        suffix_match = [k for k in rank_pattern if module_name.endswith(k)]
        rank_cfg = rank_pattern[suffix_match[0]] if suffix_match else adapter_config.get("r", rank)
        alpha_match = [k for k in alpha_pattern if module_name.endswith(k)]
        alpha = (alpha_pattern[alpha_match[0]] if alpha_match else
                 alphas.get(module_name, adapter_config.get("lora_alpha", rank_cfg)))
        factor = alpha / (rank**0.5 if adapter_config.get("use_rslora") else rank)
        with torch.no_grad():
            delta = (b.to(weight.device) @ a.to(weight.device)) * (factor * scale)
            weight.copy_((weight.float() + delta).to(weight.dtype))
        merged += 1
    if merged == 0:
        raise ModelLoadError(f"LoRA {path} holds no LoRA weights.")
    return merged
