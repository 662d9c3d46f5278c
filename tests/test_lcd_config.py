"""LCDConfig: diffusers flag names, TOML/YAML + CLI overrides, and bad values rejected before loading."""

from __future__ import annotations

import dataclasses

import pytest

import rewardkit.api as rk
from rewardkit.cli import run as cli_run
from rewardkit.config import load_config, parse_cli_overrides
from rewardkit.errors import ConfigError
from rewardkit.recipes.lcd import LCDRecipe
from rewardkit.recipes.lcd_config import LCDConfig

DIFFUSERS_FLAGS = (
    "pretrained_teacher_model revision variant output_dir train_shards_path_or_url resolution "
    "center_crop random_flip train_batch_size max_train_steps learning_rate lr_scheduler "
    "lr_warmup_steps gradient_accumulation_steps mixed_precision gradient_checkpointing "
    "use_8bit_adam adam_beta1 adam_beta2 adam_weight_decay adam_epsilon max_grad_norm w_min w_max "
    "num_ddim_timesteps unet_time_cond_proj_dim loss_type huber_c ema_decay "
    "timestep_scaling_factor checkpointing_steps checkpoints_total_limit resume_from_checkpoint "
    "validation_steps seed use_lora lora_rank lora_alpha lora_target_modules report_to "
    "dataloader_num_workers").split()


@pytest.fixture
def teacher_dir(tmp_path):
    (tmp_path / "teacher").mkdir()
    return str(tmp_path / "teacher")


def test_fields_carry_the_diffusers_flag_names_defaults_and_help():
    fields = {f.name: f for f in dataclasses.fields(LCDConfig)}
    assert set(DIFFUSERS_FLAGS) <= set(fields)
    config = LCDConfig(pretrained_teacher_model="org/model", train_shards_path_or_url="s.tar")
    assert (config.learning_rate, config.lr_scheduler, config.max_grad_norm) == (1e-6, "constant", 1.0)
    assert (config.w_min, config.w_max, config.num_ddim_timesteps) == (5.0, 15.0, 50)
    assert (config.unet_time_cond_proj_dim, config.loss_type, config.huber_c) == (256, "huber", 0.001)
    assert (config.ema_decay, config.timestep_scaling_factor) == (0.95, 10.0)
    assert (config.backbone, config.solver) == ("stable-diffusion", "ddim")
    for name, f in fields.items():
        assert f.metadata.get("help"), name
        assert f.metadata.get("provenance") in ("reference default", "rewardkit default"), name
    params = {p.name: p for p in rk.describe("recipe", "lcd").params}
    assert params["pretrained_teacher_model"].required
    assert "reference default" in params["w_min"].help


def test_toml_file_plus_cli_overrides(tmp_path, teacher_dir):
    path = tmp_path / "lcd.toml"
    path.write_text(f'pretrained_teacher_model = "{teacher_dir}"\n'
                    'train_shards_path_or_url = "s-{0..1}.tar"\n'
                    "w_min = 4.0\nmax_train_steps = 100\nvalidation_prompts = ['a cat']\n")
    overrides = parse_cli_overrides(["--w_min", "3", "--use-lora", "--lora_target_modules",
                                     "to_q,to_v", "--mixed_precision=bf16"])
    config = load_config(LCDConfig, path, overrides)
    assert config.w_min == 3.0 and config.max_train_steps == 100 and config.use_lora
    assert config.lora_target_modules == ["to_q", "to_v"]
    assert config.validation_prompts == ["a cat"] and config.mixed_precision == "bf16"
    assert config.unet_time_cond_proj_dim == 256
    plain = load_config(LCDConfig, path, parse_cli_overrides(["--unet_time_cond_proj_dim", "none"]))
    assert plain.unet_time_cond_proj_dim is None  # LCM-LoRA style: no w input


def test_yaml_file(tmp_path, teacher_dir):
    path = tmp_path / "lcd.yaml"
    path.write_text(f"pretrained_teacher_model: {teacher_dir}\n"
                    "train_shards_path_or_url: 'pipe:cat x.tar'\nloss_type: l2\nseed: 7\n")
    config = load_config(LCDConfig, path)
    assert config.loss_type == "l2" and config.seed == 7


