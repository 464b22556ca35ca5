"""ComfyUI-side measurements of the native backend; ``tests/test_native_backend.py`` runs this file with ComfyUI's
Python (``COMFYUI_PYTHON``) and asserts on the JSON it prints. Also usable by hand::

    COMFYUI_PATH=/path/to/ComfyUI python tests/comfy_native_checks.py vs_comfy /tmp/work

Checks (each prints one JSON object on the last line of stdout):

- ``clip``: Frame-Level CLIP Text Encode on ComfyUI's real ``comfy.sd.CLIP`` class, built directly with Wan's own
  text-encoder classes (``comfy.text_encoders.wan``: UMT5 model, ``WanT5Tokenizer``) and a 2-layer UMT5 config (Load
  CLIP only accepts the full 24-layer UMT5-XXL): each distinct caption is encoded once and equals what CLIP Text
  Encode gives for it.
- ``vs_comfy`` (a): one caption on every frame, one window, Euler: the native sampler node vs ComfyUI's own
  ``comfy.sample.sample_custom`` (euler, the same sigmas, the same seed's noise, the same CLIP conditioning), with
  the caption passed once (what the node does) and stacked per frame through the frame-level attention.
- ``vs_loader`` (b): a 3-scene timeline, PMWD with 2 windows, UniPC and a Diffusion Forcing run: the native backend
  (ComfyUI's ``WanModel`` loaded by ``load_diffusion_model``) vs the FrameCap-loader backend (diffusers'
  ``WanTransformer3DModel`` loaded by FrameCap from the same single file), same conditioning and seed.
- ``lora``: a LoRA applied by ComfyUI's ``LoraLoaderModelOnly`` (strength 0.8) to the ``UNETLoader`` model, through
  the native sampler, vs FrameCap's ``load_wan(lora=..., lora_scale=0.8)``, same run as ``vs_loader`` (UniPC); two
  files: kohya layout (``lora_unet_blocks_0_self_attn_q.lora_down.weight`` + ``.alpha``, as musubi-tuner writes)
  and FrameCap's fine-tuning export ``lora_original`` (``diffusion_model.<module>.lora_A.weight`` + ``.alpha``),
  both with alpha != rank. Also how far the LoRA moves the result (it must really be applied on both sides).
- ``fp8``: ``UNETLoader`` with ``weight_dtype="fp8_e4m3fn"`` through the native sampler vs the fp32 run, vs
  FrameCap's ``weight_dtype="fp8_e4m3fn"`` (which stores only the blocks' linear weights in fp8) and vs FrameCap's
  loader with ComfyUI's rounding (every parameter but the patch embedding through float8_e4m3fn; ComfyUI computes
  in fp32 on the CPU); and fp8 + the kohya LoRA (ComfyUI patches it into the fp8 weights).
- ``real_size`` (c): ComfyUI's ``WanModel`` at the Wan2.1-T2V-1.3B config with random weights vs diffusers'
  transformer with the same weights, fp32, 2 latent frames of 16x16, two different captions (frame-level): one
  denoiser call each (guidance 5). About 12 GB of memory.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def setup_comfy():
    """Import ComfyUI from ``COMFYUI_PATH`` on the CPU; return the pack's native modules."""
    # ComfyUI first: its top-level ``nodes`` module must win over this pack's ``nodes`` package.
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
    sys.path.extend([str(HERE), str(ROOT)])
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    from comfy_executor import load_pack

    pack = load_pack(ROOT)
    backend = importlib.import_module(f"{pack.__name__}.nodes.native_backend")
    nodes = importlib.import_module(f"{pack.__name__}.nodes.native_nodes")
    samplers = importlib.import_module(f"{pack.__name__}.nodes.sampler_nodes")
    return backend, nodes, samplers


