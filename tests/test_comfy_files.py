"""Toy-sized Wan models as ComfyUI single files: narrow text features read as zero-padded, the exact embedding of a
small Wan VAE in a wider one, and (with ``COMFYUI_PATH``) ComfyUI's own ``UNETLoader`` / ``VAELoader`` loading the
files with no missing or unexpected keys and computing what FrameCap's models compute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from framecap_core.comfy_files import TRANSFORMER_FILE, VAE_FILE, embed_wan_vae_state, write_comfy_files
from framecap_core.errors import ConfigError
from framecap_core.narrow_text import accept_narrow_text, pad_text_features
from framecap_core.testing import make_tiny_transformer, make_tiny_vae

ROOT = Path(__file__).resolve().parents[1]


def test_narrow_text_features_read_as_zero_padded():
    transformer = make_tiny_transformer(0)  # text_dim 16
    x = torch.randn(1, 16, 1, 8, 8)
    t = torch.tensor([500.0])
    narrow = torch.randn(1, 7, 10)
    expected = transformer(hidden_states=x, timestep=t, encoder_hidden_states=pad_text_features(narrow, 16),
                           return_dict=False)[0]
    accept_narrow_text(transformer)
    accept_narrow_text(transformer)  # idempotent
    got = transformer(hidden_states=x, timestep=t, encoder_hidden_states=narrow, return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert set(transformer.state_dict()) == set(make_tiny_transformer(0).state_dict())
    with pytest.raises(ConfigError, match="more than text_dim 16"):
        pad_text_features(torch.zeros(1, 2, 17), 16)


@torch.no_grad()
def test_small_wan_vae_embeds_exactly_in_a_wider_deeper_one():
    """Zero-padded channels, rescaled RMS gains and attention query, identity extra blocks: the wider VAE encodes
    and decodes what the small one does."""
    from diffusers import AutoencoderKLWan

    small = _perturbed(make_tiny_vae(0, base_dim=4, num_res_blocks=1), 1)  # residual branches and attention non-zero
    config = {k: v for k, v in small.config.items() if not k.startswith("_")}
    wide_config = {**config, "base_dim": 12, "num_res_blocks": 2}
    state, leftovers = embed_wan_vae_state(small.state_dict(), small.config, wide_config)
    assert not leftovers
    wide = AutoencoderKLWan(**wide_config).eval()
    wide.load_state_dict(state)
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    z_small, z_wide = small.encode(x).latent_dist.mode(), wide.encode(x).latent_dist.mode()
    torch.testing.assert_close(z_wide, z_small, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(wide.decode(z_small).sample, small.decode(z_small).sample, rtol=1e-4, atol=1e-4)


def _perturbed(model, seed: int):
    """``model`` with every parameter nudged, so zero-initialized branches (Wan VAE residuals) carry a signal."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def comfy_shaped_model(folder: Path) -> Path:
    """A random Wan2.1 model at toy size in the shapes ComfyUI's detection assumes (width 128 = one head of 128,
    freq_dim 256, text_dim 4096, 16 latent channels; a VAE in Wan2.1's layout at width 4 with one residual block per
    level), saved as a diffusers folder (``transformer/``, ``vae/``)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=256, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    transformer.save_pretrained(str(folder / "transformer"), safe_serialization=True)
    _perturbed(make_tiny_vae(0, num_res_blocks=1), 1).save_pretrained(str(folder / "vae"), safe_serialization=True)
    return folder


# Runs in ComfyUI's interpreter: load the files with the stock nodes, record every missing / unexpected key they log,
# then run the transformer and the VAE on the inputs the test wrote.
_COMFY_SIDE = r"""
import json, logging, os, sys
comfy_dir, models, io_dir = sys.argv[1:4]
sys.path.insert(0, comfy_dir)
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.DEBUG)
import torch
import folder_paths
folder_paths.add_model_folder_path("diffusion_models", os.path.join(models, "diffusion_models"), is_default=True)
folder_paths.add_model_folder_path("vae", os.path.join(models, "vae"), is_default=True)
import nodes
from safetensors.torch import load_file, save_file
model = nodes.UNETLoader().load_unet("%(transformer)s", "default")[0]
vae = nodes.VAELoader().load_vae("%(vae)s")[0]
inputs = load_file(os.path.join(io_dir, "inputs.safetensors"))
net = model.model.diffusion_model
with torch.no_grad():
    velocity = net(inputs["x"].to(net.patch_embedding.weight.dtype), inputs["t"], inputs["context"].to(net.patch_embedding.weight.dtype)).float()
    frames = vae.decode(inputs["latents"]).float()
    latents = vae.encode(frames[0]).float()
