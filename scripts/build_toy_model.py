"""Build the toy model into ``framecap_core/toy_model`` (seeded, CPU, no downloads).

The model has the shapes ComfyUI's native Wan2.1 loaders assume (head_dim 128, freq_dim 256, text_dim 4096, a VAE in
Wan2.1's layout with 16 latent channels and Wan2.1's latent statistics), at toy width; see
``framecap_core/comfy_files.py`` for the single files. The bundled model's transformer starts from the previous toy
model's (commit 37ce22f: a random text encoder, 4 heads of 32, 8 latent channels; ``--transformer-from``), so the
rebuild needs that folder first (the README's toy section gives the commands).

Stages (each a function below; ``--stage`` starts at one and reuses what is on disk, ``--until`` stops after one):

1. ``tokenizer``: a word-level tokenizer over the toy vocabulary (``framecap_core.toyworld.TOY_WORDS``); words
   outside it are dropped by its normalizer, so any prose (the offline prompt builder's captions) tokenizes into toy
   words. Saved as ``tokenizer.json``, loadable offline by ``transformers.AutoTokenizer``.
2. ``text``: a small ``UMT5EncoderModel`` taught the toy grammar (:func:`pretrain_text_encoder`: every token's output
   tells every attribute of its caption), then frozen, as Wan's is. Its 32 features are read as zero-padded to the
   transformer's 4096 (``framecap_core.narrow_text``).
3. ``vae``: a small ``AutoencoderKLWan`` trained on toy frames. Its temporal convolutions start as "per frame" (only
   the causal tap on the current frame is non-zero, time downsampling keeps the newest frame, time upsampling
   repeats it), so it is trained fast on single frames (``--vae-clip-steps N`` adds N steps on 5-frame clips so the
   temporal taps learn motion; 0 by default: the decoder's motion steps at the end of this stage teach it instead). Its residual branches start at
   zero, which with a small step size (1e-4) takes it off the mean-colour plateau in a few hundred steps; the shape's
   pixels weigh more in the loss. It is then grown into Wan2.1's layout (:func:`grow_to_wan_layout`, decoder
   fine-tuned ``--vae-decoder-steps``), its 8 latent channels exposed as 16 (:func:`widen_latent_channels`) and its
   latent space mapped onto Wan2.1's fixed statistics (:func:`adopt_latent_statistics`). ``--vae-from`` reuses the
   first part's result (``WORK/vae_trained``). Last, ``--vae-motion-steps`` train the decoder alone on 9-frame clips
   (the encoder and so the latent space stay): frames between latents then move instead of repeating one position.
   ``--vae-continue`` starts those steps from a finished VAE (a previous toy model's ``vae``) and skips the rest.
4. ``data``: toy stories rendered into clips of 49 frames (13 latents), a manifest (JSON Lines, one clip per line)
   and the latent cache (``framecap_core.data.CacheWriter``: normalized latents and the clips' caption embeddings).
5. ``train``: ``training/finetune.py`` (Diffusion Forcing, frame-level captions) from a random transformer, or from a
   previous toy model's (``--transformer-from``, :func:`transformer_from_previous`), optionally grown first into a
   wider or deeper one that computes the same (``--grow``, :func:`grow_transformer`; done in the ``data`` stage,
   which writes the folder training starts from).
6. ``assemble``: the diffusers folder (``model_index.json``, transformer, vae, text_encoder, tokenizer, scheduler,
   ``framecap.json``), safetensors only.

Usage::

    mkdir -p runs/previous_toy && git archive 37ce22f framecap_core/toy_model | tar -x -C runs/previous_toy
    python scripts/build_toy_model.py --transformer-from runs/previous_toy/framecap_core/toy_model
    python scripts/build_toy_model.py --work runs/toy --stage train --train-steps 500   # a stage again, from disk
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from framecap_core import toyworld as tw  # noqa: E402
from framecap_core.comfy_files import embed_wan_vae_state  # noqa: E402
from framecap_core.testing import WAN_LATENTS_MEAN, WAN_LATENTS_STD  # noqa: E402

STAGES = ("tokenizer", "text", "vae", "data", "train", "assemble")

# ---------------------------------------------------------------------------------------------------------- sizes

TEXT_LEN = 16  # tokens per caption: "a red circle moves left on a blue background" is 9 words + </s>
TEXT_DIM = 32  # the toy text encoder's width; its features are zero-padded to the transformer's TRANSFORMER_TEXT_DIM
Z_DIM = 8  # the latent channels the toy VAE is trained with (toy frames need no more) ...
LATENT_CHANNELS = 16  # ... exposed as Wan2.1's 16 (each trained channel twice; see widen_latent_channels)
# The shapes ComfyUI's model detection assumes for a Wan2.1 transformer (comfy/model_detection.py: num_heads =
# dim // 128, freq_dim 256 and text_dim 4096 fixed), so the toy files load in its native loaders.
HEAD_DIM = 128
TRANSFORMER_TEXT_DIM = 4096
CLIP_FRAMES = 49  # 13 latents
WINDOW_LATENTS = 9  # training window: 33 frames
CLIP_SCENES = (1, 4)  # scenes per training clip, fewest and most
DF_ZERO_STEP_PROB = 0.3  # Diffusion Forcing: share of training samples at one noise level for every latent
VAE_CONFIG = dict(
    base_dim=8, z_dim=Z_DIM, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0,
)
# Wan2.1's VAE layout (dim_mult [1, 2, 4, 4]: the shortcut convolutions sit where Wan's do), so the toy VAE embeds
# exactly in the full-size layout ComfyUI's VAE loader builds (framecap_core.comfy_files). The VAE is first trained
# in VAE_CONFIG's layout and then grown into this one (grow_to_wan_layout), which only the decoder needs relearning.
WAN_DIM_MULT = [1, 2, 4, 4]
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=HEAD_DIM, in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    text_dim=TRANSFORMER_TEXT_DIM, freq_dim=256, ffn_dim=384, num_layers=4, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
TEXT_CONFIG = dict(
    d_model=TEXT_DIM, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
    relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
    dense_act_fn="gelu_new", is_gated_act=True, layer_norm_epsilon=1e-6, dropout_rate=0.0, scalable_attention=True,
    tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
GENERATION_DEFAULTS = {  # framecap.json "defaults": what `framecap generate --model toy` uses unless overridden
    "width": 64, "height": 64, "window": 4 * (WINDOW_LATENTS - 1) + 1, "overlap": 16, "steps": 32,
    "guidance": 5.0, "shift": 3.0, "seconds": 4.0, "negative": "",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------------ tokenizer


def make_tokenizer(words=tw.TOY_WORDS):
    """A word-level ``PreTrainedTokenizerFast`` (T5 ids: <pad> 0, </s> 1, <unk> 2): lower-cases, drops every word
    outside ``words`` and all punctuation, appends </s>."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    alternation = "|".join(sorted(words, key=len, reverse=True))
    tok.normalizer = normalizers.Sequence([
        normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[^a-z]+"), " "),
        normalizers.Replace(Regex(rf"\b(?!(?:{alternation})\b)[a-z]+\b"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=TEXT_LEN)


def make_text_encoder(vocab_size: int, seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **TEXT_CONFIG)).eval()


def all_captions() -> tuple[list[str], torch.Tensor]:
    """Every toy caption (shape colour differs from the background) and its attributes as class indices
    ``[N, 4]`` (shape, colour, background, motion)."""
    captions, labels = [], []
    for shape in tw.SHAPES:
        for colour in tw.COLOURS:
            for background in tw.BACKGROUNDS:
                if background == colour:
                    continue
                for motion in tw.MOTIONS:
                    captions.append(tw.caption(shape, colour, background, motion))
                    labels.append([tw.SHAPES.index(shape), list(tw.COLOURS).index(colour),
                                   tw.BACKGROUNDS.index(background), list(tw.MOTIONS).index(motion)])
    return captions, torch.tensor(labels)


def pretrain_text_encoder(encoder, tokenizer, *, steps: int = 400, seed: int = 0, lr: float = 3e-3, batch: int = 64):
    """Teach the toy text encoder to read the toy grammar, as a real text encoder has learned its language: from
    the output of EVERY token of a caption, linear probes must tell the caption's shape, shape colour, background and
    motion. A random encoder mixes words mostly by position, so "a red circle ... on a blue background" and "a blue
    circle ... on a red background" come out nearly alike and the video model must untangle word order itself (the
    bundled model's colour / background confusions); after this, each token says which colour is the shape's.
    Returns the encoder (eval mode, to be frozen) and the probes' accuracy on every caption."""
    captions, labels = all_captions()
    tokens = tokenizer(captions, padding="max_length", max_length=TEXT_LEN, return_tensors="pt")
    ids, mask = tokens.input_ids, tokens.attention_mask
    sizes = (len(tw.SHAPES), len(tw.COLOURS), len(tw.BACKGROUNDS), len(tw.MOTIONS))
    torch.manual_seed(seed)
    probes = torch.nn.ModuleList(torch.nn.Linear(encoder.config.d_model, n) for n in sizes)
    opt = torch.optim.Adam([*encoder.parameters(), *probes.parameters()], lr=lr)
    rng = np.random.default_rng(seed)

    def logits(rows):
        hidden = encoder(ids[rows], mask[rows]).last_hidden_state  # [B, TEXT_LEN, d_model]
        return [probe(hidden) for probe in probes]  # each [B, TEXT_LEN, classes]

    encoder.train()
    for step in range(steps):
        rows = torch.from_numpy(rng.integers(0, len(captions), batch))
        keep = mask[rows].bool()
        loss = sum(torch.nn.functional.cross_entropy(out[keep], labels[rows, a][:, None].expand_as(keep)[keep])
                   for a, out in enumerate(logits(rows)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"text encoder step {step + 1}/{steps} loss {loss.item():.4f}")
    encoder.eval()
    with torch.no_grad():
        rows = torch.arange(len(captions))
        keep = mask.bool()
        accuracy = min(float((out.argmax(-1) == labels[:, a][:, None])[keep].float().mean())
                       for a, out in enumerate(logits(rows)))
    return encoder, accuracy


# ------------------------------------------------------------------------------------------------------------ VAE


def make_vae(seed: int = 0):
    """A small Wan VAE whose temporal taps start "per frame" (see the module docstring)."""
    from diffusers import AutoencoderKLWan
    from diffusers.models.autoencoders.autoencoder_kl_wan import (
        WanAttentionBlock,
        WanCausalConv3d,
        WanResample,
        WanResidualBlock,
    )

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**VAE_CONFIG, latents_mean=[0.0] * Z_DIM, latents_std=[1.0] * Z_DIM)
    time_convs = set()
    with torch.no_grad():
        # Residual branches start at zero (each block starts as its shortcut): with the Wan VAE's channel-wise RMS
        # norms, a random start sits on the "mean colour" plateau for over a thousand steps; this one leaves it in a
        # few hundred.
        for module in vae.modules():
            if isinstance(module, WanResidualBlock):
                module.conv2.weight.zero_()
                module.conv2.bias.zero_()
            elif isinstance(module, WanAttentionBlock):
                module.proj.weight.zero_()
                module.proj.bias.zero_()
        for module in vae.modules():
            if isinstance(module, WanResample) and hasattr(module, "time_conv"):
                conv = module.time_conv
                time_convs.add(id(conv))
                conv.weight.zero_()
                conv.bias.zero_()
                dim = conv.in_channels
                for i in range(dim):
                    conv.weight[i, i, -1] = 1.0  # newest frame (downsample) / first copy (upsample)
                    if conv.out_channels == 2 * dim:
                        conv.weight[dim + i, i, -1] = 1.0  # second copy (upsample)
        for module in vae.modules():
            if isinstance(module, WanCausalConv3d) and id(module) not in time_convs and module.kernel_size[0] > 1:
                module.weight[:, :, :-1] = 0.0  # only the current frame's tap
    return vae


def _random_frames(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` single toy frames at random positions: ``[n, 64, 64, 3]`` uint8."""
    out = []
    for _ in range(n):
        s = tw.random_scene(rng, 1)
        x, y = rng.uniform(12, 52, size=2)
        out.append(tw.render_frame(s.shape, s.colour, s.background, x, y))
    return np.stack(out)


def _random_clips(rng: np.random.Generator, n: int, frames: int) -> np.ndarray:
    """``n`` toy clips of ``frames`` frames (random crops of stories, scene cuts included): ``[n, T, 64, 64, 3]``.
    Crops start on a multiple of 4 frames, so a cut falls where it does in every toy video, on a latent's first
    frame: a latent never holds two scenes, and the decoder learns to cut cleanly instead of blending."""
    out = []
    for _ in range(n):
        story = tw.random_story(rng, num_frames=25, num_scenes=(1, 2), min_scene_frames=8)
        video = tw.render_story(story)
        start = 4 * int(rng.integers(0, (len(video) - frames) // 4 + 1))
        out.append(video[start:start + frames])
    return np.stack(out)


def _to_input(frames: np.ndarray) -> torch.Tensor:
    """``[B, T, H, W, 3]`` uint8 -> ``[B, 3, T, H, W]`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """``AutoencoderKLWan.decode`` without its final clamp to [-1, 1], which would stop the gradient of every pixel
    outside that range (at initialization, most of them)."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    outs = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(outs, dim=2)


def foreground_mask(x: torch.Tensor) -> torch.Tensor:
    """``x [B, 3, T, H, W]`` -> ``[B, 1, T, H, W]``, 1 where a pixel differs from its frame's corner pixel (toy frames
    are a flat background with one shape away from the corners)."""
    return (x - x[..., :1, :1]).abs().amax(dim=1, keepdim=True).gt(1e-3).float()


def train_vae(vae, *, steps_image: int, steps_clip: int, seed: int = 0, lr: float = 1e-4, batch: int = 8,
              pool: int = 1024, latent_weight: float = 1e-4, foreground_weight: float = 4.0,
              decoder_only: bool = False, latent_noise: float = 0.0, clip_frames: int = 5):
    """Reconstruction of the posterior mean, first on single frames, then on clips of ``clip_frames`` frames.

    The loss is a pixel MSE in which the shape's pixels weigh ``1 + foreground_weight``: a shape covers a few percent
    of a frame, and an unweighted MSE is content for a long time with a blurred one. Why these settings: the Wan
    VAE's channel-wise RMS norms make it sensitive to the step size — with zero-initialized residual branches
    (``make_vae``) a constant 1e-4 leaves the mean-colour plateau in ~400 steps, while 2e-4 takes ~1000 and 5e-4
    or more stay on it. Frames come from a fixed pool drawn once (rendering is slower than a step of this model).
    ``decoder_only``: train the decoder (and ``post_quant_conv``) against the frozen encoder's latents.
    ``latent_noise``: frames and clips are decoded from latents with Gaussian noise added, of a standard deviation
    drawn per sample from [0, ``latent_noise``] in units of each channel's ``latents_std`` (the diffusion model's
    units), so the decoder draws a clean frame from a slightly wrong latent, as the transformer's outputs are.
    Clips teach the decoder what single frames cannot: the three frames a latent holds besides its last, which a
    decoder trained on frames alone draws as copies of one position (a moving shape that jumps every fourth frame)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()] if decoder_only else vae.parameters()
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))
    frames = _to_input(_random_frames(rng, pool)[:, None])
    vae.train()
    total = steps_image + steps_clip
    t0 = time.time()
    for step in range(total):
        image_phase = step < steps_image
        k, n = (step, steps_image) if image_phase else (step - steps_image, steps_clip)
        peak = lr if image_phase else lr * 0.5  # the clip phase refines a trained model
        # constant, then a cosine decay over the last quarter of each phase
        tail = max(k - 0.75 * n, 0.0) / max(0.25 * n, 1.0)
        for group in opt.param_groups:
            group["lr"] = peak * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * tail)))
        if image_phase:
            x = frames[torch.from_numpy(rng.integers(0, pool, batch))]
            # posterior mean and unclamped reconstruction of single frames [B, 3, 1, H, W]: encoder and decoder
            # without their time caches, which for one frame is exactly encode / decode (zero padding in time meets
            # every causal tap but the current one) with none of the per-chunk bookkeeping
            with torch.set_grad_enabled(not decoder_only):
                mu = vae.quant_conv(vae.encoder(x))[:, : vae.config.z_dim]
        else:
            x = _to_input(_random_clips(rng, 4, clip_frames))
            with torch.set_grad_enabled(not decoder_only):
                mu = vae.encode(x).latent_dist.mode()
        if latent_noise:
            scale = torch.rand(mu.shape[0], 1, 1, 1, 1) * latent_noise
            mu = mu + scale * torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1) * torch.randn_like(mu)
        rec = vae.decoder(vae.post_quant_conv(mu), first_chunk=True) if image_phase else decode_unclamped(vae, mu)
        # a deterministic autoencoder (the posterior mean, as the latent cache uses) with a small penalty that keeps
        # the latents' scale bounded; the diffusion model sees them normalized by their measured mean / std
        fg = foreground_mask(x)
        err = (rec - x).pow(2)
        mse = err.mean()
        loss = (err * (1 + foreground_weight * fg)).mean() + latent_weight * mu.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == total - 1:
            fg_mse = (err * fg).sum() / (3 * fg.sum()).clamp_min(1)
            log(f"vae step {step + 1}/{total} ({'frames' if image_phase else 'clips'}) mse {mse.item():.5f} "
                f"shape mse {fg_mse.item():.4f} ({time.time() - t0:.0f} s)")
    return vae.eval()


