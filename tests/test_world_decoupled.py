"""The embedded world is a plugin like any other: disabled, core training runs and no world
module is imported; its data source and preset reach the core only through hooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

WITHOUT_THE_WORLD = r'''
import sys, tempfile
from pathlib import Path
import rewardkit as rk
from rewardkit.errors import ConfigError
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.testing.tiny_training import write_tiny_image_folder

root = Path(tempfile.mkdtemp())
teacher = build_tiny_sd_pipeline(root / "teacher")
data = write_tiny_image_folder(root / "data", count=8, size=16)
base = dict(pretrained_teacher_model=str(teacher), train_shards_path_or_url=str(data),
            resolution=16, train_batch_size=2, max_train_steps=2, unet_time_cond_proj_dim=32,
            validation_steps=0, checkpointing_steps=0, report_to="none")
rk.recipe("lcd", base, output_dir=str(root / "lcd")).run(progress=False)
rk.recipe("rg-lcd", base, output_dir=str(root / "direct"), reward="jpeg-compressibility",
          proxy="lrm", proxy_batch_size=2, vae_decode_batch_size=4, proxy_eval_num_prompts=2,
          proxy_params={"embed_dim": 16, "image_widths": [8, 16], "text_width": 16,
                        "text_heads": 2}).run(progress=False)
errors = []
for call in (lambda: rk.recipe("rg-lcd"),
             lambda: rk.recipe("lcd", base, train_shards_path_or_url="world:train"),
             lambda: rk.recipe("rg-lcd", base, reward="world-judge"),
             lambda: rk.recipe("rg-lcd", base, reward="jpeg-compressibility", report=True)):
    try:
        call()
    except ConfigError as error:
        errors.append(str(error))
loaded = sorted(m for m in sys.modules if m.startswith("rewardkit.world"))
print(json.dumps({"loaded": loaded, "errors": errors,
                  "trained": [(root / r / "pipeline" / "model_index.json").is_file()
                              for r in ("lcd", "direct")]}))
'''.replace("import sys, tempfile", "import json, sys, tempfile")


def test_core_training_runs_without_the_world_plugin_and_imports_none_of_it():
    env = {**os.environ, "REWARDKIT_DISABLE_PLUGINS": "rewardkit.world.plugin",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", WITHOUT_THE_WORLD], capture_output=True,
                            text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["trained"] == [True, True]
    assert report["loaded"] == [], report["loaded"]
    no_preset, no_source, no_reward, no_report = report["errors"]
    assert no_report.startswith("report: no registered preset writes a report")
    assert "pretrained_teacher_model" in no_preset  # no preset: the required keys are needed
    assert "no data source is registered as 'world'" in no_source
    assert "world-judge" in no_reward


def test_the_world_registers_its_data_source_and_preset_through_hooks():
    import rewardkit as rk

    data = rk.describe("data", "world")
    preset = rk.describe("preset", "world")
    assert data.plugin == preset.plugin == "rewardkit.world.plugin"
    assert "rg-lcd" in preset.factory.recipes and "lrm-pretrain" in preset.factory.recipes
    defaults = rk.describe("recipe", "rg-lcd").factory.embedded_defaults({})
    assert defaults["report"] is True and defaults["train_shards_path_or_url"].startswith("world:")


def test_a_bad_world_spec_in_another_data_key_names_that_key(tmp_path):
    from rewardkit.errors import ConfigError
    from rewardkit.data.specs import check_data_spec

    with pytest.raises(ConfigError) as error:
        check_data_spec("proxy_eval_shards_path_or_url", "world:nosuchsplit")
    assert str(error.value).startswith("proxy_eval_shards_path_or_url: ")
    assert "train_shards_path_or_url" not in str(error.value)