def tiny_comfy_clip(seed: int = 0):
    """ComfyUI's ``comfy.sd.CLIP`` with Wan's UMT5 classes and tokenizer, 2 layers, random weights (seeded)."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.wan
    import torch

    from framecap_core.testing import tiny_spiece_model

    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.wan.WanT5Tokenizer,
                                                    comfy.text_encoders.wan.te())
    small = {"num_layers": 2, "num_decoder_layers": 2, "d_ff": 32, "num_heads": 2, "d_kv": 8, "vocab_size": 256}
    clip = comfy.sd.CLIP(target=target, tokenizer_data={"spiece_model": tiny_spiece_model()},
                         model_options={"umt5xxl_model_config": small, "dtype": torch.float32})
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in clip.cond_stage_model.state_dict().items()
             if v.is_floating_point()}
    clip.cond_stage_model.load_state_dict(state, strict=False)
    return clip


def write_models(work: Path, *, vae: bool = False) -> dict:
    from native_models import write_comfy_wan_files

    marker = work / "models" / "diffusion_models" / "wan2.1_t2v_1.3B_fp16.safetensors"
    if marker.is_file() and not vae:
        return {"transformer": marker}
    return write_comfy_wan_files(work / "models", vae=vae)


def schedule(samplers, steps: int, solver: str, df_step: int = 0):
    return samplers.DiffusionForcingSchedule(steps, 99.0, solver, df_step, 1)  # shift 99: must be ignored


def max_abs(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


# --------------------------------------------------------------------------------------------------------- checks


def check_clip(work: Path) -> dict:
    _, nodes, _ = setup_comfy()
    import nodes as comfy_nodes  # ComfyUI's own CLIPTextEncode
    from framecap_core.timeline import parse_timeline

    clip = tiny_comfy_clip()
    calls = []
    original = clip.encode_from_tokens

    def counting(tokens, *args, **kwargs):
        calls.append(tokens)
        return original(tokens, *args, **kwargs)

    clip.encode_from_tokens = counting
    timeline = parse_timeline("[0s-1s: a red fox runs in snow] [1s-2s: a dog sleeps] [2s-3s: a red fox runs in snow]",
                              fps=16)
    (cond,) = nodes.FrameCapCLIPTextEncode().encode(clip, timeline, "low quality")
    ctx = cond.context
    encodes = len(calls)
    clip.encode_from_tokens = original
    diffs = []
    for caption, embed in zip(ctx.unique_captions, ctx.unique_embeds):
        reference = comfy_nodes.CLIPTextEncode().encode(clip, caption)[0][0][0][0]
        diffs.append(max_abs(embed[: reference.shape[0]], reference))
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "low quality")[0][0][0][0]
    return {
        "unique_captions": len(ctx.unique_captions),
        "encode_calls": encodes,
        "text_len": int(ctx.unique_embeds.shape[1]),
        "dim": int(ctx.unique_embeds.shape[2]),
        "latent_indices": ctx.latent_indices.tolist(),
        "expected_indices": timeline.latent_unique_indices(),
        "max_diff_vs_clip_text_encode": max(diffs),
        "negative_diff": max_abs(ctx.negative_embeds[0], negative),
    }


def check_vs_comfy(work: Path) -> dict:
    backend, nodes, samplers = setup_comfy()
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import torch

    import nodes as comfy_nodes
    from framecap_core.schedule import flow_sigmas
    from framecap_core.timeline import parse_timeline

    files = write_models(work)
    model = comfy.sd.load_diffusion_model(str(files["transformer"]))
    clip = tiny_comfy_clip()
    caption, negative, seed, steps, cfg = "a red fox runs through deep snow", "low quality", 7, 4, 4.0
    timeline = parse_timeline(caption, num_frames=17, fps=16)  # 5 latents, one window
    size = 32
    (cond,) = nodes.FrameCapCLIPTextEncode().encode(clip, timeline, negative)
    args = dict(width=size, height=size, seed=seed, guidance=cfg, method="pmwd", window=timeline.num_frames,
                overlap=4, fusion="flat", window_batch_size=0)
    sched = schedule(samplers, steps, "euler")
    native = nodes.FrameCapNativeSampler().sample(model, cond, sched, **args)[0]["samples"]
    defaults = backend.NativeWanDenoiser.__init__.__kwdefaults__
    defaults["collapse_shared_caption"] = False
    try:
        stacked = nodes.FrameCapNativeSampler().sample(model, cond, sched, **args)[0]["samples"]
    finally:
        defaults["collapse_shared_caption"] = True

    # ComfyUI's own sampling: CLIP Text Encode, the seed's noise, euler on the same sigmas (as SamplerCustom runs).
    positive = comfy_nodes.CLIPTextEncode().encode(clip, caption)[0]
    negative_cond = comfy_nodes.CLIPTextEncode().encode(clip, negative)[0]
    latent = torch.zeros(1, 16, timeline.num_latents, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    shift = backend.model_flow_shift(model)
    sigmas = flow_sigmas(steps, shift)
    reference = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object("euler"), sigmas,
                                           positive, negative_cond, latent, seed=seed)
    return {
        "shift": shift,
        "max_abs_ref": float(reference.abs().max()),
        "native_vs_comfy": max_abs(native, reference),
        "frame_stacked_vs_comfy": max_abs(stacked, reference),
        "user_model_untouched": "optimized_attention_override" not in model.model_options.get("transformer_options",
                                                                                               {}),
    }


def three_scene_conditioning(nodes):
    """A 3-scene timeline (13 latents) with seeded random caption embeddings ``[3, 512, 4096]``, as the native
    conditioning: both backends get exactly the same context."""
    import torch

    from framecap_core.text import TimelineContext
    from framecap_core.timeline import parse_timeline

    timeline = parse_timeline("[0s-1s: a red fox runs] [1s-2s: a dog sleeps] [2s-3s: a bird flies]", fps=16)
    generator = torch.Generator().manual_seed(3)
    captions = timeline.unique_captions()
    ctx = TimelineContext(captions, torch.randn(len(captions), 512, 4096, generator=generator),
                          torch.tensor(timeline.latent_unique_indices()), torch.randn(1, 512, 4096, generator=generator))
    return nodes.FrameLevelConditioning(timeline, ctx, "low quality", "random")


PMWD_RUN = dict(width=32, height=32, seed=5, guidance=4.0, method="pmwd", window=33, overlap=12, fusion="flat",
                window_batch_size=0)


def native_latents(nodes, samplers, model, cond, solver: str = "unipc", df_step: int = 0):
    """Raw latents ``[1, 16, 13, 4, 4]`` of the native sampler node: PMWD, 2 windows, 4 steps. Run under
    ``torch.inference_mode()`` as ComfyUI's executor runs every node (patching LoRAs into fp8 weights needs it)."""
    import torch

    with torch.inference_mode():
        return nodes.FrameCapNativeSampler().sample(model, cond, schedule(samplers, 4, solver, df_step),
                                                    **PMWD_RUN)[0]["samples"]


