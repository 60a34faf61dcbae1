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


def test_yaml_surprises_are_one_line_and_write_nothing(tmp_path, capsys):
    from deliberate.cli import main

    bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
    )  # 332 bytes that expand to 10^9 values
    cases = {
        "bomb.yaml": (bomb, "expands to more than 100,000 values"),
        "date.yaml": ("seed: 2024-01-01\n", "seed: expected int, got '2024-01-01'"),
        "binary.yaml": ("seed: !!binary aGk=\n", "seed: expected int, got 'aGk='"),
        "broken.yaml": ("practice: {initial: [\n", "is not valid YAML at line"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        out = tmp_path / f"out-{name}"
        assert main(["run", str(tmp_path / name), "--out", str(out), "--quiet"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (name, err)
        assert not out.exists(), name
    (tmp_path / "ok.yaml").write_text("{}\n")
    out = tmp_path / "out-set"
    assert main(["run", str(tmp_path / "ok.yaml"), "--out", str(out), "--set",
                 "practice.initial=["]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "override 'practice.initial=[' is not valid YAML" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_negative_free_space_reserve_is_refused(tmp_path, monkeypatch):
    from deliberate import faults

    monkeypatch.setenv(faults.RESERVE_ENV, "-1")  # would switch the free-space check off
    with pytest.raises(DeliberateError, match="must be a number of bytes >= 0"):
        faults.ensure_free_space(tmp_path, 1, "a test")
