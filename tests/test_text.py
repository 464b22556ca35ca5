"""Caption encoding: equivalence with diffusers' WanPipeline, zero padding, the cache, timeline / window context."""

from __future__ import annotations

import pytest
import torch

from framecap_core import models, testing, text
from framecap_core.attention import install_frame_level_attention
from framecap_core.backend import WanDenoiser
from framecap_core.errors import ConfigError
from framecap_core.timeline import Scene, Timeline

pytest.importorskip("diffusers")
from diffusers import WanPipeline  # noqa: E402

TEXT_LEN = 24


@pytest.fixture(scope="module")
def tiny_wan():
    return testing.make_tiny_wan(seed=0)


@pytest.fixture
def counted(tiny_wan):
    """The tiny encoder with a forward counter (number of captions that went through it)."""
    text.clear_caption_cache()
    calls = []
    handle = tiny_wan.text_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    yield tiny_wan, calls
    handle.remove()
    text.clear_caption_cache()


CAPTIONS = [
    "a red cat runs over the bridge",
    "  the   dog &amp;amp; the bird\n fly ",  # whitespace and double HTML escaping are cleaned as Wan does
    "",
    "a " * 40,  # longer than TEXT_LEN: truncated
    "zebra quokka",  # unknown words
]


def test_encode_captions_matches_wan_pipeline(tiny_wan):
    pipe = WanPipeline(tokenizer=tiny_wan.tokenizer, text_encoder=tiny_wan.text_encoder, vae=tiny_wan.vae,
                       scheduler=tiny_wan.scheduler, transformer=tiny_wan.transformer)
    with torch.no_grad():
        ref = pipe._get_t5_prompt_embeds(prompt=CAPTIONS, max_sequence_length=TEXT_LEN, device=torch.device("cpu"),
                                         dtype=torch.float32)
    got = text.encode_captions(tiny_wan.text_encoder, tiny_wan.tokenizer, CAPTIONS, text_len=TEXT_LEN)
    assert got.shape == (len(CAPTIONS), TEXT_LEN, testing.TINY_TEXT_DIM)
    assert torch.equal(got, ref)
    # one at a time gives the same embeddings (padding to text_len makes batching irrelevant)
    single = torch.cat([text.encode_captions(tiny_wan.text_encoder, tiny_wan.tokenizer, [c], text_len=TEXT_LEN)
                        for c in CAPTIONS])
    assert torch.equal(single, ref)


def test_positions_past_the_caption_are_zero(tiny_wan):
    caption = "a red cat"
    n = len(tiny_wan.tokenizer(caption).input_ids)  # tokens + </s>
    emb = text.encode_captions(tiny_wan.text_encoder, tiny_wan.tokenizer, [caption], text_len=TEXT_LEN)[0]
    assert (emb[n:] == 0).all()
    assert (emb[:n].abs().sum(dim=-1) > 0).all()


def test_dtype_and_device_of_result(tiny_wan):
    emb = text.encode_captions(tiny_wan.text_encoder, tiny_wan.tokenizer, ["a cat"], text_len=8, dtype=torch.bfloat16)
    assert emb.dtype == torch.bfloat16 and emb.device.type == "cpu"
    empty = text.encode_captions(tiny_wan.text_encoder, tiny_wan.tokenizer, [], text_len=8)
    assert empty.shape == (0, 8, testing.TINY_TEXT_DIM)


def test_cache_encodes_each_caption_once(counted):
    wan, calls = counted
    enc = text.CaptionEncoder(wan.text_encoder, wan.tokenizer, text_len=TEXT_LEN)
    first = enc(["a cat", "a dog", "a cat"])
    assert enc.encoded == 2 and sum(calls) == 2
    again = enc(["a dog", "a cat"])
    assert enc.encoded == 2 and sum(calls) == 2  # nothing encoded
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])
    # a new CaptionEncoder over the same encoder shares the cache (a re-run of the same timeline)
    rerun = text.CaptionEncoder(wan.text_encoder, wan.tokenizer, text_len=TEXT_LEN)
    rerun(["a cat", "a dog"])
    assert rerun.encoded == 0 and sum(calls) == 2
    # another text_len is another key
    other = text.CaptionEncoder(wan.text_encoder, wan.tokenizer, text_len=TEXT_LEN + 8)
    other(["a cat"])
    assert other.encoded == 1 and sum(calls) == 3
    # another encoder id is another key
    renamed = text.CaptionEncoder(wan.text_encoder, wan.tokenizer, text_len=TEXT_LEN, encoder_id="weights-v2")
    renamed(["a cat"])
    assert renamed.encoded == 1


