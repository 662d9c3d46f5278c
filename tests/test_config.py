"""Typed configuration: files (TOML/YAML/JSON), CLI overrides, type coercion, clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal, Optional

import pytest

from rewardkit.config import (build_config, coerce, config_to_dict, load_config,
                              parse_cli_overrides, read_config_file)
from rewardkit.errors import ConfigError


@dataclasses.dataclass
class Config:
    pretrained_teacher_model: str = "tiny"
    learning_rate: float = 1e-6
    max_train_steps: int = 100
    use_lora: bool = False
    loss_type: Literal["huber", "l2"] = "huber"
    reward_scale: Optional[float] = None
    prompts: list[str] = dataclasses.field(default_factory=list)
    resolution: tuple[int, int] = (512, 512)
    extra: dict = dataclasses.field(default_factory=dict)
    output_dir: Path = Path("out")
    validated: bool = False

    def validate(self) -> None:
        if self.max_train_steps < 0:
            raise ConfigError(f"'max_train_steps' must be >= 0, got {self.max_train_steps}")
        self.validated = True


@dataclasses.dataclass
class Needs:
    data: str
    seed: int = 0


FILES = {
    "c.toml": 'learning_rate = 1e-4\nmax-train-steps = 7\nuse_lora = true\nprompts = ["a", "b"]\n',
    "c.yaml": "learning_rate: 1.0e-4\nmax-train-steps: 7\nuse_lora: true\nprompts: [a, b]\n",
    "c.yml": "learning_rate: 0.0001\nmax_train_steps: 7\nuse_lora: yes\nprompts:\n  - a\n  - b\n",
    "c.json": '{"learning_rate": 1e-4, "max_train_steps": 7, "use_lora": true, "prompts": ["a", "b"]}',
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_three_file_formats_give_the_same_config(tmp_path, name):
    path = tmp_path / name
    path.write_text(FILES[name])
    config = load_config(Config, path)
    assert (config.learning_rate, config.max_train_steps, config.use_lora, config.prompts) == (
        1e-4, 7, True, ["a", "b"])
    assert config.validated


@pytest.mark.parametrize("name, text, message", [
    ("c.ini", "x=1", "must end in .toml, .yaml, .yml or .json"),
    ("c.toml", "learning_rate = = 1", "could not be parsed"),
    ("c.json", "[1, 2]", "must hold a mapping of keys to values"),
    ("c.yaml", "- a\n- b\n", "must hold a mapping of keys to values"),
])
def test_bad_files_name_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as excinfo:
        read_config_file(path)
    assert str(path) in str(excinfo.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file 'nowhere.toml' does not exist"):
        read_config_file("nowhere.toml")


def test_empty_yaml_is_an_empty_config(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert read_config_file(path) == {}


@pytest.mark.parametrize("key, suggestion", [
    ("learning_rat", "learning_rate"), ("use-lora2", "use_lora"), ("max_steps", "max_train_steps")])
def test_unknown_key_suggests_the_closest(key, suggestion):
    with pytest.raises(ConfigError, match=f"unknown config key '{key.replace('-', '_')}'; did you "
                                          f"mean '{suggestion}'\\?"):
        load_config(Config, overrides={key: 1})


def test_unknown_key_without_a_close_match():
    with pytest.raises(ConfigError) as excinfo:
        load_config(Config, overrides={"zzz": 1})
    assert str(excinfo.value) == "unknown config key 'zzz'"


@pytest.mark.parametrize("key, value, message", [
    ("max_train_steps", "ten", "'max_train_steps' must be an integer, got 'ten'"),
    ("max_train_steps", 2.5, "'max_train_steps' must be an integer, got 2.5"),
    ("max_train_steps", True, "'max_train_steps' must be a number, got True"),
    ("learning_rate", "fast", "'learning_rate' must be a number, got 'fast'"),
    ("use_lora", "perhaps", "'use_lora' must be true or false, got 'perhaps'"),
    ("use_lora", 2, "'use_lora' must be true or false, got 2"),
    ("loss_type", "l1", "'loss_type' must be one of 'huber', 'l2', got 'l1'"),
    ("reward_scale", "big", "'reward_scale' must be a number, got 'big'"),
    ("prompts", 3, "'prompts' must be a list, got 3"),
    ("extra", "{not json", "'extra' must be a mapping (JSON on the command line)"),
    ("pretrained_teacher_model", {"a": 1}, "'pretrained_teacher_model' must be a string"),
    ("output_dir", 5, "'output_dir' must be a path, got 5"),
])
def test_type_errors_name_the_key(key, value, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(Config, overrides={key: value})
    assert message in str(excinfo.value)


def test_cli_strings_are_coerced_to_field_types():
    config = load_config(Config, overrides=parse_cli_overrides([
        "--learning-rate", "3e-5", "--max_train_steps=12", "--use-lora", "--loss-type", "l2",
        "--reward_scale", "none", "--prompts", "a cat,a dog", "--resolution", "[64, 32]",
        "--extra", '{"k": 1}', "--output-dir", "runs/x"]))
    assert config.learning_rate == 3e-5 and config.max_train_steps == 12
    assert config.use_lora is True and config.loss_type == "l2" and config.reward_scale is None
    assert config.prompts == ["a cat", "a dog"] and config.resolution == (64, 32)
    assert config.extra == {"k": 1} and config.output_dir == Path("runs/x")


def test_optional_values_and_bools():
    assert coerce("x", "0.5", Optional[float]) == 0.5
    assert coerce("x", None, Optional[float]) is None
    assert coerce("x", "null", float | None) is None
    assert [coerce("b", v, bool) for v in ("yes", "off", "TRUE", "0", 1, False)] == [
        True, False, True, False, True, False]
    assert coerce("n", 3, float) == 3.0 and isinstance(coerce("n", 3, float), float)


def test_parse_cli_overrides():
    assert parse_cli_overrides(["--w_min", "3", "--lora", "--seed=1", "--w-max", "-2.5",
                                "--name=a=b"]) == {
        "w_min": "3", "lora": True, "seed": "1", "w_max": "-2.5", "name": "a=b"}
    assert parse_cli_overrides([]) == {}
    assert parse_cli_overrides(["--a", "--b"]) == {"a": True, "b": True}


@pytest.mark.parametrize("args, message", [
    (["w_min", "3"], "unexpected argument 'w_min'; options look like --key value"),
    (["--"], "unexpected argument '--'"),
    (["--=3"], "option '--=3' has no key"),
])
def test_bad_cli_overrides(args, message):
    with pytest.raises(ConfigError, match=message):
        parse_cli_overrides(args)


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("max_train_steps = 7\nlearning_rate = 0.1\n")
    config = load_config(Config, path, {"max-train-steps": "9"})
    assert (config.max_train_steps, config.learning_rate) == (9, 0.1)


def test_validate_runs_and_can_be_skipped():
    with pytest.raises(ConfigError, match="'max_train_steps' must be >= 0, got -1"):
        load_config(Config, overrides={"max_train_steps": -1})
    config = load_config(Config, overrides={"max_train_steps": -1}, validate=False)
    assert config.max_train_steps == -1 and not config.validated


def test_missing_required_keys_are_named():
    with pytest.raises(ConfigError, match="missing required config key\\(s\\): 'data'"):
        build_config(Needs, {"seed": 1})
    assert build_config(Needs, {"data": "shards/"}) == Needs("shards/")


def test_config_to_dict_is_json_ready():
    data = config_to_dict(load_config(Config, overrides={"output_dir": "o"}))
    assert json.loads(json.dumps(data))["output_dir"] == "o"
    assert data["resolution"] == (512, 512)