@torch.no_grad()
def grow_to_wan_layout(vae):
    """``vae`` (``VAE_CONFIG``'s layout, dim_mult [1, 2, 2, 2]) in Wan2.1's layout (dim_mult [1, 2, 4, 4]) by
    ``comfy_files.embed_wan_vae_state``: the deepest levels' channels double (zero-padded), and the encoder computes
    exactly what it did. One decoder block cannot map exactly: its shortcut convolution (c -> 2c) has no place in
    Wan's layout, where that block's shortcut is the identity. Its output ``u = W y + b`` is folded into the upsampler
    before the block, so the identity shortcut carries exactly what the old one did, and its residual branch (which
    cannot read ``y`` back through a norm over ``u``) restarts at zero — measured a closer start than reading it
    through ``W``'s pseudo-inverse. The decoder is then fine-tuned (:func:`train_vae` with ``decoder_only``)."""
    from diffusers import AutoencoderKLWan

    config = {key: value for key, value in vae.config.items() if not key.startswith("_")}
    target = {**config, "dim_mult": WAN_DIM_MULT}
    out, leftovers = embed_wan_vae_state(vae.state_dict(), config, target)
    old = vae.state_dict()
    for key in leftovers:
        if not (key.startswith("decoder.up_blocks.") and key.endswith(".resnets.0.conv_shortcut.weight")):
            continue
        block = key.removesuffix(".conv_shortcut.weight")  # decoder.up_blocks.{i}.resnets.0
        up = f"decoder.up_blocks.{int(block.split('.')[2]) - 1}.upsamplers.0.resample.1"
        w_sc, b_sc = old[key][:, :, 0, 0, 0], old[f"{block}.conv_shortcut.bias"]  # [2c, c], [2c]
        folded = torch.einsum("oc,cihw->oihw", w_sc, old[f"{up}.weight"])  # [2c, C, 3, 3]
        out[f"{up}.weight"].zero_()[:, : folded.shape[1]] = folded
        out[f"{up}.bias"] = w_sc @ old[f"{up}.bias"] + b_sc
        out[f"{block}.conv2.weight"].zero_()
        out[f"{block}.conv2.bias"].zero_()
    grown = AutoencoderKLWan(**target)
    grown.load_state_dict(out)
    return grown.eval()