def loader_latents(transformer, cond, shift: float, solver: str = "unipc", df_step: int = 0):
    """The same run as :func:`native_latents` on the FrameCap-loader backend (a diffusers transformer with
    frame-level attention), converted to raw latents."""
    import torch

    from framecap_core.backend import WanDenoiser, denormalize_latents
    from framecap_core.pipeline import GenerationSettings, generate
    from framecap_core.testing import WAN_LATENTS_MEAN, WAN_LATENTS_STD

    ctx, run = cond.context, PMWD_RUN
    settings = GenerationSettings(method=run["method"], window=run["window"], overlap=run["overlap"], steps=4,
                                  guidance=run["guidance"], shift=shift, solver=solver, df_step=df_step,
                                  seed=run["seed"], width=run["width"], height=run["height"], negative=cond.negative)
    denoiser = WanDenoiser(transformer, ctx.unique_embeds, ctx.latent_indices, ctx.negative_embeds,
                           guidance_scale=run["guidance"])
    class Info:  # what generate needs of a model when it is given the denoiser
        device, latent_channels = torch.device("cpu"), 16

    latents = generate(Info(), cond.timeline, settings, decode=False, denoiser=denoiser).latents
    return denormalize_latents(latents, torch.tensor(WAN_LATENTS_MEAN), torch.tensor(WAN_LATENTS_STD))[None]


def loader_config_dir(work: Path) -> Path:
    """Configs for FrameCap's loader to read the ComfyUI-loadable single file (transformer + the shipped VAE's)."""
    import shutil

    from native_models import comfy_loadable_transformer

    from framecap_core.models import SHIPPED_CONFIG_DIR

    config = work / "config"
    if not (config / "transformer" / "config.json").is_file():
        comfy_loadable_transformer().save_config(str(config / "transformer"))
    if not (config / "vae" / "config.json").is_file():
        shutil.copytree(SHIPPED_CONFIG_DIR / "vae", config / "vae", dirs_exist_ok=True)
    return config


def load_with_framecap(work: Path, files: dict, **options):
    """FrameCap's own ``load_wan`` on the transformer file (no VAE, no text encoder), fp32 on the CPU."""
    from framecap_core.models import load_wan

    return load_wan(transformer_file=files["transformer"], config_dir=loader_config_dir(work), dtype="fp32",
                    device="cpu", load_vae_model=False, load_text_encoder_model=False, **options).transformer


def comfy_loader_nodes(work: Path):
    """ComfyUI's own UNETLoader and LoraLoaderModelOnly, reading ``work/models``."""
    import folder_paths

    import nodes as comfy_nodes

    for kind in ("diffusion_models", "loras"):
        folder_paths.add_model_folder_path(kind, str(work / "models" / kind), is_default=True)
    return comfy_nodes.UNETLoader(), comfy_nodes.LoraLoaderModelOnly()


