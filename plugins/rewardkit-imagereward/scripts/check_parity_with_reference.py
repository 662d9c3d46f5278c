"""Compare this plugin with ImageReward's own BLIP code on a tiny random checkpoint (by hand, offline).

Usage: python check_parity_with_reference.py /path/to/THUDM/ImageReward [checkout]

Copies ``ImageReward/models/BLIP/{med,vit}.py`` from the checkout into a temporary folder, applies
the smallest patches that let them run on transformers 5 (``apply_chunking_to_forward``,
``init_weights``, ``invert_attention_mask``, ``get_head_mask``, no fairscale), loads the same tiny
state dict into both implementations and prints the largest score difference. Needs torchvision
and timm (the reference's imports). Not part of the test suite: it needs the reference source.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

MED_PATCHES = {
    "from transformers.modeling_utils import (\n    PreTrainedModel,\n    apply_chunking_to_forward,\n"
    "    find_pruneable_heads_and_indices,\n    prune_linear_layer,\n)":
    "from transformers.modeling_utils import PreTrainedModel\n"
    "def apply_chunking_to_forward(fn, chunk, dim, *inputs):\n    return fn(*inputs)\n"
    "find_pruneable_heads_and_indices = prune_linear_layer = None",
    "from transformers.file_utils import (\n    ModelOutput,\n)": "from transformers.utils import ModelOutput",
    "        self.init_weights()": "        pass",
}
MED_APPENDIX = """
def _invert_attention_mask(self, m):
    return (1.0 - m[:, None, None, :].float()) * torch.finfo(torch.float32).min
BertModel.invert_attention_mask = _invert_attention_mask
BertModel.get_head_mask = lambda self, head_mask, n: [None] * n
"""


def load_reference(checkout: Path, into: Path):
    med = (checkout / "ImageReward/models/BLIP/med.py").read_text()
    for old, new in MED_PATCHES.items():
        med = med.replace(old, new)
    (into / "ref_med.py").write_text(med + MED_APPENDIX)
    vit = (checkout / "ImageReward/models/BLIP/vit.py").read_text()
    vit = vit.replace("from fairscale.nn.checkpoint.checkpoint_activations import checkpoint_wrapper",
                      "checkpoint_wrapper = None")
    (into / "ref_vit.py").write_text(vit)
    sys.path.insert(0, str(into))
    return importlib.import_module("ref_med"), importlib.import_module("ref_vit")


def main(checkout: str) -> None:
    import torchvision.transforms as T
    from transformers import BertTokenizer

    from rewardkit_imagereward import ImageRewardConfig, ImageRewardReward
    from rewardkit_imagereward.model import REWARD_MEAN, REWARD_STD
    from rewardkit_imagereward.preprocess import CLIP_MEAN, CLIP_STD
    from rewardkit_imagereward.testing import build_tiny_imagereward

    work = Path(tempfile.mkdtemp())
    med, vit = load_reference(Path(checkout), work)
    folder = build_tiny_imagereward(work / "tiny", seed=3)
    vcfg = json.loads((folder / "vision_config.json").read_text())
    config = med.BertConfig.from_json_file(str(folder / "med_config.json"))
    config.encoder_width = vcfg["width"]
    blip = torch.nn.Module()
    blip.text_encoder = med.BertModel(config=config, add_pooling_layer=False)
    blip.visual_encoder = vit.VisionTransformer(
        img_size=vcfg["image_size"], patch_size=vcfg["patch_size"], embed_dim=vcfg["width"],
        depth=vcfg["depth"], num_heads=vcfg["heads"])
    state = torch.load(folder / "ImageReward.pt")
    blip.load_state_dict({k[len("blip."):]: v for k, v in state.items()
                          if k.startswith("blip.") and "_proj." not in k}, strict=True)
    rm = ImageRewardReward(ImageRewardConfig(checkpoint=str(folder), output="raw"))
    blip.eval()

    tokenizer = BertTokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    prompts = ["a red cube on the table", "two dogs",
               "a lighthouse at night under the big sky with three green trees and a house and a cat"]
    images = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    preprocess = T.Compose([T.Resize(vcfg["image_size"], interpolation=T.InterpolationMode.BICUBIC),
                            T.CenterCrop(vcfg["image_size"]), T.Normalize(CLIP_MEAN, CLIP_STD)])
    with torch.no_grad():
        text = tokenizer(prompts, padding="max_length", truncation=True, max_length=35,
                         return_tensors="pt")
        image_embeds = blip.visual_encoder(preprocess(images))
        out = blip.text_encoder(text.input_ids, attention_mask=text.attention_mask,
                                encoder_hidden_states=image_embeds,
                                encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long),
                                return_dict=True)
        reference = (rm.model.mlp(out.last_hidden_state[:, 0]).squeeze(-1) - REWARD_MEAN) / REWARD_STD
        plugin = rm(images, prompts)
    print("reference:", reference.tolist())
    print("plugin:   ", plugin.tolist())
    print("max abs difference:", float((reference - plugin).abs().max()))


if __name__ == "__main__":
    main(sys.argv[1])