@torch.no_grad()
def widen_latent_channels(vae, z_dim: int):
    """The same autoencoder with ``z_dim`` latent channels (a multiple of ``vae``'s): every trained channel appears
    ``z_dim / vae.z_dim`` times (the encoder writes each copy, the decoder reads their mean), so all ``z_dim`` channels
    carry the signal and decoding a widened encoding is exactly decoding the original one. This gives the toy VAE
    Wan2.1's 16 latent channels while training only the 8 that toy frames need.

    ``vae``: ``AutoencoderKLWan``; returns a new one (``latents_mean`` / ``latents_std`` repeated likewise)."""
    from diffusers import AutoencoderKLWan

    z, k = vae.config.z_dim, z_dim // vae.config.z_dim
    if k * z != z_dim:
        raise ValueError(f"z_dim {z_dim} is not a multiple of the VAE's {z}")
    config = {key: value for key, value in vae.config.items() if not key.startswith("_")}
    wide = AutoencoderKLWan(**{**config, "z_dim": z_dim, "latents_mean": list(config["latents_mean"]) * k,
                               "latents_std": list(config["latents_std"]) * k})
    state = vae.state_dict()
    # posterior channels are [mean (z), log-variance (z)]; widened: [mean x k, log-variance x k]
    rows = torch.cat([torch.arange(z).repeat(k), z + torch.arange(z).repeat(k)])
    first = torch.cat([torch.arange(z), k * z + torch.arange(z)])  # where the first copies sit among the 2kz inputs
    new = dict(state)
    new["encoder.conv_out.weight"] = state["encoder.conv_out.weight"][rows]
    new["encoder.conv_out.bias"] = state["encoder.conv_out.bias"][rows]
    wq = torch.zeros(2 * z_dim, 2 * z_dim, *state["quant_conv.weight"].shape[2:])
    wq[:, first] = state["quant_conv.weight"][rows]  # each output reads the first copies
    new["quant_conv.weight"], new["quant_conv.bias"] = wq, state["quant_conv.bias"][rows]
    wp = torch.zeros(z_dim, z_dim, *state["post_quant_conv.weight"].shape[2:])
    wp[:z] = state["post_quant_conv.weight"].repeat(1, k, 1, 1, 1) / k  # the mean of the copies
    bp = torch.zeros(z_dim)
    bp[:z] = state["post_quant_conv.bias"]
    new["post_quant_conv.weight"], new["post_quant_conv.bias"] = wp, bp
    wd = torch.zeros(state["decoder.conv_in.weight"].shape[0], z_dim, *state["decoder.conv_in.weight"].shape[2:])
    wd[:, :z] = state["decoder.conv_in.weight"]
    new["decoder.conv_in.weight"] = wd
    wide.load_state_dict(new)
    return wide.eval()


