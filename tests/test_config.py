"""Typed configs: every shipped preset loads; typos, wrong types and ranges get one-line errors."""

from pathlib import Path

import pytest

from deliberate.config import apply_overrides, from_dict, load_config, to_dict
from deliberate.errors import DeliberateError
from deliberate.generators.train_pixel import GeneratorConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_generator_preset_loads_and_round_trips():
    cfg = load_config(GeneratorConfig, CONFIGS / "fmnist" / "generator.yaml")
    assert cfg.model.unshuffle == 4 and cfg.train.batch_size > 0
    assert from_dict(GeneratorConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"trian": {}}, "did you mean 'train'"),
        ({"train": {"stpes": 3}}, "train.stpes"),
        ({"train": {"steps": "many"}}, "train.steps: expected int"),
        ({"train": {"steps": 0}}, "train.steps: 0 is out of range"),
        ({"train": {"lr": True}}, "train.lr: expected float"),
        ({"model": {"prediction_type": "x"}}, "model.prediction_type"),
        ({"model": {"unshuffle": 3}}, "must divide"),
        ({"model": {"block_out_channels": 64}}, "expected a list"),
    ],
)
def test_bad_values_name_the_field(data, message):
    with pytest.raises(DeliberateError) as e:
        from_dict(GeneratorConfig, data)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_overrides_parse_yaml_scalars():
    data = apply_overrides({"train": {"steps": 5}}, ["train.steps=7", "train.lr=0.5", "data_dir=/x"])
    assert data == {"train": {"steps": 7, "lr": 0.5}, "data_dir": "/x"}
    with pytest.raises(DeliberateError):
        apply_overrides({}, ["novalue"])


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(DeliberateError, match="not valid YAML"):
        load_config(GeneratorConfig, bad)
    with pytest.raises(DeliberateError, match="cannot read config"):
        load_config(GeneratorConfig, tmp_path / "absent.yaml")
