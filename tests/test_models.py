"""Loading Wan from every supported format, on tiny random models written by ``framecap_core.testing``.

Each format is written from one set of known weights, loaded back through ``load_wan`` / the component loaders,
and compared with the originals: exactly for fp32 and for fp16 / bf16 files against the same weights rounded to that
dtype, and within the float8 rounding bound for the fp8-scaled text encoder. Fine-tuned checkpoints (both key
styles) and LoRA (peft, diffusers-prefixed, kohya) are checked against the fine-tuned / peft models themselves.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from framecap_core import convert, models, testing
from framecap_core.attention import is_frame_level
from framecap_core.errors import ModelLoadError

pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_wan_transformer_to_diffusers,
    convert_wan_vae_to_diffusers,
)

TEXT_LEN = 16


@pytest.fixture(scope="module")
def tiny_wan():
    return testing.make_tiny_wan(seed=0)


@pytest.fixture(scope="module")
def written(tiny_wan, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_wan")
    return testing.save_tiny_wan(root, formats=("diffusers", "comfy"), components=tiny_wan, text_len=TEXT_LEN)


def _inputs(seed: int = 0, text_len: int = TEXT_LEN):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 4, 4, generator=g)
    ctx = torch.randn(1, text_len, testing.TINY_TEXT_DIM, generator=g)
    return x, torch.tensor([437.0]), ctx


@torch.no_grad()
def _out(transformer, seed: int = 0):
    x, t, ctx = _inputs(seed)
    return transformer(x, t, ctx, return_dict=False)[0]


def _rounded(module, dtype):
    """A copy of ``module`` whose weights went through ``dtype`` and back to fp32 (what a fp16/bf16 file holds)."""
    rounded = copy.deepcopy(module)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(dtype).float())
    return rounded


def _load_single(written, key, **kwargs):
    kwargs.setdefault("frame_level", False)
    return models.load_wan(
        None,
        transformer_file=written[key],
        vae_file=written["vae"],
        text_encoder_file=written["umt5_fp16"],
        config_dir=written["diffusers"],
        dtype="fp32",
        device="cpu",
        **kwargs,
    )


# ------------------------------------------------------------------------------------------- key conversions


def test_transformer_key_inverse_matches_diffusers_converter(tiny_wan):
    state = tiny_wan.transformer.state_dict()
    for prefix in ("", "model.diffusion_model."):
        original = convert.transformer_to_original_keys(state, prefix=prefix)
        assert any(".self_attn." in k for k in original) and not any(".attn1." in k for k in original)
        back = convert_wan_transformer_to_diffusers(dict(original))
        assert set(back) == set(state)
        assert all(back[k] is state[k] for k in state)


def test_vae_key_inverse_matches_diffusers_converter(tiny_wan):
    state = tiny_wan.vae.state_dict()
    original = convert.vae_to_original_keys(state)
    assert "decoder.middle.0.residual.0.gamma" in original and "decoder.upsamples.4.shortcut.weight" in original
    back = convert_wan_vae_to_diffusers(dict(original))
    assert set(back) == set(state)
    assert all(back[k] is state[k] for k in state)


def test_tiny_models_are_deterministic_by_seed():
    a, b, c = (testing.make_tiny_transformer(seed=s) for s in (3, 3, 4))
    assert torch.equal(_out(a), _out(b))
    assert not torch.allclose(_out(a), _out(c))
    assert testing.tiny_spiece_model() == testing.tiny_spiece_model()


# ------------------------------------------------------------------------------------------- diffusers folder


def test_diffusers_folder_round_trip(tiny_wan, written):
    folder = written["diffusers"]
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "WanPipeline"
    model = models.load_wan(folder, dtype="fp32", device="cpu", frame_level=False)
    assert torch.equal(_out(model.transformer), _out(tiny_wan.transformer))
    assert model.text_len == TEXT_LEN  # from framecap.json
    assert model.latents_mean.shape == (16,) and model.latents_std.shape == (16,)
    assert torch.allclose(model.latents_mean, torch.tensor(testing.WAN_LATENTS_MEAN))
    assert model.vae_scale == 8 and model.vae_scale_temporal == 4 and model.patch_size == (1, 2, 2)
    assert model.scheduler_config["_class_name"] == "UniPCMultistepScheduler"
    z = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.vae.decode(z).sample, tiny_wan.vae.decode(z).sample)
    ids = tiny_wan.tokenizer(["a red cat runs over the bridge"], return_tensors="pt").input_ids
    assert model.tokenizer(["a red cat runs over the bridge"], return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(model.text_encoder(ids).last_hidden_state, tiny_wan.text_encoder(ids).last_hidden_state)


def test_frame_level_attention_installed_with_text_len(written):
    model = models.load_wan(written["diffusers"], dtype="fp32", device="cpu")
    assert model.frame_level and is_frame_level(model.transformer)
    override = models.load_wan(written["diffusers"], dtype="fp32", device="cpu", text_len=8, frame_level=True)
    assert override.text_len == 8


def test_model_id_changes_with_weights_and_settings(written):
    a = models.load_wan(written["diffusers"], dtype="fp32", frame_level=False)
    b = models.load_wan(written["diffusers"], dtype="fp32", frame_level=False)
    c = models.load_wan(written["diffusers"], dtype="bf16", frame_level=False)
    assert a.id == b.id and a.text_encoder_id == b.text_encoder_id
    assert a.id != c.id and a.text_encoder_id != c.text_encoder_id


# ----------------------------------------------------------------------------------------------- single files


@pytest.mark.parametrize(
    "key, dtype",
    [("transformer_fp16", torch.float16), ("transformer_bf16", torch.bfloat16), ("transformer_noprefix", torch.float16)],
)
def test_single_file_transformer(tiny_wan, written, key, dtype):
    model = _load_single(written, key)
    reference = _rounded(tiny_wan.transformer, dtype)
    loaded = model.transformer.state_dict()
    for name, value in reference.state_dict().items():
        assert torch.equal(loaded[name], value), name
    assert torch.equal(_out(model.transformer), _out(reference))


def test_single_files_load_as_diffusers_from_single_file_does(written):
    """Our loader and diffusers' own single-file loader (offline, local config) give the same weights."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    ours = models.load_transformer(written["transformer_fp16"], config=written["diffusers"], dtype="fp32")
    stock = WanTransformer3DModel.from_single_file(
        str(written["transformer_fp16"]), config=str(written["diffusers"]), subfolder="transformer",
        torch_dtype=torch.float32,
    )
    assert ours.state_dict().keys() == stock.state_dict().keys()
    assert all(torch.equal(v, stock.state_dict()[k]) for k, v in ours.state_dict().items())
    vae = models.load_vae(written["vae"], config=written["diffusers"])
    stock_vae = AutoencoderKLWan.from_single_file(str(written["vae"]), config=str(written["diffusers"]), subfolder="vae")
    assert all(torch.equal(v, stock_vae.state_dict()[k]) for k, v in vae.state_dict().items())


