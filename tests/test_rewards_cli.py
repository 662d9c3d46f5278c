"""``rewardkit rewards score`` on image files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import rewardkit as rk
from rewardkit.cli import run
from rewardkit.rewards.cli import load_image


@pytest.fixture
def pngs(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(24, 24, 3), (24, 24, 3), (20, 30, 3)]):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((24, 24, 3), 128, dtype=np.uint8)).save(flat)
    return paths + [flat]


def test_score_json_matches_the_python_api(pngs, capsys):
    code = run(["rewards", "score", *map(str, pngs), "--prompt", "a red cat",
                "--reward", "jpeg-compressibility", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    records = json.loads(out)
    assert [r["image"] for r in records] == [str(p) for p in pngs]
    assert all(r["prompt"] == "a red cat" and r["reward"] == "jpeg-compressibility"
               for r in records)
    rm = rk.reward_model("jpeg-compressibility")
    for record, path in zip(records, pngs):
        expected = rm(load_image(path), ["a red cat"]).item()
        assert record["score"] == pytest.approx(expected)
    assert records[-1]["score"] > records[0]["score"]  # the flat image compresses best


def test_load_image_is_rgb_in_unit_range(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.array([[0, 255], [51, 102]], dtype=np.uint8), mode="L").save(path)
    tensor = load_image(path)
    assert tensor.shape == (1, 3, 2, 2)
    assert torch.allclose(tensor[0, :, 0, 1], torch.ones(3))
    assert tensor[0, 0, 1, 0].item() == pytest.approx(0.2)


def test_params_and_one_prompt_per_image(pngs, capsys):
    code = run(["rewards", "score", str(pngs[0]), str(pngs[-1]), "-p", "a red car",
                "-p", "a grey wall", "--reward", "rule-judge", "--param", "clip-penalty=0",
                "--param", "tolerance=0.2", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    records = json.loads(out)
    assert [r["prompt"] for r in records] == ["a red car", "a grey wall"]
    assert records[1]["score"] == pytest.approx(1.0)  # flat 128 grey, no clipping penalty


def test_table_output(pngs, capsys, monkeypatch):
    monkeypatch.chdir(pngs[0].parent)
    assert run(["rewards", "score", "image0.png", "--prompt", "x", "--reward", "rule-judge"]) == 0
    out = capsys.readouterr().out
    assert "image0.png" in out and "rule-judge" in out


def test_unreadable_image_is_named(pngs, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    code = run(["rewards", "score", str(pngs[0]), str(broken), "--prompt", "x",
                "--reward", "jpeg-compressibility"])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in err and "cannot read image" in err
    assert run(["rewards", "score", str(tmp_path / "missing.png"), "--prompt", "x",
                "--reward", "jpeg-compressibility"]) == 1
    assert "missing.png" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--prompt", "a", "--prompt", "b", "--reward", "rule-judge"], "3 images but 2 prompts"),
    (["--prompt", "a", "--reward", "no-such-rm"], "no reward named 'no-such-rm'"),
    (["--prompt", "a", "--reward", "rule-judge", "--param", "tolerance"], "key=value"),
    (["--prompt", "a", "--reward", "rule-judge", "--param", "tolerance=wide"], "'tolerance' must be a number"),
    (["--prompt", "a", "--reward", "rule-judge", "--param", "colour=red"], "no parameter 'colour'"),
])
def test_usage_errors(pngs, capsys, args, message):
    assert run(["rewards", "score", *map(str, pngs[:3]), *args]) == 1
    assert message in capsys.readouterr().err


def test_score_with_a_clip_model_from_a_local_folder(pngs, tmp_path, capsys):
    from rewardkit.testing.tiny_clip import build_tiny_clip

    clip_dir = build_tiny_clip(tmp_path / "clip", image_size=16)
    capsys.readouterr()  # drop whatever libraries logged while building the model
    code = run(["rewards", "score", *map(str, pngs), "--prompt", "a red cat", "--reward",
                "clip-score", "--param", f"model={clip_dir}", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    rm = rk.reward_model("clip-score", model=str(clip_dir))
    with torch.no_grad():
        expected = [rm(load_image(p), ["a red cat"]).item() for p in pngs]
    assert [r["score"] for r in json.loads(out)] == pytest.approx(expected, abs=1e-5)