@pytest.mark.parametrize("overrides, key", [
    ({"w_min": 16}, "w_min"),
    ({"max_train_steps": -1}, "max_train_steps"),
    ({"train_batch_size": 0}, "train_batch_size"),
    ({"lr_warmup_steps": -5}, "lr_warmup_steps"),
    ({"checkpointing_steps": -1}, "checkpointing_steps"),
    ({"loss_type": "l1"}, "loss_type"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"lr_scheduler": "warp"}, "lr_scheduler"),
    ({"ema_decay": 1.5}, "ema_decay"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"checkpoints_total_limit": 0}, "checkpoints_total_limit"),
    ({"report_to": "mlflow"}, "report_to"),
    ({"resume_from_checkpoint": "/no/such/checkpoint"}, "resume_from_checkpoint"),
    ({"pretrained_teacher_model": "/no/such/teacher"}, "pretrained_teacher_model"),
    ({"pretrained_teacher_model": "./missing/teacher"}, "pretrained_teacher_model"),
    ({"w_mni": 3}, "w_mni"),
    ({"train_shards_path_or_url": "/no/such/data"}, "train_shards_path_or_url"),
    ({"max_train_steps": "many"}, "max_train_steps"),
    ({"unet_time_cond_proj_dim": 7}, "unet_time_cond_proj_dim"),
    ({"pretrained_vae_model_name_or_path": "/no/such/vae"}, "pretrained_vae_model_name_or_path"),
    ({"unet_time_cond_proj_dim": 0}, "unet_time_cond_proj_dim"),
])
def test_bad_values_fail_before_any_model_loads(overrides, key, teacher_dir, monkeypatch):
    def no_loading(*args, **kwargs):  # pragma: no cover - reaching it is the failure
        raise AssertionError("a model was loaded before the config was validated")

    monkeypatch.setattr(LCDRecipe, "build_backbone", no_loading)
    values = {"pretrained_teacher_model": teacher_dir,
              "train_shards_path_or_url": "data-{000..009}.tar",
              **overrides}
    with pytest.raises(ConfigError, match=key):
        rk.recipe("lcd", **values).run(progress=False)


def test_hub_ids_are_not_checked_on_disk():
    LCDConfig(pretrained_teacher_model="stabilityai/stable-diffusion-2-1",
              train_shards_path_or_url="https://host/data-{00000..01090}.tar").validate()


def test_cli_reports_a_bad_value_naming_the_key(teacher_dir, capsys):
    code = cli_run(["run", "lcd", "--pretrained_teacher_model", teacher_dir,
                    "--train_shards_path_or_url", teacher_dir, "--w_min", "20"])
    assert code == 1
    assert "w_min" in capsys.readouterr().err


@pytest.mark.parametrize("resolution,match", [
    (17, "multiple of 2"), (1, "at least 4"), (2, "at least 4")])
def test_resolution_is_checked_against_the_teacher_before_anything_loads(
        tmp_path_factory, resolution, match):
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.testing.tiny_training import write_tiny_image_folder

    root = tmp_path_factory.mktemp("resolution")
    teacher = build_tiny_sd_pipeline(root / "teacher")  # VAE factor 2, two UNet down blocks
    data = write_tiny_image_folder(root / "data", count=2, size=16)
    values = dict(pretrained_teacher_model=str(teacher), train_shards_path_or_url=str(data),
                  output_dir=str(root / "out"))
    with pytest.raises(ConfigError, match=f"resolution {resolution} does not fit.*{match}"):
        LCDConfig(**values, resolution=resolution).validate()
    LCDConfig(**values, resolution=16).validate()
    (teacher / "unet" / "config.json").write_text('{"in_channels": 4,')  # truncated
    with pytest.raises(ConfigError, match=r"unet/config.json' is unreadable"):
        LCDConfig(**values, resolution=16).validate()


@pytest.mark.parametrize("recipe,values,match", [
    ("lcd", {"solver_params": {"num_ddim_timesteps": 25}},
     "solver_params: 'num_ddim_timesteps' is set by the recipe; use --num_ddim_timesteps"),
    ("lcd", {"solver_params": {"bogus": 1}}, "solver 'ddim' takes no parameter 'bogus'"),
    ("lcd", {"solver": "nope"}, "solver: no solver named 'nope'"),
    ("rg-lcd", {"reward": "world-judge", "proxy": "lrm-unet",
                "proxy_params": {"image_widths": [8, 16]}},
     "proxy_params: proxy 'lrm-unet' takes no parameter 'image_widths'"),
    ("rg-lcd", {"reward": "jpeg-compressibility", "proxy": "lrm",
                "reward_params": {"qualty": 80}},
     "reward_params: reward 'jpeg-compressibility' takes no parameter 'qualty'"),
])
def test_component_names_and_params_are_checked_before_anything_loads(recipe, values, match,
                                                                       tmp_path):
    from rewardkit.world.assets import TEACHER, asset_path

    base = dict(pretrained_teacher_model=str(asset_path(TEACHER)),
                train_shards_path_or_url="world:train", resolution=32,
                output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=match):
        rk.recipe(recipe, **base, **values)
    assert not (tmp_path / "out").exists()


def test_batched_teacher_call_reaches_the_step(teacher_dir):
    from rewardkit.recipes.lcd import LCDRecipe

    values = {"pretrained_teacher_model": teacher_dir, "train_shards_path_or_url": "data-{000..009}.tar"}
    assert LCDRecipe(rk.recipe("lcd", values).config).hyper.batched_teacher is True
    two_calls = rk.recipe("lcd", values, batched_teacher_call="false")
    assert two_calls.hyper.batched_teacher is False