def test_single_file_transformer_in_bf16_keeps_fp32_modules(written):
    transformer = models.load_transformer(written["transformer_fp16"], config=written["diffusers"], dtype="bf16")
    assert transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert transformer.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert transformer.scale_shift_table.dtype == torch.float32
    assert transformer.rope.freqs_cos.dtype == torch.float32
    assert torch.isfinite(_out(transformer.float())).all()


def test_single_file_vae(tiny_wan, written):
    vae = models.load_vae(written["vae"], config=written["diffusers"])
    reference = tiny_wan.vae.state_dict()
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in reference.items())
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(vae.encode(video).latent_dist.mode(), tiny_wan.vae.encode(video).latent_dist.mode())


def test_umt5_fp16_with_embedded_tokenizer(tiny_wan, written):
    encoder, tokenizer = models.load_text_encoder(written["umt5_fp16"], config=written["diffusers"], dtype="fp32")
    captions = ["a red cat runs over the bridge", "zebra xylophone", ""]
    ref = tiny_wan.tokenizer(captions, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    got = tokenizer(captions, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    assert got.input_ids.tolist() == ref.input_ids.tolist()
    rounded = _rounded(tiny_wan.text_encoder, torch.float16)
    with torch.no_grad():
        assert torch.equal(
            encoder(ref.input_ids, ref.attention_mask).last_hidden_state,
            rounded(ref.input_ids, ref.attention_mask).last_hidden_state,
        )


def test_umt5_fp8_scaled_within_quantization_tolerance(tiny_wan, written):
    from safetensors import safe_open

    with safe_open(str(written["umt5_fp8_scaled"]), framework="pt") as f:
        assert "scaled_fp8" in f.keys() and "spiece_model" in f.keys()
        q_key = "encoder.block.0.layer.0.SelfAttention.q.weight"
        assert f.get_tensor(q_key).dtype == torch.float8_e4m3fn
        assert f.get_tensor(q_key[: -len("weight")] + "scale_weight").numel() == 1
    encoder, _ = models.load_text_encoder(written["umt5_fp8_scaled"], config=written["diffusers"], dtype="fp32")
    original = tiny_wan.text_encoder.state_dict()
    changed = 0
    for name, value in encoder.state_dict().items():
        ref = original[name]
        if testing._is_quantizable_t5_weight(name):
            _assert_within_fp8(value, ref, name)
            changed += int(not torch.equal(value, ref))
        else:
            assert torch.equal(value, ref.half().float()), name
    assert changed > 0  # the weights really went through float8
    ids = tiny_wan.tokenizer(["a red cat runs over the bridge"], return_tensors="pt").input_ids
    with torch.no_grad():
        a = tiny_wan.text_encoder(ids).last_hidden_state
        b = encoder(ids).last_hidden_state
    assert (a - b).abs().max() < 0.15 * a.abs().max()


def _assert_within_fp8(value, ref, name):
    scale = ref.abs().max() / torch.finfo(torch.float8_e4m3fn).max
    # e4m3: 3 mantissa bits -> relative rounding error <= 2^-4 for normals, absolute <= 2^-10 * scale below
    bound = ref.abs() * 2**-4 + scale * 2**-9
    assert ((value - ref).abs() <= bound + 1e-7).all(), name


def test_transformer_fp8_scaled(tiny_wan, written):
    transformer = models.load_transformer(written["transformer_fp8_scaled"], config=written["diffusers"], dtype="fp32")
    original = tiny_wan.transformer.state_dict()
    quantized = 0
    for name, value in transformer.state_dict().items():
        original_name = next(iter(convert.transformer_to_original_keys({name: None})))
        if testing._is_quantizable_wan_weight(original_name):
            _assert_within_fp8(value, original[name], name)
            quantized += 1
        elif name in original:
            assert torch.equal(value, original[name].half().float()), name
    assert quantized == 2 * 8 + 2 * 2  # per block: q, k, v, o of both attentions + 2 FFN linears
    ref = _out(tiny_wan.transformer)
    assert (_out(transformer) - ref).abs().max() < 0.15 * ref.abs().max()


def test_folder_of_single_files_is_classified(written):
    found = models.list_model_files(written["transformer_fp16"].parent)
    assert {p.name for p in found["transformer"]} == {
        testing.SINGLE_FILE_NAMES[k]
        for k in ("transformer_fp16", "transformer_bf16", "transformer_noprefix", "transformer_fp8_scaled")
    }
    assert [p.name for p in found["vae"]] == [testing.SINGLE_FILE_NAMES["vae"]]
    assert len(found["text_encoder"]) == 2
    root = models.list_model_files(written["diffusers"].parent)
    assert root["diffusers"] == [written["diffusers"]]


def test_transformer_file_as_source_finds_its_neighbours(tiny_wan, written):
    model = models.load_wan(
        written["transformer_fp16"], text_encoder_file=written["umt5_fp16"], config_dir=written["diffusers"],
        dtype="fp32", frame_level=False,
    )
    assert str(written["vae"]) in model.source and model.name == "wan2.1_t2v_1.3B_fp16"
    assert model.text_len == models.DEFAULT_TEXT_LEN
    assert torch.equal(_out(model.transformer), _out(_rounded(tiny_wan.transformer, torch.float16)))


def test_comfyui_models_layout(tiny_wan, written, tmp_path):
    """models/diffusion_models/<transformer> finds models/vae and models/text_encoders by itself."""
    import shutil

    layout = {"diffusion_models": "transformer_bf16", "vae": "vae", "text_encoders": "umt5_fp16"}
    for folder, key in layout.items():
        (tmp_path / folder).mkdir()
        shutil.copy(written[key], tmp_path / folder / written[key].name)
    transformer = tmp_path / "diffusion_models" / written["transformer_bf16"].name
    model = models.load_wan(transformer, config_dir=written["diffusers"], dtype="fp32", frame_level=False)
    assert str(tmp_path / "vae") in model.source and str(tmp_path / "text_encoders") in model.source
    assert torch.equal(_out(model.transformer), _out(_rounded(tiny_wan.transformer, torch.bfloat16)))
    # the models/ root itself: one file of each kind, found by their tensor names
    from_root = models.resolve_model_source(tmp_path, config_dir=written["diffusers"])
    assert from_root.transformer_file == transformer and from_root.vae_file.parent.name == "vae"


# ------------------------------------------------------------------------------------------ fine-tunes and LoRA


@pytest.fixture(scope="module")
def finetuned():
    return testing.make_tiny_transformer(seed=7)


@pytest.mark.parametrize("style", ["diffusers", "original"])
def test_full_checkpoint_on_top(written, finetuned, tmp_path, style):
    state = finetuned.state_dict()
    if style == "original":
        state = convert.transformer_to_original_keys(state, prefix="model.diffusion_model.")
    path = tmp_path / f"finetune_{style}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    base = models.load_wan(written["diffusers"], dtype="fp32", frame_level=False)
    model = models.load_wan(written["diffusers"], dtype="fp32", frame_level=False, checkpoint=path)
    assert torch.equal(_out(model.transformer), _out(finetuned))
    assert not torch.allclose(_out(base.transformer), _out(model.transformer))
    assert "full" in model.source and model.id != base.id


@pytest.fixture(scope="module")
def peft_transformer(tiny_wan):
    """The base transformer with a random rank-2 LoRA on the attention projections (unmerged, as peft runs it)."""
    from peft import LoraConfig

    model = copy.deepcopy(tiny_wan.transformer)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=True)
    model.add_adapter(config)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model, config


def _lora_state(model):
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def test_lora_peft_folder(written, peft_transformer, tmp_path):
    model, config = peft_transformer
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file(_lora_state(model), str(folder / "adapter_model.safetensors"))
    cfg = config.to_dict()
    cfg["target_modules"] = sorted(cfg["target_modules"])
    (folder / "adapter_config.json").write_text(json.dumps(cfg, default=str))
    loaded = models.load_wan(written["diffusers"], dtype="fp32", frame_level=False, lora=folder)
    torch.testing.assert_close(_out(loaded.transformer), _out(model), rtol=1e-5, atol=1e-5)
    off = models.load_wan(written["diffusers"], dtype="fp32", frame_level=False, lora=folder, lora_scale=0.0)
    base = models.load_wan(written["diffusers"], dtype="fp32", frame_level=False)
    assert torch.equal(_out(off.transformer), _out(base.transformer))


def test_lora_training_export_format(written, peft_transformer, tmp_path):
    """One file, keys ``transformer.<module>.lora_A.weight``, alpha in the ``lora_adapter_metadata`` header."""
    model, config = peft_transformer
    path = tmp_path / "lora.safetensors"
    state = {f"transformer.{k}": v for k, v in _lora_state(model).items()}
    meta = {"lora_adapter_metadata": json.dumps({"r": 2, "lora_alpha": 4, "target_modules": ["to_q"]})}
    save_file(state, str(path), metadata=meta)
    assert models.detect_file_kind(path) == "lora"
    loaded = models.load_wan(written["diffusers"], dtype="fp32", frame_level=False, checkpoint=path)
    torch.testing.assert_close(_out(loaded.transformer), _out(model), rtol=1e-5, atol=1e-5)
    assert "lora" in loaded.source


@pytest.mark.parametrize("style", ["dotted", "underscored"])
def test_lora_kohya_original_names(written, peft_transformer, tmp_path, style):
    """``diffusion_model.blocks.0.self_attn.q.lora_down.weight`` or ``lora_unet_blocks_0_self_attn_q.lora_down.weight``
    (musubi-tuner's Wan LoRAs); ComfyUI's LoRA loader reads both."""
    model, _ = peft_transformer
    state = {}
    for key, value in _lora_state(model).items():
        module, kind = key.rsplit(".lora_", 1)
        original = next(iter(convert.transformer_to_original_keys({module + ".weight": None})))[: -len(".weight")]
        name = f"diffusion_model.{original}" if style == "dotted" else "lora_unet_" + original.replace(".", "_")
        state[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        state[f"{name}.alpha"] = torch.tensor(4.0)
    path = tmp_path / "kohya.safetensors"
    save_file(state, str(path))
    loaded = models.load_wan(written["diffusers"], dtype="fp32", frame_level=False, lora=path, lora_scale=1.0)
    torch.testing.assert_close(_out(loaded.transformer), _out(model), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- errors


def test_missing_source_and_folder_errors(tmp_path, written):
    with pytest.raises(ModelLoadError, match="not found"):
        models.load_wan(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="No model given"):
        models.load_wan(None)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    (broken / "transformer").mkdir()
    (broken / "transformer" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"transformer/diffusion_pytorch_model\.safetensors not found in .*save_pretrained"):
        models.load_wan(broken)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="neither a diffusers Wan folder"):
        models.load_wan(empty)


def test_pickle_refused(tmp_path, written):
    pickle = tmp_path / "wan.ckpt"
    pickle.write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle"):
        models.load_wan(None, transformer_file=pickle)
    with pytest.raises(ModelLoadError, match="pickle"):
        models.load_wan(pickle)
    folder = tmp_path / "bin_folder"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "transformer" / "config.json").write_text("{}")
    (folder / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="pickle weights"):
        models.load_wan(folder)


def test_shape_mismatch_names_the_key(written):
    # The tiny file against the shipped 1.3B config: the first tensor whose shape differs is named.
    with pytest.raises(ModelLoadError, match=r"tensor '.*' has shape .* expects .*file: 2 blocks, config: 30 blocks"):
        models.load_transformer(written["transformer_fp16"])


def test_wrong_kind_of_file(written, tmp_path):
    with pytest.raises(ModelLoadError, match="holds a vae model, not a Wan transformer"):
        models.load_wan(written["vae"])
    with pytest.raises(ModelLoadError, match="does not match the Wan2.1 transformer architecture"):
        models.load_transformer(written["umt5_fp16"], config=written["diffusers"])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        models.load_transformer(garbage, config=written["diffusers"])


def test_text_encoder_without_tokenizer(written, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(written["umt5_fp16"]))
    del state["spiece_model"]
    path = tmp_path / "umt5_no_tokenizer.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match="no embedded tokenizer.*--tokenizer"):
        models.load_text_encoder(path, config=written["diffusers"])
    encoder, tokenizer = models.load_text_encoder(
        path, config=written["diffusers"], tokenizer_path=written["diffusers"] / "tokenizer" / "spiece.model"
    )
    assert tokenizer("a cat").input_ids[-1] == 1


def test_ambiguous_folder_asks_to_choose(written):
    with pytest.raises(ModelLoadError, match="Several transformer files.*--transformer-file"):
        models.load_wan(written["transformer_fp16"].parent, config_dir=written["diffusers"])


def test_lora_for_another_model(written, tmp_path):
    path = tmp_path / "bad_lora.safetensors"
    save_file({"blocks.9.attn1.to_q.lora_A.weight": torch.zeros(2, 24),
               "blocks.9.attn1.to_q.lora_B.weight": torch.zeros(24, 2)}, str(path))
    with pytest.raises(ModelLoadError, match="does not exist in the Wan transformer"):
        models.load_wan(written["diffusers"], dtype="fp32", frame_level=False, lora=path)
    path2 = tmp_path / "bad_rank.safetensors"
    save_file({"blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 99),
               "blocks.0.attn1.to_q.lora_B.weight": torch.zeros(24, 2)}, str(path2))
    with pytest.raises(ModelLoadError, match="does not fit the layer weight"):
        models.load_wan(written["diffusers"], dtype="fp32", frame_level=False, lora=path2)


def test_checkpoint_shape_mismatch(written, tmp_path):
    other = testing.make_tiny_transformer(seed=1, ffn_dim=48)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ModelLoadError, match=r"ffn\.net\.0\.proj\.(weight|bias)"):
        models.load_wan(written["diffusers"], dtype="fp32", frame_level=False, checkpoint=path)


