"""Compare this plugin with HPSv2's own code on a tiny random checkpoint (by hand, offline).

Usage: python check_parity_with_reference.py /path/to/tgxs002/HPSv2 [checkout]

Imports HPSv2's vendored open_clip (``hpsv2/src/open_clip``) from the checkout, loads the same tiny
HPS-format checkpoint strictly into its ``CLIP``, scores images with its ``preprocess_val``
(``transforms[2:]`` on tensors, as the RG-LCD reference does) and its tokenizer, and prints the
largest difference from this plugin's scores. Not part of the test suite: it needs the source.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")


def main(checkout: str) -> None:
    import torchvision

    from rewardkit_hpsv2 import HPSv2Config, HPSv2Reward
    from rewardkit_hpsv2.testing import build_tiny_hps_checkpoint

    work = Path(tempfile.mkdtemp())
    shutil.copytree(Path(checkout) / "hpsv2/src/open_clip", work / "hpsv2/src/open_clip")
    (work / "hpsv2/__init__.py").write_text("")
    (work / "hpsv2/src/__init__.py").write_text("")
    sys.path.insert(0, str(work))
    from hpsv2.src.open_clip.model import CLIP
    from hpsv2.src.open_clip.tokenizer import tokenize
    from hpsv2.src.open_clip.transform import image_transform

    checkpoint, config_path = build_tiny_hps_checkpoint(work / "tiny", seed=3)
    config = json.loads(config_path.read_text())
    reference = CLIP(**config, output_dict=True)
    reference.load_state_dict(torch.load(checkpoint)["state_dict"], strict=True)
    reference.eval()
    rm = HPSv2Reward(HPSv2Config(checkpoint=str(checkpoint), model_config=str(config_path)))

    size = config["vision_cfg"]["image_size"]
    preprocess = torchvision.transforms.Compose(
        image_transform(size, is_train=False, resize_longest_max=True).transforms[2:])
    images = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    prompts = ["a red cube on a table", "two dogs", "a lighthouse at night"]
    with torch.no_grad():
        out = reference(torch.stack([preprocess(image) for image in images]), tokenize(prompts))
        expected = (out["image_features"] * out["text_features"]).sum(-1)
        plugin = rm(images, prompts)
    print("reference:", expected.tolist())
    print("plugin:   ", plugin.tolist())
    print("max abs difference:", float((expected - plugin).abs().max()))


if __name__ == "__main__":
    main(sys.argv[1])
