"""Rebuild the bundled toy model ``framecap_core/toy_model`` from scratch (seeded, CPU, no downloads).

Stages (each a function below; ``--stage`` runs one and the ones after it reuse what is on disk):

1. ``tokenizer``: a word-level tokenizer over the toy vocabulary (``framecap_core.toyworld.TOY_WORDS``); words
   outside it are dropped by its normalizer, so any prose (the offline prompt builder's captions) tokenizes into toy
   words. Saved as ``tokenizer.json``, loadable offline by ``transformers.AutoTokenizer``.
2. ``text``: a small random ``UMT5EncoderModel`` (frozen, as Wan's is; distinct captions give distinct embeddings).
3. ``vae``: a small ``AutoencoderKLWan`` trained on toy frames. Its temporal convolutions start as "per frame" (only
   the causal tap on the current frame is non-zero, time downsampling keeps the newest frame, time upsampling
   repeats it), so it is trained fast on single frames (``--vae-clip-steps N`` adds N steps on 5-frame clips so the
   temporal taps learn motion; 0 by default, so motion advances in 4-frame steps). Its residual branches start at
   zero, which with a small step size (1e-4) takes it off the mean-colour plateau in a few hundred steps; the shape's
   pixels weigh more in the loss. Its ``latents_mean`` / ``latents_std`` are measured on the data.
4. ``data``: toy stories rendered into clips of 49 frames (13 latents), a manifest (JSON Lines, one clip per line)
   and the latent cache (``framecap_core.data.CacheWriter``: normalized latents and the clips' caption embeddings).
5. ``train``: ``training/finetune.py`` (Diffusion Forcing, frame-level captions) from a random transformer.
6. ``assemble``: the diffusers folder (``model_index.json``, transformer, vae, text_encoder, tokenizer, scheduler,
   ``framecap.json``), safetensors only.

Usage::

    python scripts/build_toy_model.py                      # everything, into framecap_core/toy_model
    python scripts/build_toy_model.py --work runs/toy --stage train --train-steps 500
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

STAGES = ("tokenizer", "text", "vae", "data", "train", "assemble")

# ---------------------------------------------------------------------------------------------------------- sizes

TEXT_LEN = 16  # tokens per caption: "a red circle moves left on a blue background" is 9 words + </s>
TEXT_DIM = 32
Z_DIM = 8
CLIP_FRAMES = 49  # 13 latents
WINDOW_LATENTS = 9  # training window: 33 frames
VAE_CONFIG = dict(
    base_dim=8, z_dim=Z_DIM, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0,
)
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=Z_DIM, out_channels=Z_DIM,
    text_dim=TEXT_DIM, freq_dim=64, ffn_dim=384, num_layers=4, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
TEXT_CONFIG = dict(
    d_model=TEXT_DIM, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
    relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
    dense_act_fn="gelu_new", is_gated_act=True, layer_norm_epsilon=1e-6, dropout_rate=0.0, scalable_attention=True,
    tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
GENERATION_DEFAULTS = {  # framecap.json "defaults": what `framecap generate --model toy` uses unless overridden
    "width": 64, "height": 64, "window": 4 * (WINDOW_LATENTS - 1) + 1, "overlap": 16, "steps": 16,
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
    """``n`` toy clips of ``frames`` frames (random crops of stories, scene cuts included): ``[n, T, 64, 64, 3]``."""
    out = []
    for _ in range(n):
        story = tw.random_story(rng, num_frames=25, num_scenes=(1, 2), min_scene_frames=8)
        video = tw.render_story(story)
        start = int(rng.integers(0, len(video) - frames + 1))
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


def _encode_decode_frames(vae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and unclamped reconstruction of single frames ``x [B, 3, 1, H, W]``: the encoder and decoder
    without their time caches, which for one frame is exactly ``encode`` / ``decode`` (zero padding in time meets
    every causal tap but the current one) with none of the per-chunk bookkeeping."""
    mu = vae.quant_conv(vae.encoder(x))[:, : vae.config.z_dim]
    return mu, vae.decoder(vae.post_quant_conv(mu), first_chunk=True)


def foreground_mask(x: torch.Tensor) -> torch.Tensor:
    """``x [B, 3, T, H, W]`` -> ``[B, 1, T, H, W]``, 1 where a pixel differs from its frame's corner pixel (toy frames
    are a flat background with one shape away from the corners)."""
    return (x - x[..., :1, :1]).abs().amax(dim=1, keepdim=True).gt(1e-3).float()


