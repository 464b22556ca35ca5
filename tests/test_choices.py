"""One table of methods, fusions, solvers and dtypes: argparse, node widgets, validation and the samplers read it."""

from pathlib import Path

import pytest

from framecap_core import choices, sampling, windows
from framecap_core.cli import build_parser
from framecap_core.errors import ConfigError
from framecap_core.pipeline import GenerationSettings


def _generate_actions():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["generate"]
    return {a.dest: a for a in sub._actions}


def test_cli_choices_are_the_table():
    actions = _generate_actions()
    assert tuple(actions["method"].choices) == tuple(choices.METHODS)
    assert tuple(actions["fusion"].choices) == tuple(choices.FUSIONS)
    assert tuple(actions["solver"].choices) == tuple(choices.SOLVERS)
    assert tuple(actions["dtype"].choices) == tuple(choices.DTYPES)
    assert tuple(actions["offload"].choices) == tuple(choices.OFFLOAD)
    assert tuple(actions["text_encoder_device"].choices) == tuple(choices.TEXT_ENCODER_DEVICES)
    assert tuple(actions["weight_dtype"].choices) == tuple(choices.WEIGHT_DTYPES)
    assert tuple(actions["vae_dtype"].choices) == tuple(choices.VAE_DTYPES)


def test_node_widgets_are_the_table():
    from comfy_executor import load_pack

    nodes = load_pack(Path(__file__).resolve().parents[1]).NODE_CLASS_MAPPINGS
    sampler = nodes["FrameCapPMWDSampler"].INPUT_TYPES()["required"]
    assert sampler["method"][0] == list(choices.METHODS)
    assert sampler["fusion"][0] == list(choices.FUSIONS)
    assert nodes["FrameCapDFScheduler"].INPUT_TYPES()["required"]["solver"][0] == list(choices.SOLVERS)
    loader = nodes["FrameCapWanLoader"].INPUT_TYPES()
    assert loader["required"]["dtype"][0] == list(choices.DTYPES)
    assert loader["optional"]["offload"][0] == list(choices.OFFLOAD)
    assert loader["optional"]["weight_dtype"][0] == list(choices.WEIGHT_DTYPES)
    assert loader["optional"]["text_encoder_device"][0] == list(choices.TEXT_ENCODER_DEVICES)


def test_every_method_has_a_sampler_and_validation_takes_exactly_the_table():
    assert set(sampling.SAMPLERS) == set(choices.METHODS)
    assert set(windows.FUSION_KINDS) == set(choices.FUSIONS)
    assert set(sampling.SOLVERS) == set(choices.SOLVERS) - {"auto"}
    for field, table in (("method", choices.METHODS), ("fusion", choices.FUSIONS), ("solver", choices.SOLVERS),
                         ("dtype", choices.DTYPES)):
        for name in table:
            GenerationSettings(**{field: name}).validate()
        with pytest.raises(ConfigError, match=", ".join(table)):
            GenerationSettings(**{field: "nonsense"}).validate()


def test_every_dtype_name_loads_and_a_wrong_one_lists_the_table():
    import torch

    from framecap_core.errors import ModelLoadError
    from framecap_core.models import resolve_dtype

    assert {name: resolve_dtype(name, "cpu") for name in choices.DTYPES} == {
        "auto": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    with pytest.raises(ModelLoadError, match="use one of bf16, fp16, fp32 or auto"):
        resolve_dtype("fp8", "cpu")
