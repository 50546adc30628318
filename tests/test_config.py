"""Step configs: defaults, YAML sections, --set overrides and errors that name the key."""

from dataclasses import dataclass

import pytest

from facepipe.config import bounded, choice, diff, listfield, load_config
from facepipe.errors import ConfigError


@dataclass
class ToyConfig:
    backbone: str = choice("iresnet18", ["iresnet18", "iresnet50"])
    lr: float = bounded(0.1, low=0.0, low_inclusive=False)
    epochs: int = bounded(2, low=1)
    amp: bool = False
    sizes: list[int] = listfield([16, 32])
    note: str | None = None


def test_defaults_then_yaml_section_then_sets(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("toy:\n  lr: 0.5\n  epochs: 3\npack:\n  x: 1\n")
    cfg = load_config(ToyConfig, job, ["epochs=7", "amp=true", "sizes=8,9"], section="toy")
    assert (cfg.backbone, cfg.lr, cfg.epochs, cfg.amp, cfg.sizes) == ("iresnet18", 0.5, 7, True, [8, 9])


def test_job_file_without_the_section_is_refused(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("pack:\n  x: 1\n")
    with pytest.raises(ConfigError, match=r"job.yaml: no 'toy' section \(it has \['pack'\]\)"):
        load_config(ToyConfig, job, section="toy")


def test_misspelled_section_is_refused_with_a_hint(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("train_recogniton:\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['train_recogniton'\] \(did you mean 'train_recognition'"):
        load_config(ToyConfig, job, section="train_recognition")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ConfigError, match=rf"ToyConfig.lr: expected a finite float, got '{value}'"):
        load_config(ToyConfig, sets=[f"lr={value}"])


def test_config_that_is_a_folder_or_binary_is_named(tmp_path):
    binary = tmp_path / "model.pt"
    binary.write_bytes(bytes(range(256)) * 4)
    for path in (tmp_path, binary):
        with pytest.raises(ConfigError, match="not a readable YAML text file"):
            load_config(ToyConfig, path, section="toy")


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\].*valid keys: \['backbone', 'lr'"):
        load_config(ToyConfig, sets=["lrr=1"])


def test_choice_names_allowed_values():
    with pytest.raises(ConfigError, match=r"ToyConfig.backbone: 'resnet' is not allowed; choose one of \['iresnet18', 'iresnet50'\]"):
        load_config(ToyConfig, sets=["backbone=resnet"])


@pytest.mark.parametrize("setting, message", [
    ("lr=0", r"ToyConfig.lr: 0.0 is out of range; expected > 0.0"),
    ("epochs=0", r"ToyConfig.epochs: 0 is out of range; expected >= 1"),
    ("epochs=two", r"ToyConfig.epochs: expected int, got 'two'"),
    ("amp=maybe", r"ToyConfig.amp: expected bool"),
    ("noequals", r"expected key=value"),
])
def test_bad_values_are_named(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ToyConfig, sets=[setting])


def test_optional_and_diff():
    a = load_config(ToyConfig, sets=["note=hello"])
    b = load_config(ToyConfig, sets=["note=none", "lr=0.2"])
    assert a.note == "hello" and b.note is None
    assert diff(vars(a), vars(b)) == ["lr", "note"]


def test_bad_yaml_names_the_file(tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text("toy: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(ToyConfig, job, section="toy")