@torch.no_grad()
def adopt_latent_statistics(vae, mean, std, target_mean, target_std) -> None:
    """Rescale ``vae``'s latent space in place so latents measured at per-channel ``mean`` / ``std`` come out at
    ``target_mean`` / ``target_std`` (Wan2.1's fixed statistics, which ComfyUI's ``Wan21`` latent format assumes), and
    register the targets as ``latents_mean`` / ``latents_std``. The map ``z' = a z + b`` is folded into the 1x1x1
    ``quant_conv`` (posterior mean and log-variance) and undone in ``post_quant_conv``, so decoding and the normalized
    latents ``(z' - target_mean) / target_std = (z - mean) / std`` are unchanged.

    ``vae``: ``AutoencoderKLWan``; ``mean``, ``std``, ``target_mean``, ``target_std``: ``[z_dim]``."""
    z = vae.config.z_dim
    mean, std, target_mean, target_std = (torch.as_tensor(v, dtype=torch.float64) for v in
                                          (mean, std, target_mean, target_std))
    a = target_std / std
    b = target_mean - a * mean
    q, p = vae.quant_conv, vae.post_quant_conv
    wq, bq = q.weight.double(), q.bias.double()  # [2z, 2z, 1, 1, 1], [2z]
    wq[:z] *= a.view(-1, 1, 1, 1, 1)
    bq[:z] = a * bq[:z] + b
    bq[z:] += 2 * torch.log(a)  # the posterior's standard deviation scales with its mean
    wp, bp = p.weight.double(), p.bias.double()  # [z, z, 1, 1, 1], [z]
    bp -= (wp[:, :, 0, 0, 0] * (b / a).view(1, -1)).sum(1)
    wp /= a.view(1, -1, 1, 1, 1)
    for param, value in ((q.weight, wq), (q.bias, bq), (p.weight, wp), (p.bias, bp)):
        param.copy_(value.to(param.dtype))
    vae.register_to_config(latents_mean=[float(v) for v in target_mean], latents_std=[float(v) for v in target_std])


@torch.no_grad()
def vae_latents(vae, clips: np.ndarray, batch: int = 8) -> torch.Tensor:
    """Raw latent means of ``clips [B, T, H, W, 3]`` uint8: ``[B, C, L, h, w]``."""
    out = []
    for i in range(0, len(clips), batch):
        out.append(vae.encode(_to_input(clips[i:i + batch])).latent_dist.mode())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------- data


def make_dataset(num_clips: int, seed: int, scenes: tuple[int, int] = CLIP_SCENES) -> list[tw.ToyStory]:
    """``num_clips`` random toy clips of ``CLIP_FRAMES`` frames, each of ``scenes`` = (fewest, most) scenes."""
    rng = np.random.default_rng(seed)
    return [tw.random_story(rng, num_frames=CLIP_FRAMES, num_scenes=scenes) for _ in range(num_clips)]


