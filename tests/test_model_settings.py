"""framecap.json: one schema, one reader (loader, CLI defaults, workflows and benchmarks)."""

import json

import pytest

from framecap_core.errors import ModelLoadError
from framecap_core.model_settings import read_model_settings
from framecap_core.models import TOY_MODEL_DIR


def test_generation_defaults_merge_top_level_options_and_the_defaults_object(tmp_path):
    (tmp_path / "framecap.json").write_text(json.dumps(
        {"text_len": 64, "fps": 24, "steps": 9, "defaults": {"steps": 12, "width": 64, "unknown": 1},
         "build": {"seed": 3}}))
    settings = read_model_settings(tmp_path)
    assert settings.text_len == 64
    assert settings.generation_defaults == {"fps": 24, "steps": 12, "width": 64}
    assert settings.build == {"seed": 3}


def test_absent_file_says_nothing_and_a_broken_one_names_the_fix(tmp_path):
    empty = read_model_settings(tmp_path)
    assert (empty.text_len, empty.generation_defaults, empty.build) == (None, {}, {})
    assert read_model_settings(None).raw == {}
    (tmp_path / "framecap.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="is not valid JSON.*fix or delete it"):
        read_model_settings(tmp_path)
    (tmp_path / "framecap.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="must hold a JSON object"):
        read_model_settings(tmp_path)


def test_the_toy_model_and_its_readers_agree():
    from framecap_core.cli.generate import model_defaults

    raw = json.loads((TOY_MODEL_DIR / "framecap.json").read_text())
    settings = read_model_settings(TOY_MODEL_DIR)
    assert settings.text_len == raw["text_len"]
    assert settings.generation_defaults == {"fps": raw["fps"], **raw["defaults"]}
    assert model_defaults(TOY_MODEL_DIR) == settings.generation_defaults
    assert settings.build == raw["build"]
