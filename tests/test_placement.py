"""Placement: UMT5's tied embedding in every dtype, the same video under every placement, each part on its device
only for its phase, and fp8-stored transformer weights."""

from __future__ import annotations

import pytest
import torch

from framecap_core.memory import module_bytes
from framecap_core.models import load_text_encoder, load_wan
from framecap_core.pipeline import GenerationSettings, generate
from framecap_core.placement import Placement, StoredWeightLinear, weight_storage
from framecap_core.testing import make_tiny_text_encoder, save_tiny_wan, write_comfy_umt5
from framecap_core.text import clear_caption_cache
from framecap_core.timeline import parse_timeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("tiny"), formats=("diffusers",), text_len=8)["diffusers"]


@pytest.mark.parametrize("dtype", ["bf16", "fp32", "fp16"])
@pytest.mark.parametrize("fp8_scaled", [False, True])
def test_umt5_single_file_keeps_the_embedding_tied(tmp_path, dtype, fp8_scaled):
    encoder = make_tiny_text_encoder(seed=3)
    path = write_comfy_umt5(encoder, tmp_path / "umt5.safetensors", fp8_scaled=fp8_scaled)
    encoder.config.save_pretrained(tmp_path / "configs" / "text_encoder")
    loaded, _ = load_text_encoder(path, config=tmp_path / "configs", dtype=dtype, device="cpu")
    shared, embed = loaded.shared.weight, loaded.encoder.embed_tokens.weight
    assert shared is embed  # one Parameter, as transformers builds the model
    assert shared.untyped_storage().data_ptr() == embed.untyped_storage().data_ptr()
    # every parameter counted once: no second vocab x d_model copy anywhere
    unique = {id(p): p for p in loaded.parameters()}
    assert module_bytes(loaded) == sum(p.numel() * p.element_size() for p in unique.values())
    assert torch.equal(shared, encoder.shared.weight.half().to(shared.dtype))  # the file stores it in fp16


def run(model, timeline, **changes):
    settings = GenerationSettings(window=17, overlap=8, steps=2, width=32, height=32, seed=11, **changes)
    return generate(model, timeline, settings)


def test_every_placement_gives_the_same_video(tiny):
    timeline = parse_timeline("a red fox in snow | the fox jumps over a river | night falls", num_frames=49)
    results, models = {}, {}
    for name, kwargs in {
        "none": dict(offload="none"),
        "model": dict(offload="model"),
        "sequential": dict(offload="sequential"),
        "text encoder on cpu": dict(offload="model", text_encoder_device="cpu"),
    }.items():
        clear_caption_cache()  # every placement encodes its captions itself
        models[name] = load_wan(tiny, device="cpu", dtype="fp32", **kwargs)
        results[name] = run(models[name], timeline)
    reference = results["none"]
    for name, result in results.items():
        assert torch.equal(result.latents, reference.latents), name
        assert (result.frames == reference.frames).all(), name
    # each part went to its run device for its phase and back home, in phase order
    moves = models["model"].placement.moves
    assert [(part, what) for part, what, _ in moves] == [
        ("text_encoder", "run"), ("text_encoder", "rest"), ("transformer", "run"), ("transformer", "rest"),
        ("vae", "run"), ("vae", "rest")]
    assert models["none"].placement.home("transformer") == torch.device("cpu")
    assert models["sequential"].placement.block_moves > 0  # the blocks were streamed through the device
    assert all(not b._forward_pre_hooks for b in models["sequential"].transformer.blocks)  # and the hooks removed


def test_cached_captions_do_not_move_the_text_encoder(tiny):
    timeline = parse_timeline("a red fox in snow | the fox jumps over a river", num_frames=33)
    clear_caption_cache()
    model = load_wan(tiny, device="cpu", dtype="fp32")
    run(model, timeline)
    model.placement.moves.clear()
    run(model, timeline)
    assert "text_encoder" not in [part for part, _, _ in model.placement.moves]


def test_placement_homes_and_run_devices():
    gpu = Placement(torch.device("cuda"), "model", "cpu")
    assert gpu.run_device("text_encoder") == torch.device("cpu") and gpu.run_device("vae") == torch.device("cuda")
    assert gpu.home("transformer") == torch.device("cpu")
    assert Placement(torch.device("cuda"), "none").home("transformer") == torch.device("cuda")
    with pytest.raises(Exception, match="offload"):
        Placement(torch.device("cpu"), "everything")


def test_fp8_stored_weights_compute_close_to_full_precision(tiny):
    timeline = parse_timeline("a red fox in snow | the fox jumps over a river", num_frames=33)
    full = load_wan(tiny, device="cpu", dtype="fp32")
    fp8 = load_wan(tiny, device="cpu", dtype="fp32", weight_dtype="fp8_e4m3fn")
    linears = [m for b in fp8.transformer.blocks for m in b.modules() if isinstance(m, StoredWeightLinear)]
    assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    assert weight_storage(fp8.transformer) == "fp8_e4m3fn" and weight_storage(full.transformer) == "default"
    assert module_bytes(fp8.transformer) < module_bytes(full.transformer) and fp8.id != full.id
    # each stored weight is the full one rounded to fp8 (3 mantissa bits: within 1/16 relative)
    ref = dict(full.transformer.named_parameters())
    for name, param in fp8.transformer.named_parameters():
        if param.dtype == torch.float8_e4m3fn:
            torch.testing.assert_close(param.float(), ref[name], rtol=1 / 16, atol=2**-9)
    a, b = run(full, timeline).latents, run(fp8, timeline).latents
    assert not torch.equal(a, b)
    assert (a - b).norm() / a.norm() < 0.1
