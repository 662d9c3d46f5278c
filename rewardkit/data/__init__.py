"""Training data for rewardkit: webdataset shards, image folders, pre-encoded latents.

``build_loader(source, resolution=..., batch_size=...)`` returns a :class:`ResumableLoader`: an
endless, seeded, rank-sharded iterator of dict batches whose position saves and restores exactly,
and which skips (and counts) corrupt samples instead of stopping. ``rewardkit data encode`` runs
a teacher's VAE once over a dataset and writes latent shards training can read directly.
``build_prompt_loader(prompts, batch_size=...)`` is the same for prompts alone (a prompt file or
a registered prompt set): batches of ``{"captions": [...]}`` for algorithms that train on the
student's own samples.
See ``docs/data.md``.
"""

from __future__ import annotations

from .encode import encode_dataset
from .image_folder import ImageFolderSource
from .latent_shards import LatentShardSource, LatentShardWriter, read_manifest
from .loader import ResumableLoader, build_loader
from .prompts import PromptLoader, build_prompt_loader
from .sample import CorruptSample, Sample, SampleSource
from .shard_spec import expand_shards
from .transforms import ImageTransform, LatentTransform

__all__ = [
    "build_loader", "ResumableLoader", "Sample", "SampleSource", "CorruptSample",
    "ImageFolderSource", "LatentShardSource", "LatentShardWriter", "read_manifest",
    "expand_shards", "ImageTransform", "LatentTransform", "encode_dataset",
    "build_prompt_loader", "PromptLoader",
]
