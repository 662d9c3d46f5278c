"""Bad inputs from issue 28: each gives one sentence naming the culprit (a
:mod:`rewardkit.errors` type, never a library's traceback), is handled correctly, or loses no
saved data."""

from __future__ import annotations

import math

import pytest

import rewardkit.api as rk
from rewardkit.cli import run as cli_run
from rewardkit.config import read_config_file
from rewardkit.errors import ConfigError
from rewardkit.recipes.lcd import LCDRecipe


@pytest.fixture
def teacher_dir(tmp_path):
    (tmp_path / "teacher").mkdir()
    return str(tmp_path / "teacher")


def no_loading(*args, **kwargs):  # pragma: no cover - reaching it is the failure
    raise AssertionError("a model was loaded before the config was validated")


# ---------------------------------------------------------------- config values: NaN, inf


@pytest.mark.parametrize("recipe,key,value", [
    ("lcd", "learning_rate", "nan"), ("lcd", "learning_rate", "inf"),
    ("lcd", "w_min", "nan"), ("lcd", "huber_c", "nan"), ("lcd", "max_grad_norm", "nan"),
    ("lcd", "adam_epsilon", "-inf"), ("rg-lcd", "proxy_lr", "nan"),
    ("rg-lcd", "reward_scale", "inf"),
])
def test_a_non_finite_number_is_refused_naming_the_key(recipe, key, value, teacher_dir,
                                                       monkeypatch, capsys):
    monkeypatch.setattr(LCDRecipe, "build_backbone", no_loading)
    code = cli_run(["run", recipe, "--pretrained_teacher_model", teacher_dir,
                    "--train_shards_path_or_url", "data-{000..009}.tar", "--reward", "rule-judge",
                    f"--{key}", value] if recipe == "rg-lcd" else
                   ["run", recipe, "--pretrained_teacher_model", teacher_dir,
                    "--train_shards_path_or_url", "data-{000..009}.tar", f"--{key}", value])
    err = capsys.readouterr().err
    assert code == 1
    assert f"'{key}' must be a finite number, got '{value}'" in err
    assert "Traceback" not in err and "--debug" not in err


@pytest.mark.parametrize("key,value", [("learning_rate", math.nan), ("learning_rate", math.inf),
                                       ("w_min", math.nan), ("huber_c", math.inf),
                                       ("w_max", math.nan)])
def test_a_config_built_in_python_with_a_non_finite_number_is_refused(key, value, teacher_dir):
    config = LCDRecipe.Config(pretrained_teacher_model=teacher_dir,
                              train_shards_path_or_url="data-{000..009}.tar")
    setattr(config, key, value)
    with pytest.raises(ConfigError, match=f"^{key} must be a finite number, got {value}$"):
        config.validate()


def test_the_positive_and_non_negative_checks_refuse_nan_and_inf(teacher_dir):
    config = LCDRecipe.Config(pretrained_teacher_model=teacher_dir,
                              train_shards_path_or_url="data-{000..009}.tar")
    config.learning_rate, config.huber_c = math.nan, math.inf
    with pytest.raises(ConfigError, match="^learning_rate must be positive and finite, got nan$"):
        config.require_positive("learning_rate")
    with pytest.raises(ConfigError, match="^huber_c must be finite and not negative, got inf$"):
        config.require_non_negative("huber_c")


def test_a_binary_config_file_is_named(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\x80\x81\xfe\xff" * 64)
    with pytest.raises(ConfigError, match=r"config file '.*config.toml' is not text"):
        read_config_file(path)
    with pytest.raises(ConfigError, match="is not text"):
        rk.recipe("lcd", path)