def train_vae(vae, *, steps_image: int, steps_clip: int, seed: int = 0, lr: float = 1e-4, batch: int = 8,
              pool: int = 1024, latent_weight: float = 1e-4, foreground_weight: float = 4.0):
    """Reconstruction of the posterior mean, first on single frames, then on 5-frame clips.

    The loss is a pixel MSE in which the shape's pixels weigh ``1 + foreground_weight``: a shape covers a few percent
    of a frame, and an unweighted MSE is content for a long time with a blurred one. Why these settings: the Wan
    VAE's channel-wise RMS norms make it sensitive to the step size — with zero-initialized residual branches
    (``make_vae``) a constant 1e-4 leaves the mean-colour plateau in ~400 steps, while 2e-4 takes ~1000 and 5e-4
    or more stay on it. Frames come from a fixed pool drawn once (rendering is slower than a step of this model)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr, betas=(0.9, 0.99))
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
            mu, rec = _encode_decode_frames(vae, x)
        else:
            x = _to_input(_random_clips(rng, 4, 5))
            mu = vae.encode(x).latent_dist.mode()
            rec = decode_unclamped(vae, mu)
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
def vae_latents(vae, clips: np.ndarray, batch: int = 8) -> torch.Tensor:
    """Raw latent means of ``clips [B, T, H, W, 3]`` uint8: ``[B, C, L, h, w]``."""
    out = []
    for i in range(0, len(clips), batch):
        out.append(vae.encode(_to_input(clips[i:i + batch])).latent_dist.mode())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------- data


def make_dataset(num_clips: int, seed: int) -> list[tw.ToyStory]:
    rng = np.random.default_rng(seed)
    return [tw.random_story(rng, num_frames=CLIP_FRAMES, num_scenes=(1, 4)) for _ in range(num_clips)]


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


def write_cache(stories, cache_dir: Path, vae, encoder, tokenizer, *, global_captions: bool = False) -> None:
    """Latent cache of ``stories`` with frame-level captions (or, ``global_captions``, the whole story as one caption
    for every latent: the video-level baseline)."""
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
                timeline: Timeline = story.timeline()
                if global_captions:
                    unique, index = [tw.story_text(story)], [0] * timeline.num_latents
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


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------------------- main


def train_config(work: Path, steps: int, seed: int, *, cache: str = "cache", out: str = "train",
                 text_len: int = TEXT_LEN, **extra) -> Path:
    config = {
        "base_model": str(work / "base"), "cache_dir": str(work / cache), "output_dir": str(work / out),
        "height": 64, "width": 64, "text_len": text_len, "window_latents": WINDOW_LATENTS, "max_steps": steps,
        "batch_size": 16, "learning_rate": 1e-3, "lr_schedule": "cosine", "lr_warmup_steps": 100,
        "weight_decay": 0.01, "max_grad_norm": 1.0, "seed": seed, "df_step_size_range": [0.0, 0.1],
        "df_zero_step_prob": 0.3, "df_shift": 3.0, "caption_dropout": 0.1, "checkpoint_every": max(steps // 2, 1), "keep_checkpoints": 1,
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


def load_exported_transformer(export: Path):
    from safetensors.torch import load_file

    model = make_transformer()
    state = load_file(str(export))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"exported transformer does not match the toy config: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return model.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "framecap_core" / "toy_model"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "toy_build"))
    parser.add_argument("--stage", choices=STAGES, default="tokenizer", help="start at this stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--vae-image-steps", type=int, default=3000)
    parser.add_argument("--vae-clip-steps", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    start = STAGES.index(args.stage)
    t_all = time.time()
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    # 1-2. tokenizer and text encoder
    if start <= STAGES.index("text"):
        tokenizer = make_tokenizer()
        tokenizer.save_pretrained(work / "tokenizer")
        make_text_encoder(len(tokenizer), args.seed).save_pretrained(work / "text_encoder", safe_serialization=True)
        log(f"tokenizer ({len(tokenizer)} words) and text encoder written")
    tokenizer = AutoTokenizer.from_pretrained(str(work / "tokenizer"))
    encoder = UMT5EncoderModel.from_pretrained(str(work / "text_encoder")).eval()

    # 3. VAE
    if start <= STAGES.index("vae"):
        t0 = time.time()
        vae = train_vae(make_vae(args.seed), steps_image=args.vae_image_steps, steps_clip=args.vae_clip_steps,
                        seed=args.seed)
        stories = make_dataset(16, args.seed + 1)
        z = vae_latents(vae, np.stack([tw.render_story(s) for s in stories]))
        mean = z.mean(dim=(0, 2, 3, 4)).tolist()
        std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3).tolist()
        vae.register_to_config(latents_mean=[round(m, 5) for m in mean], latents_std=[round(s, 5) for s in std])
        vae.save_pretrained(work / "vae", safe_serialization=True)
        log(f"VAE trained in {time.time() - t0:.0f} s; latents mean {np.round(mean, 2)} std {np.round(std, 2)}")
    vae = AutoencoderKLWan.from_pretrained(str(work / "vae")).eval()

    # 4. dataset, manifest, latent cache, and the base folder training starts from
    if start <= STAGES.index("data"):
        t0 = time.time()
        stories = make_dataset(args.clips, args.seed + 2)
        write_manifest(stories, work / "manifest.jsonl", args.seed + 2)
        write_cache(stories, work / "cache", vae, encoder, tokenizer)
        save_folder(work / "base", transformer=make_transformer(args.seed), vae=vae, text_encoder=encoder,
                    tokenizer=tokenizer)
        log(f"dataset of {len(stories)} clips cached in {time.time() - t0:.0f} s")

    # 5. fine-tuning with training/finetune.py
    if start <= STAGES.index("train"):
        t0 = time.time()
        if (work / "train").exists():
            shutil.rmtree(work / "train")
        run_finetune(train_config(work, args.train_steps, args.seed), args.threads)
        log(f"transformer trained in {time.time() - t0:.0f} s")

    # 6. the bundled folder
    transformer = load_exported_transformer(work / "train" / "framecap_transformer.safetensors")
    build = {"seed": args.seed, "clips": args.clips, "vae_image_steps": args.vae_image_steps,
             "vae_clip_steps": args.vae_clip_steps, "train_steps": args.train_steps}
    save_folder(out, transformer=transformer, vae=vae, text_encoder=encoder, tokenizer=tokenizer, build=build)
    log(f"toy model written to {out} ({folder_size(out) / 1e6:.1f} MB) in {time.time() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