save_file({"velocity": velocity.contiguous(), "frames": frames.contiguous(), "latents": latents.contiguous()},
          os.path.join(io_dir, "outputs.safetensors"))
keys = [m for m in records if any(w in m for w in ("unet missing", "unet unexpected", "Missing VAE keys", "Leftover VAE keys"))]
print(json.dumps({"key_messages": keys, "dim": net.dim, "num_heads": net.num_heads, "freq_dim": net.freq_dim,
                  "text_dim": net.text_dim, "latent_format": type(model.model.latent_format).__name__,
                  "vae_latent_channels": vae.latent_channels}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="set COMFYUI_PATH to a ComfyUI checkout")
@pytest.mark.parametrize("which", ["random", "bundled"])
def test_comfy_files_load_in_real_comfyui_native_loaders_and_compute_the_same(tmp_path, which):
    """``write_comfy_files`` on a toy-sized model in ComfyUI's shapes (a random one, and the bundled toy model) ->
    ComfyUI's own ``UNETLoader`` and ``VAELoader`` (its model detection): no missing or unexpected keys, a Wan2.1
    model with the ``Wan21`` latent format, and the same transformer output (32-wide text features, zero-padded to
    4096 for ComfyUI) and VAE decode / encode as the diffusers models in FrameCap."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from safetensors.torch import load_file, save_file

    from framecap_core.models import TOY_MODEL_DIR

    folder = comfy_shaped_model(tmp_path / "toy") if which == "random" else TOY_MODEL_DIR
    models = tmp_path / "models"
    transformer_path, vae_path = write_comfy_files(folder, models / "diffusion_models", dtype=torch.float32)
    (models / "vae").mkdir()
    vae_path.rename(models / "vae" / vae_path.name)
    assert transformer_path.stat().st_size < 25 * 1024 * 1024

    transformer = WanTransformer3DModel.from_pretrained(str(folder / "transformer")).eval()
    accept_narrow_text(transformer)
    vae = AutoencoderKLWan.from_pretrained(str(folder / "vae")).eval()
    torch.manual_seed(0)
    x = torch.randn(1, 16, 3, 8, 8)
    t = torch.tensor([700.0])
    context = torch.randn(1, 16, 32)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in (vae.config.latents_mean, vae.config.latents_std))
    latents = torch.randn(1, 16, 2, 8, 8) * std + mean
    save_file({"x": x, "t": t, "context": pad_text_features(context, 4096).contiguous(), "latents": latents},
              str(tmp_path / "inputs.safetensors"))
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    script = tmp_path / "comfy_side.py"
    script.write_text(_COMFY_SIDE % {"transformer": TRANSFORMER_FILE, "vae": VAE_FILE})
    run = subprocess.run([python, str(script), os.environ["COMFYUI_PATH"], str(models), str(tmp_path)],
                         capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["key_messages"] == [], report
    assert (report["dim"], report["num_heads"], report["freq_dim"], report["text_dim"]) == (128, 1, 256, 4096)
    assert report["latent_format"] == "Wan21" and report["vae_latent_channels"] == 16
    out = load_file(str(tmp_path / "outputs.safetensors"))
    with torch.no_grad():
        velocity = transformer(hidden_states=x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
        frames = (vae.decode(latents).sample.clamp(-1, 1) + 1) / 2  # [1, 3, T, H, W]
        frames = frames[0].permute(1, 2, 3, 0)  # [T, H, W, 3], as ComfyUI's IMAGE
        latents_back = vae.encode(frames.permute(3, 0, 1, 2)[None] * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(out["velocity"], velocity, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out["frames"].reshape(frames.shape), frames, rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(out["latents"], latents_back, rtol=1e-3, atol=5e-3)
    assert F.mse_loss(out["frames"].reshape(frames.shape), frames) < 1e-6