def write_manifest(stories: list[tw.ToyStory], path: Path, seed: int) -> None:
    from framecap_core.data import ClipRecord, ManifestWriter

    if path.exists():
        path.unlink()
    with ManifestWriter(path) as writer:
        for i, story in enumerate(stories):
            captions = [s.caption for s in story.scenes for _ in range(s.frames)]
            frames = list(range(story.num_frames))
            writer.append(ClipRecord(
                clip_id=f"toy-{i:05d}", source=f"toyworld:seed={seed}:clip={i}", source_fps=16.0, start_frame=0,
                end_frame=story.num_frames, sample_frames=frames, captions=captions, frame_indices=frames, fps=16,
                global_caption=". ".join(s.caption for s in story.scenes),
                extra={"toy_scenes": [s.__dict__ for s in story.scenes]},
            ))


def write_cache(stories, cache_dir: Path, vae, encoder, tokenizer, *, global_captions: bool = False,
                captions_from=None) -> None:
    """Latent cache of ``stories`` with frame-level captions (or, ``global_captions``, the whole story as one caption
    for every latent: the video-level baseline). ``captions_from``: other stories, one per story with the same scene
    lengths, whose captions go with these videos (wrong captions on purpose, to measure what a word is worth)."""
    from framecap_core.backend import normalize_latents
    from framecap_core.data import CacheWriter
    from framecap_core.text import encode_captions
    from framecap_core.timeline import Timeline

    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    mean, std = vae.config.latents_mean, vae.config.latents_std
    text_len = TEXT_LEN if not global_captions else 4 * TEXT_LEN
    with CacheWriter(cache_dir, settings={"height": 64, "width": 64, "text_len": text_len}) as writer:
        for i in range(0, len(stories), 16):
            chunk = stories[i:i + 16]
            z = vae_latents(vae, np.stack([tw.render_story(s) for s in chunk]))
            for j, story in enumerate(chunk):
                latents = normalize_latents(z[j], mean, std, channel_dim=0)
                told = story if captions_from is None else captions_from[i + j]
                if [sc.frames for sc in told.scenes] != [sc.frames for sc in story.scenes]:
                    raise ValueError(f"captions_from[{i + j}] has other scene lengths than the story it tells")
                timeline: Timeline = told.timeline()
                if global_captions:
                    unique, index = [tw.story_text(told)], [0] * timeline.num_latents
                else:
                    unique, index = timeline.unique_captions(), timeline.latent_unique_indices()
                text = encode_captions(encoder, tokenizer, unique, text_len=text_len)
                writer.add(f"toy-{i + j:05d}", latents, text, index, unique)
            log(f"cached {min(i + 16, len(stories))}/{len(stories)} clips")
        writer.write_empty_caption(encode_captions(encoder, tokenizer, [""], text_len=text_len))


# ------------------------------------------------------------------------------------------------------ assembly


def save_folder(folder: Path, *, transformer, vae, text_encoder, tokenizer, text_len: int = TEXT_LEN,
                build: dict | None = None) -> Path:
    from diffusers import UniPCMultistepScheduler, WanPipeline

    if folder.exists():
        shutil.rmtree(folder)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    for config in folder.glob("*/config.json"):  # a part loaded from disk records that path: not the model's business
        values = json.loads(config.read_text())
        if values.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    settings = {
        "text_len": text_len, "fps": 16, "defaults": GENERATION_DEFAULTS,
        "toy_world": {"frame_size": tw.FRAME_SIZE, "words": list(tw.TOY_WORDS)},
        "built_by": "scripts/build_toy_model.py",
        # the build's arguments, so a baseline (benchmarks/bench_paper.py) can be trained exactly like this model
        **({"build": build} if build else {}),
    }
    (folder / "framecap.json").write_text(json.dumps(settings, indent=2) + "\n")
    return folder


def make_transformer(seed: int = 0, **overrides):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**TRANSFORMER_CONFIG, **overrides})


GROWTHS = ("wide", "deep")
ARCHITECTURE_KEYS = ("num_attention_heads", "ffn_dim", "num_layers")  # what grow_transformer changes


@torch.no_grad()
def grow_transformer(model, how: str, seed: int = 0, symmetry_noise: float = 0.01):
    """A larger transformer that computes what ``model`` computes, so training goes on from what it learned.

    ``"wide"``: twice the heads (of the same ``attention_head_dim``, so ComfyUI's ``num_heads = dim // 128`` still
    holds) and twice ``ffn_dim``. Every hidden vector ``x`` [dim] becomes ``[x, x]`` [2 dim]: a linear layer's input
    columns are repeated and halved (``W x = [W/2, W/2] [x, x]``), its output rows repeated; layer norms and the
    across-heads RMS norm of ``[x, x]`` are those of ``x`` repeated; each new head is a copy of an old one, whose
    attention is the same. Copies get equal gradients and would stay equal, so the blocks' weights then get noise of
    ``symmetry_noise`` times their standard deviation (seeded; the output moves by about 1% of its scale).
    ``"deep"``: twice the blocks; after each block a copy of it whose output projections (self- and cross-attention
    ``to_out``, the feed-forward's last layer) are zero, so it adds nothing to the residual stream until trained.
    Exact (up to float rounding) before the noise; ``tests/test_toy_finetune.py`` checks it."""
    from diffusers import WanTransformer3DModel

    if how not in GROWTHS:
        raise ValueError(f"grow must be one of {GROWTHS}, not {how!r}")
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    src, out = model.state_dict(), {}
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    if how == "deep":
        config["num_layers"] *= 2
        for key, value in src.items():
            if not key.startswith("blocks."):
                out[key] = value
                continue
            _, index, rest = key.split(".", 2)
            out[f"blocks.{2 * int(index)}.{rest}"] = value
            silent = rest.startswith(("attn1.to_out.", "attn2.to_out.", "ffn.net.2."))
            out[f"blocks.{2 * int(index) + 1}.{rest}"] = torch.zeros_like(value) if silent else value.clone()
    else:
        config["num_attention_heads"] *= 2
        config["ffn_dim"] *= 2

        def rows(w):  # the output repeated: y -> [y, y]
            return torch.cat([w, w], 0)

        def columns(w):  # the input read from [x, x]
            return torch.cat([w / 2, w / 2], 1)

        for key, value in src.items():
            if key.endswith("scale_shift_table"):  # [1, n, dim] modulation: per hidden unit
                out[key] = torch.cat([value, value], -1)
            elif key.startswith("condition_embedder.time_proj."):  # [6 dim, dim]: six modulations of dim each
                six = (columns(value) if value.dim() == 2 else value).view(6, dim, -1)
                out[key] = torch.cat([six, six], 1).reshape(12 * dim, -1).squeeze(-1)
            elif key.startswith("proj_out."):  # to the latent patches: input only
                out[key] = columns(value) if key.endswith("weight") else value
            elif key in ("patch_embedding.weight", "condition_embedder.time_embedder.linear_1.weight",
                         "condition_embedder.text_embedder.linear_1.weight"):  # from outside the hidden width
                out[key] = rows(value)
            elif value.dim() == 1:  # biases, norm gains: per hidden unit
                out[key] = rows(value)
            elif value.dim() == 2:  # hidden -> hidden (attention, feed-forward, embedder second layers)
                out[key] = rows(columns(value))
            else:
                raise ValueError(f"grow_transformer does not know how to widen {key} {tuple(value.shape)}")
    grown = WanTransformer3DModel(**config).eval()
    grown.load_state_dict(out, strict=True)
    if how == "wide" and symmetry_noise:
        generator = torch.Generator().manual_seed(seed)
        for name, p in grown.named_parameters():
            if name.startswith("blocks.") and p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=generator) * p.std() * symmetry_noise)
    return grown