def check_vs_loader(work: Path) -> dict:
    backend, nodes, samplers = setup_comfy()
    import comfy.sd

    from framecap_core.attention import install_frame_level_attention
    from framecap_core.models import load_transformer

    files = write_models(work)
    loader_transformer = install_frame_level_attention(
        load_transformer(files["transformer"], config=loader_config_dir(work), dtype="fp32", device="cpu"))
    model = comfy.sd.load_diffusion_model(str(files["transformer"]))
    cond = three_scene_conditioning(nodes)
    results = {}
    for name, solver, df_step in (("pmwd_unipc", "unipc", 0), ("pmwd_df_euler", "euler", 1)):
        native = native_latents(nodes, samplers, model, cond, solver, df_step)
        loader_raw = loader_latents(loader_transformer, cond, backend.model_flow_shift(model), solver, df_step)
        results[name] = {"max_abs_diff": max_abs(native, loader_raw), "max_abs_ref": float(loader_raw.abs().max())}
    results["num_latents"] = cond.timeline.num_latents
    return results


def check_lora(work: Path) -> dict:
    """A LoRA through ComfyUI's LoraLoaderModelOnly (native) vs FrameCap's ``load_wan(lora=, lora_scale=)``, for a
    kohya-layout file and one written by FrameCap's fine-tuning export (``lora_original``)."""
    backend, nodes, samplers = setup_comfy()
    from native_models import SINGLE_FILE_NAMES, write_kohya_wan_lora, write_trained_wan_lora

    files = write_models(work)
    loras = work / "models" / "loras"
    written = {"kohya": write_kohya_wan_lora(files["transformer"], loras / "wan_kohya_lora.safetensors"),
               "framecap_export": write_trained_wan_lora(loras / "wan_framecap_lora.safetensors")}
    unet_loader, lora_loader = comfy_loader_nodes(work)
    (model,) = unet_loader.load_unet(SINGLE_FILE_NAMES["transformer_fp16"], "default")
    cond = three_scene_conditioning(nodes)
    shift, strength = backend.model_flow_shift(model), 0.8
    plain = native_latents(nodes, samplers, model, cond)
    results = {"strength": strength, "max_abs_ref": float(plain.abs().max())}
    for name, path in written.items():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            layers = sum(k.endswith((".lora_A.weight", ".lora_down.weight")) for k in f.keys())
        (patched,) = lora_loader.load_lora_model_only(model, path.name, strength)
        native = native_latents(nodes, samplers, patched, cond)
        transformer = load_with_framecap(work, files, lora=path, lora_scale=strength)
        loader = loader_latents(transformer, cond, shift)
        results[name] = {"layers": layers, "comfy_patched_weights": len(patched.patches),
                         "native_vs_loader": max_abs(native, loader), "lora_effect": max_abs(native, plain),
                         "user_model_unpatched": len(model.patches) == 0}
    return results