def test_cache_is_bounded(counted):
    wan, _ = counted
    enc = text.CaptionEncoder(wan.text_encoder, wan.tokenizer, text_len=8, max_cache_entries=3)
    enc([f"caption {i}" for i in range(5)])
    enc(["caption 4"])
    assert enc.encoded == 5
    enc(["caption 0"])  # evicted, encoded again
    assert enc.encoded == 6


def _timeline() -> Timeline:
    # 33 frames -> 9 latents; the "a cat" caption comes back in the third scene
    scenes = [Scene(0, 12, "a cat"), Scene(12, 24, "a dog"), Scene(24, 33, "a cat")]
    return Timeline(scenes, num_frames=33, negative="low quality")


def _denoiser(ctx, text_len: int) -> WanDenoiser:
    """The denoiser the pipeline builds from a timeline context (frame-level attention of ``text_len`` tokens)."""
    transformer = testing.make_tiny_transformer(0)
    install_frame_level_attention(transformer, text_len=text_len)
    return WanDenoiser(transformer, ctx.unique_embeds, ctx.latent_indices, ctx.negative_embeds)


def test_timeline_context_gives_each_window_its_captions(counted):
    wan, calls = counted
    enc = text.CaptionEncoder(wan.text_encoder, wan.tokenizer, text_len=TEXT_LEN)
    timeline = _timeline()
    ctx = text.timeline_context(enc, timeline)
    assert ctx.unique_captions == ["a cat", "a dog"]
    assert ctx.unique_embeds.shape == (2, TEXT_LEN, testing.TINY_TEXT_DIM)
    assert ctx.negative_embeds.shape == (1, TEXT_LEN, testing.TINY_TEXT_DIM)
    assert ctx.latent_indices.tolist() == timeline.latent_unique_indices()
    assert sum(calls) == 3  # 2 unique captions + the negative, each once
    direct = text.encode_captions(wan.text_encoder, wan.tokenizer, ["a cat", "a dog", "low quality"], text_len=TEXT_LEN)
    assert torch.equal(ctx.unique_embeds, direct[:2]) and torch.equal(ctx.negative_embeds[0], direct[2])

    denoiser = _denoiser(ctx, TEXT_LEN)
    frames = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])
    window = denoiser.context(frames)
    assert window.shape == (2, 4 * TEXT_LEN, testing.TINY_TEXT_DIM)
    for k in range(2):
        for f in range(4):
            caption = timeline.latent_captions()[int(frames[k, f])]
            expected = direct[["a cat", "a dog"].index(caption)]
            assert torch.equal(window[k, f * TEXT_LEN : (f + 1) * TEXT_LEN], expected)
    negative = denoiser.uncond_context(*frames.shape)
    assert negative.shape == window.shape
    assert torch.equal(negative[1, 3 * TEXT_LEN :], direct[2])

    before = sum(calls)
    text.timeline_context(enc, timeline)  # re-run: nothing encoded
    assert sum(calls) == before and enc.encoded == 3


def test_window_context_outside_the_video_is_refused(counted):
    wan, _ = counted
    ctx = text.timeline_context(text.CaptionEncoder(wan.text_encoder, wan.tokenizer, text_len=8), _timeline())
    denoiser = _denoiser(ctx, 8)
    with pytest.raises(ConfigError, match=r"outside the video's 9 latents"):
        denoiser.context(torch.tensor([[7, 8, 9]]))
    assert denoiser.context(torch.tensor([[0, 1]])).shape == (1, 16, testing.TINY_TEXT_DIM)


def test_caption_encoder_from_loaded_model(tiny_wan, tmp_path):
    text.clear_caption_cache()
    written = testing.save_tiny_wan(tmp_path, formats=("diffusers",), components=tiny_wan, text_len=TEXT_LEN)
    model = models.load_wan(written["diffusers"], dtype="fp32", frame_level=False)
    enc = text.CaptionEncoder.from_model(model)
    assert enc.text_len == TEXT_LEN and enc.encoder_id == model.text_encoder_id
    emb = enc(["a red cat runs over the bridge"])
    ref = text.encode_captions(tiny_wan.text_encoder, tiny_wan.tokenizer, ["a red cat runs over the bridge"],
                               text_len=TEXT_LEN)
    assert torch.equal(emb, ref)
    assert torch.equal(text.encode_captions(model, None, ["a cat"], text_len=8),
                       text.encode_captions(tiny_wan.text_encoder, tiny_wan.tokenizer, ["a cat"], text_len=8))
    loaded = text.load_caption_encoder(written["diffusers"], dtype="fp32")
    assert loaded.text_len == TEXT_LEN
    assert torch.equal(loaded(["a red cat runs over the bridge"]), ref)


def test_missing_text_encoder_is_explained(tiny_wan):
    class NoText:
        text_encoder = None
        tokenizer = None

    with pytest.raises(ConfigError, match="text encoder"):
        text.encode_captions(NoText(), None, ["a cat"])