@torch.no_grad()
def transformer_from_previous(folder: Path, encoder, tokenizer, seed: int = 0):
    """A start for the transformer from a previous toy model (``folder``: 4 heads of 32, freq_dim 64, text_dim 32,
    8 latent channels, a random text encoder), so a rebuild need not learn to draw toy frames again; or from a model
    in the current shapes and text encoder, which is then copied exactly, in its own width and depth (to continue
    its training; it may have been grown, :func:`grow_transformer`). Mapped exactly:
    the timestep frequencies (the sinusoid of index i over 32 frequencies is index 4i over 128), the latent channels
    (:func:`widen_latent_channels` repeats each one: the input weights are halved over the copies, the output rows
    repeated) and everything of the same shape. Not exact: one head of 128 instead of four of 32 (same projections,
    another attention and rotary split) and the new text encoder, whose features the text projection is refit to by
    least squares (new features -> what the old projection made of the old encoder's features, over every toy
    caption's tokens)."""
    from diffusers import WanTransformer3DModel
    from transformers import UMT5EncoderModel

    from framecap_core.text import encode_captions

    old = WanTransformer3DModel.from_pretrained(str(folder / "transformer")).eval()
    # a model in the current shapes keeps its own width and depth (it may have been grown: grow_transformer)
    current = old.config.attention_head_dim == HEAD_DIM and old.config.in_channels == LATENT_CHANNELS
    new = make_transformer(seed, **({k: old.config[k] for k in ARCHITECTURE_KEYS} if current else {}))
    src, out = old.state_dict(), new.state_dict()
    for key, value in src.items():
        if key in out and out[key].shape == value.shape:
            out[key] = value.clone()
    # timestep sinusoids: [cos(f_i t)..., sin(f_i t)...] with f_i = 10000^(-i / half)
    w_old = src["condition_embedder.time_embedder.linear_1.weight"]  # [dim, 2 * h_old]
    h_old, h_new = w_old.shape[1] // 2, out["condition_embedder.time_embedder.linear_1.weight"].shape[1] // 2
    step = h_new // h_old
    w = torch.zeros_like(out["condition_embedder.time_embedder.linear_1.weight"])
    w[:, 0:h_new:step], w[:, h_new::step] = w_old[:, :h_old], w_old[:, h_old:]
    out["condition_embedder.time_embedder.linear_1.weight"] = w
    # latent channels: each old channel c is now channels c and c + C (equal once normalized)
    c_old, c_new = old.config.in_channels, new.config.in_channels
    k = c_new // c_old
    out["patch_embedding.weight"] = src["patch_embedding.weight"].repeat(1, k, 1, 1, 1) / k
    positions = src["proj_out.weight"].shape[0] // c_old  # rows are [patch position, channel]
    out["proj_out.weight"] = src["proj_out.weight"].view(positions, 1, c_old, -1).expand(
        positions, k, c_old, -1).reshape(positions * c_new, -1).clone()
    out["proj_out.bias"] = src["proj_out.bias"].view(positions, 1, c_old).expand(positions, k, c_old).reshape(-1)
    # the text projection, refit to the new encoder's features
    old_encoder = UMT5EncoderModel.from_pretrained(str(folder / "text_encoder")).eval()
    captions = [*all_captions()[0], ""]
    f_old = encode_captions(old_encoder, tokenizer, captions, text_len=TEXT_LEN)
    f_new = encode_captions(encoder, tokenizer, captions, text_len=TEXT_LEN)
    keep = f_new.abs().sum(-1) > 0
    w1, b1 = src["condition_embedder.text_embedder.linear_1.weight"], src["condition_embedder.text_embedder.linear_1.bias"]
    target = f_old[keep] @ w1[:, : f_old.shape[-1]].T  # [tokens, dim]; narrow features read as zero-padded
    x = torch.cat([f_new[keep], torch.ones(int(keep.sum()), 1)], dim=1)
    solution = torch.linalg.lstsq(x, target).solution  # [d + 1, dim]
    w1_new = torch.zeros_like(out["condition_embedder.text_embedder.linear_1.weight"])
    w1_new[:, : f_new.shape[-1]] = solution[:-1].T
    out["condition_embedder.text_embedder.linear_1.weight"] = w1_new
    out["condition_embedder.text_embedder.linear_1.bias"] = b1 + solution[-1]
    new.load_state_dict(out)
    return new


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------------------- main


