"""Load Wan2.1 text-to-video from the files users have, offline.

Accepted sources (``--model`` on the command line, :func:`load_wan` in code):

- a diffusers folder as ``WanPipeline.save_pretrained`` writes it (``model_index.json``, ``transformer/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``), e.g. a local copy of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``;
- ComfyUI / original single files: a transformer ``wan2.1_t2v_1.3B_{fp16,bf16}.safetensors`` (original Wan key names,
  with or without the ``model.diffusion_model.`` prefix, or diffusers key names), a VAE ``wan_2.1_vae.safetensors``
  and a text encoder ``umt5_xxl_fp16.safetensors`` / ``umt5_xxl_fp8_e4m3fn_scaled.safetensors`` (the tokenizer
  embedded as a ``spiece_model`` tensor). Architectures come from the configs shipped in
  ``framecap_core/configs/wan2.1_t2v_1.3b`` unless ``config_dir`` names another diffusers-style config folder;
- a folder holding such single files (ComfyUI's ``models/`` folder or a flat folder): the files are told apart by
  their tensor names;
- ``"toy"``: the small model bundled in ``framecap_core/toy_model``.

On top of the base, ``checkpoint=`` applies a fine-tune: a full transformer state dict (diffusers or original key
names) or a LoRA (peft folder with ``adapter_config.json``, or one safetensors file in peft / diffusers
``transformer.`` / kohya ``lora_down``/``lora_up`` form), merged into the weights with ``lora_scale``.

Only safetensors are read: pickle files (``.bin``, ``.pt``, ``.ckpt``) can run code when loaded and are refused.
Every missing or mismatching file raises :class:`~framecap_core.errors.ModelLoadError` naming the file and what
was expected.

Modules: :mod:`.files` (files on disk, safetensors, file kinds), :mod:`.devices` (device / dtype names),
:mod:`.sources` (which files make up a model), :mod:`.state_dicts` (checked loading, fp8), :mod:`.components`
(transformer, VAE, text encoder loaders), :mod:`.lora` and :mod:`.checkpoint` (fine-tunes), :mod:`.wan`
(:class:`WanModel`, :func:`load_wan`).
"""

from .checkpoint import apply_checkpoint
from .components import load_text_encoder, load_tokenizer, load_transformer, load_vae, tokenizer_from_spiece
from .devices import resolve_device, resolve_dtype
from .files import (
    DEFAULT_TEXT_LEN,
    FRAMECAP_JSON,
    PACKAGE_DIR,
    PICKLE_SUFFIXES,
    SHIPPED_CONFIG_DIR,
    TOY_MODEL_DIR,
    WEIGHT_SUFFIXES,
    detect_file_kind,
    is_diffusers_folder,
    list_model_files,
    read_framecap_json,
    read_safetensors,
    safetensors_keys,
)
from .lora import merge_lora
from .sources import ModelSource, resolve_model_source
from .state_dicts import dequantize_scaled_fp8
from .wan import WanModel, load_wan

__all__ = [
    "DEFAULT_TEXT_LEN",
    "FRAMECAP_JSON",
    "ModelSource",
    "PACKAGE_DIR",
    "PICKLE_SUFFIXES",
    "SHIPPED_CONFIG_DIR",
    "TOY_MODEL_DIR",
    "WEIGHT_SUFFIXES",
    "WanModel",
    "apply_checkpoint",
    "dequantize_scaled_fp8",
    "detect_file_kind",
    "is_diffusers_folder",
    "list_model_files",
    "load_text_encoder",
    "load_tokenizer",
    "load_transformer",
    "load_vae",
    "load_wan",
    "merge_lora",
    "read_framecap_json",
    "read_safetensors",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_source",
    "safetensors_keys",
    "tokenizer_from_spiece",
]