def check_fp8(work: Path) -> dict:
    """UNETLoader ``weight_dtype="fp8_e4m3fn"`` through the native sampler vs the fp32 run, vs FrameCap's own
    ``weight_dtype="fp8_e4m3fn"`` (block linear weights only) and vs FrameCap's loader with exactly ComfyUI's
    rounding (every parameter but the patch embedding through float8_e4m3fn, computed in fp32)."""
    backend, nodes, samplers = setup_comfy()
    import torch
    from native_models import SINGLE_FILE_NAMES, write_kohya_wan_lora

    from framecap_core.attention import install_frame_level_attention

    files = write_models(work)
    unet_loader, lora_loader = comfy_loader_nodes(work)
    name = SINGLE_FILE_NAMES["transformer_fp16"]
    (full,) = unet_loader.load_unet(name, "default")
    (fp8,) = unet_loader.load_unet(name, "fp8_e4m3fn")
    net = fp8.model.diffusion_model
    cond = three_scene_conditioning(nodes)
    shift = backend.model_flow_shift(fp8)
    native_full = native_latents(nodes, samplers, full, cond)
    native_fp8 = native_latents(nodes, samplers, fp8, cond)
    framecap_fp8 = loader_latents(load_with_framecap(work, files, weight_dtype="fp8_e4m3fn"), cond, shift)
    comfy_rounding = load_with_framecap(work, files, frame_level=False)
    with torch.no_grad():
        for param_name, param in comfy_rounding.named_parameters():
            if not param_name.startswith("patch_embedding."):
                param.copy_(param.to(torch.float8_e4m3fn).float())
    comfy_rounded = loader_latents(install_frame_level_attention(comfy_rounding), cond, shift)
    lora = write_kohya_wan_lora(files["transformer"], work / "models" / "loras" / "wan_kohya_lora.safetensors")
    (fp8_lora,) = lora_loader.load_lora_model_only(fp8, lora.name, 0.8)
    (full_lora,) = lora_loader.load_lora_model_only(full, lora.name, 0.8)
    native_fp8_lora = native_latents(nodes, samplers, fp8_lora, cond)
    native_full_lora = native_latents(nodes, samplers, full_lora, cond)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in net.parameters()})
    return {
        "weight_dtypes": dtypes,
        "fp8_params": sum(p.numel() for p in net.parameters() if p.dtype == torch.float8_e4m3fn),
        "params": sum(p.numel() for p in net.parameters()),
        "compute_dtype": str(fp8.model.manual_cast_dtype).removeprefix("torch."),
        "max_abs_ref": float(native_full.abs().max()),
        "fp8_vs_fp32": max_abs(native_fp8, native_full),
        "fp8_vs_framecap_fp8": max_abs(native_fp8, framecap_fp8),
        "framecap_fp8_vs_fp32": max_abs(framecap_fp8, native_full),
        "fp8_vs_framecap_comfy_rounding": max_abs(native_fp8, comfy_rounded),
        "fp8_lora_vs_fp32_lora": max_abs(native_fp8_lora, native_full_lora),
        "fp8_lora_effect": max_abs(native_fp8_lora, native_fp8),
        # what the LoRA changes, in fp8 vs in fp32: the same change up to fp8 rounding
        "fp8_lora_change_vs_fp32_lora_change": max_abs(native_fp8_lora - native_fp8, native_full_lora - native_full),
    }


def check_real_size(work: Path) -> dict:
    backend, _, _ = setup_comfy()
    import comfy.sd
    import torch

    from framecap_core.attention import install_frame_level_attention
    from framecap_core.backend import WanDenoiser
    from framecap_core.convert import transformer_to_original_keys
    from framecap_core.testing import _randomize_zero_params

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    from diffusers import WanTransformer3DModel

    from framecap_core.models import SHIPPED_CONFIG_DIR

    t0 = time.time()
    config = WanTransformer3DModel.load_config(str(SHIPPED_CONFIG_DIR / "transformer"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = WanTransformer3DModel.from_config(config).eval()
    _randomize_zero_params(reference, torch.Generator().manual_seed(1), std=0.02)
    state = transformer_to_original_keys(reference.state_dict(), prefix="")
    model = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": torch.float32})
    del state
    install_frame_level_attention(reference)
    generator = torch.Generator().manual_seed(2)
    embeds = torch.randn(2, 512, 4096, generator=generator)
    negative = torch.randn(1, 512, 4096, generator=generator)
    x = torch.randn(1, 16, 2, 16, 16, generator=generator)
    t = torch.tensor([[700.0, 700.0]])
    frames = torch.tensor([[0, 1]])
    index = torch.tensor([0, 1])
    with torch.no_grad():
        v_diffusers = WanDenoiser(reference, embeds, index, negative, guidance_scale=5.0)(x, t, frames)
    clone = backend.frame_level_clone(model, 512)
    with backend.native_sampling(clone, (1, 16, 2, 16, 16)) as (loaded, options):
        v_native = backend.NativeWanDenoiser(loaded, options, embeds, index, negative, guidance_scale=5.0)(x, t, frames)
        t2 = torch.tensor([[900.0, 300.0]])  # per-frame timesteps (Diffusion Forcing)
        v_native_df = backend.NativeWanDenoiser(loaded, options, embeds, index, negative, guidance_scale=5.0)(
            x, t2, frames)
    with torch.no_grad():
        v_diffusers_df = WanDenoiser(reference, embeds, index, negative, guidance_scale=5.0)(x, t2, frames)
    return {
        "params": sum(p.numel() for p in reference.parameters()),
        "max_abs_diff": max_abs(v_native, v_diffusers),
        "max_abs_ref": float(v_diffusers.abs().max()),
        "per_frame_t_max_abs_diff": max_abs(v_native_df, v_diffusers_df),
        "seconds": time.time() - t0,
    }


CHECKS = {"clip": check_clip, "vs_comfy": check_vs_comfy, "vs_loader": check_vs_loader, "lora": check_lora,
          "fp8": check_fp8, "real_size": check_real_size}

if __name__ == "__main__":
    name, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    print(json.dumps(CHECKS[name](work)))