def train_config(work: Path, steps: int, seed: int, *, cache: str = "cache", out: str = "train",
                 text_len: int = TEXT_LEN, **extra) -> Path:
    config = {
        "base_model": str(work / "base"), "cache_dir": str(work / cache), "output_dir": str(work / out),
        "height": 64, "width": 64, "text_len": text_len, "window_latents": WINDOW_LATENTS, "max_steps": steps,
        "batch_size": 16, "learning_rate": 1e-3, "lr_schedule": "cosine", "lr_warmup_steps": min(100, steps // 10),
        "weight_decay": 0.01, "max_grad_norm": 1.0, "seed": seed, "df_step_size_range": [0.0, 0.1],
        "df_zero_step_prob": DF_ZERO_STEP_PROB, "df_shift": 3.0, "caption_dropout": 0.1, "checkpoint_every": max(steps // 2, 1), "keep_checkpoints": 1,
        "report_to": "none", "export_format": "diffusers", "log_every": 50, **extra,
    }
    path = work / f"{out}.json"
    path.write_text(json.dumps(config, indent=1))
    return path


def run_finetune(config_path: Path, threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "training" / "finetune.py"), "--config", str(config_path), "--no-progress"]
    log("running " + " ".join(cmd))
    subprocess.run(cmd, check=True, env=env)


def load_exported_transformer(export: Path, base: Path):
    """The trained transformer (``export``) in the shapes of the one training started from (``base``, a model
    folder: the toy config, or a grown one)."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    config = WanTransformer3DModel.load_config(str(base / "transformer"))
    model = make_transformer(**{k: config[k] for k in ARCHITECTURE_KEYS})
    state = load_file(str(export))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"exported transformer does not match the toy config: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return model.eval()


def training_phases(transformer_from: Path | None, steps: int, learning_rate: float, clips: int,
                    grow: str | None = None, seed: int = 0, df_zero_step_prob: float = DF_ZERO_STEP_PROB,
                    clip_scenes: tuple[int, int] = CLIP_SCENES) -> list[dict]:
    """The transformer's training history for ``framecap.json``: the phases of the model it started from (read from
    that folder's ``framecap.json``; none for a random start, one "previous toy model" phase for a model built before
    phases were recorded) and this one. Each phase says on how many clips it trained (phases recorded before that
    field existed trained on the clips their build recorded), how fast the toy world's shapes moved in them
    (``toy_speed``, pixels a frame; phases recorded before that field ran at 0.75), its ``seed`` from when that was
    recorded, its Diffusion Forcing share of synchronous samples (``df_zero_step_prob``) and scenes per clip
    (``clip_scenes``; phases recorded before these fields used 0.3 and 1-4) and, when it grew the transformer first,
    how (``grow``)."""
    from framecap_core.model_settings import read_model_settings

    earlier: list[dict] = []
    if transformer_from is not None:
        built = read_model_settings(transformer_from).build
        if "phases" in built:
            earlier = list(built["phases"])
        elif "train_steps" in built:  # one or two phases, recorded before this format
            earlier = [{"train_steps": built["train_steps"], "learning_rate": built.get("learning_rate"),
                        "start": built.get("transformer_from") or "random"}]
            if "continued_steps" in built:
                earlier.append({"train_steps": built["continued_steps"],
                                "learning_rate": built["continued_learning_rate"], "start": "the phase before"})
        else:
            earlier = [{"start": "a toy model built before training phases were recorded"}]
        if "clips" in built:
            earlier = [p if "clips" in p or "train_steps" not in p else {**p, "clips": built["clips"]} for p in earlier]
        earlier = [p if "toy_speed" in p or "train_steps" not in p else {**p, "toy_speed": 0.75} for p in earlier]
        earlier = [p if "df_zero_step_prob" in p or "train_steps" not in p
                   else {**p, "df_zero_step_prob": 0.3, "clip_scenes": [1, 4]} for p in earlier]
    start = "random" if transformer_from is None else ("the phase before" if earlier[-1].get("train_steps")
                                                       else "previous toy model")
    phase = {"train_steps": steps, "learning_rate": learning_rate, "clips": clips, "start": start,
             "toy_speed": tw.SPEED, "seed": seed, "df_zero_step_prob": df_zero_step_prob,
             "clip_scenes": list(clip_scenes)}
    return [*earlier, {**phase, "grow": grow} if grow else phase]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "framecap_core" / "toy_model"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "toy_build"))
    parser.add_argument("--stage", choices=STAGES, default="tokenizer", help="start at this stage")
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1], help="stop after this stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips", type=int, default=512, help="toy clips the transformer trains on: the first N of "
                        "one seeded stream, so a larger N keeps a smaller one's clips")
    parser.add_argument("--clip-scenes", type=int, nargs=2, default=list(CLIP_SCENES), metavar=("FEWEST", "MOST"),
                        help="scenes per training clip (49 frames; each scene at least 12): fewer scenes are longer, "
                        "so a training window holds more of one scene's motion")
    parser.add_argument("--vae-image-steps", type=int, default=3000)
    parser.add_argument("--vae-clip-steps", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate of the transformer's "
                        "cosine schedule (lower when continuing a model with --transformer-from)")
    parser.add_argument("--train-seed", type=int, help="seed of the transformer's batches and noise (default: --seed); "
                        "a phase continuing another on the same clips may want other batches than it drew")
    parser.add_argument("--df-zero-step-prob", type=float, default=DF_ZERO_STEP_PROB,
                        help="share of training samples with every latent at one noise level (Diffusion Forcing's "
                        "delta = 0: what PMWD samples); the rest get a per-frame ramp")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--transformer-from", help="a previous toy model folder to start the transformer from "
                        "(transformer_from_previous) instead of a random one")
    parser.add_argument("--grow", choices=GROWTHS, help="make the starting transformer larger before training, "
                        "computing what it computed (grow_transformer): wide = twice the heads and feed-forward, "
                        "deep = twice the blocks")
    parser.add_argument("--vae-decoder-steps", type=int, default=250,
                        help="decoder fine-tuning steps after growing the VAE into Wan2.1's layout")
    parser.add_argument("--vae-robust-steps", type=int, default=1500,
                        help="last, decoder-only steps on latents with noise added (--vae-latent-noise), so slightly "
                        "wrong latents (the transformer's) still decode to clean toy frames")
    parser.add_argument("--vae-latent-noise", type=float, default=0.25,
                        help="largest noise standard deviation of those steps, in the diffusion model's units")
    parser.add_argument("--vae-motion-steps", type=int, default=1000,
                        help="last, decoder-only steps on 9-frame clips with latent noise, so a moving shape moves in "
                        "every frame rather than every fourth")
    parser.add_argument("--vae-continue", help="a finished toy VAE (a previous toy model's vae folder): run only the "
                        "--vae-motion-steps on it, keeping its encoder and latent statistics")
    parser.add_argument("--vae-from", help="the vae stage's first VAE (runs/.../vae_trained, same --seed and "
                        "--vae-*-steps) to reuse instead of training it again")
    args = parser.parse_args(argv)
    first, last = STAGES.index(args.stage), STAGES.index(args.until)
    if args.grow and not first <= STAGES.index("data") <= last:
        parser.error("--grow takes effect in the data stage (it writes the folder training starts from); start at "
                     "--stage data or earlier, or leave out --grow")
    fewest, most = args.clip_scenes
    if not 1 <= fewest <= most <= 4:
        parser.error(f"--clip-scenes {fewest} {most}: give FEWEST MOST with 1 <= FEWEST <= MOST <= 4 (a 49-frame clip "
                     "holds at most 4 scenes of 12 frames); default 1 4")
    if not 0.0 <= args.df_zero_step_prob <= 1.0:
        parser.error(f"--df-zero-step-prob {args.df_zero_step_prob}: a probability, between 0 and 1 (default "
                     f"{DF_ZERO_STEP_PROB})")
    if args.vae_continue:
        if not first <= STAGES.index("vae") <= last:
            parser.error("--vae-continue takes effect in the vae stage; start at --stage vae or earlier, or leave it out")
        if args.vae_from:
            parser.error("--vae-continue (a finished VAE) and --vae-from (the vae stage's first part) exclude each "
                         "other: give one")
        if not (Path(args.vae_continue) / "config.json").is_file():
            parser.error(f"--vae-continue {args.vae_continue}: no VAE there (expected a folder with config.json, "
                         "e.g. a toy model's vae folder)")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)

    def runs(stage: str) -> bool:
        return first <= STAGES.index(stage) <= last

    t_all = time.time()
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    # 1-2. tokenizer and text encoder
    if runs("text"):
        tokenizer = make_tokenizer()
        tokenizer.save_pretrained(work / "tokenizer")
        encoder, accuracy = pretrain_text_encoder(make_text_encoder(len(tokenizer), args.seed), tokenizer,
                                                  seed=args.seed)
        encoder.save_pretrained(work / "text_encoder", safe_serialization=True)
        log(f"tokenizer ({len(tokenizer)} words) and text encoder written (every token tells every attribute: "
            f"{accuracy:.1%} of tokens right)")

    # 3. VAE
    if runs("vae"):
        t0 = time.time()
        if args.vae_continue:  # finished: its latent space is the one a previous transformer learned
            vae = AutoencoderKLWan.from_pretrained(args.vae_continue).eval()
            log(f"VAE continued from {args.vae_continue}")
        elif args.vae_from:  # a VAE trained by this stage before (same seed and steps): skip the slowest part
            vae = AutoencoderKLWan.from_pretrained(args.vae_from).eval()
            log(f"VAE taken from {args.vae_from}")
        else:
            vae = train_vae(make_vae(args.seed), steps_image=args.vae_image_steps, steps_clip=args.vae_clip_steps,
                            seed=args.seed)
            vae.save_pretrained(work / "vae_trained", safe_serialization=True)
        if not args.vae_continue:
            if list(vae.config.dim_mult) != WAN_DIM_MULT:
                vae = train_vae(grow_to_wan_layout(vae), steps_image=args.vae_decoder_steps, steps_clip=0,
                                seed=args.seed + 3, decoder_only=True)
            vae = widen_latent_channels(vae, LATENT_CHANNELS)
            stories = make_dataset(16, args.seed + 1)
            z = vae_latents(vae, np.stack([tw.render_story(s) for s in stories]))
            mean = z.mean(dim=(0, 2, 3, 4)).tolist()
            std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3).tolist()
            adopt_latent_statistics(vae, mean, std, WAN_LATENTS_MEAN, WAN_LATENTS_STD)
            log(f"measured latents mean {np.round(mean, 2)} std {np.round(std, 2)}, mapped onto Wan2.1's")
            if args.vae_robust_steps:  # the latent space is final: only the decoder learns, the encoder's latents stay
                vae = train_vae(vae, steps_image=args.vae_robust_steps, steps_clip=0, seed=args.seed + 4,
                                decoder_only=True, latent_noise=args.vae_latent_noise)
        if args.vae_motion_steps:
            vae = train_vae(vae, steps_image=0, steps_clip=args.vae_motion_steps, seed=args.seed + 5,
                            decoder_only=True, latent_noise=args.vae_latent_noise, clip_frames=9)
        vae.save_pretrained(work / "vae", safe_serialization=True)
        log(f"VAE ready in {time.time() - t0:.0f} s")
    if last <= STAGES.index("vae"):
        return 0
    tokenizer = AutoTokenizer.from_pretrained(str(work / "tokenizer"))
    encoder = UMT5EncoderModel.from_pretrained(str(work / "text_encoder")).eval()
    vae = AutoencoderKLWan.from_pretrained(str(work / "vae")).eval()

    # 4. dataset, manifest, latent cache, and the base folder training starts from
    if runs("data"):
        t0 = time.time()
        stories = make_dataset(args.clips, args.seed + 2, tuple(args.clip_scenes))
        write_manifest(stories, work / "manifest.jsonl", args.seed + 2)
        write_cache(stories, work / "cache", vae, encoder, tokenizer)
        start_from = (transformer_from_previous(Path(args.transformer_from), encoder, tokenizer, args.seed)
                      if args.transformer_from else make_transformer(args.seed))
        if args.grow:
            start_from = grow_transformer(start_from, args.grow, args.seed)
        save_folder(work / "base", transformer=start_from, vae=vae, text_encoder=encoder, tokenizer=tokenizer)
        log(f"dataset of {len(stories)} clips cached in {time.time() - t0:.0f} s")

    # 5. fine-tuning with training/finetune.py
    if runs("train"):
        t0 = time.time()
        if (work / "train").exists():
            shutil.rmtree(work / "train")
        train_seed = args.seed if args.train_seed is None else args.train_seed
        run_finetune(train_config(work, args.train_steps, train_seed, learning_rate=args.learning_rate,
                                  df_zero_step_prob=args.df_zero_step_prob), args.threads)
        log(f"transformer trained in {time.time() - t0:.0f} s")

    if last < STAGES.index("assemble"):
        return 0
    # 6. the bundled folder
    transformer = load_exported_transformer(work / "train" / "framecap_transformer.safetensors", work / "base")
    build = {"seed": args.seed, "clips": args.clips, "vae_image_steps": args.vae_image_steps,
             "vae_clip_steps": args.vae_clip_steps, "vae_decoder_steps": args.vae_decoder_steps,
             "vae_robust_steps": args.vae_robust_steps, "vae_latent_noise": args.vae_latent_noise,
             "vae_motion_steps": args.vae_motion_steps, "vae_start": "previous toy model" if args.vae_continue else "random",
             "phases": training_phases(Path(args.transformer_from) if args.transformer_from else None,
                                       args.train_steps, args.learning_rate, args.clips, args.grow,
                                       args.seed if args.train_seed is None else args.train_seed,
                                       args.df_zero_step_prob, tuple(args.clip_scenes))}
    save_folder(out, transformer=transformer, vae=vae, text_encoder=encoder, tokenizer=tokenizer, build=build)
    log(f"toy model written to {out} ({folder_size(out) / 1e6:.1f} MB) in {time.time() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