def test_toy_source_resolves_or_explains():
    if models.is_diffusers_folder(models.TOY_MODEL_DIR):
        assert models.resolve_model_source("toy").folder == models.TOY_MODEL_DIR
    else:
        with pytest.raises(ModelLoadError, match="toy model is missing"):
            models.resolve_model_source("toy")


def test_bad_dtype_and_device():
    with pytest.raises(ModelLoadError, match="Unknown dtype"):
        models.resolve_dtype("int3")
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    assert models.resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(ModelLoadError, match="Unknown device"):
        models.resolve_device("gpu9000")


def test_shipped_configs_are_wan21_t2v_1_3b():
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config

    cfg = WanTransformer3DModel.load_config(str(models.SHIPPED_CONFIG_DIR / "transformer"))
    assert (cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["num_layers"], cfg["ffn_dim"]) == (12, 128, 30, 8960)
    assert cfg["text_dim"] == 4096 and cfg["patch_size"] == [1, 2, 2]
    vae = AutoencoderKLWan.load_config(str(models.SHIPPED_CONFIG_DIR / "vae"))
    assert vae["z_dim"] == 16 and len(vae["latents_mean"]) == 16
    te = UMT5Config.from_pretrained(str(models.SHIPPED_CONFIG_DIR / "text_encoder"))
    assert (te.d_model, te.num_layers, te.vocab_size) == (4096, 24, 256384)
