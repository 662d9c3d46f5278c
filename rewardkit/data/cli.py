"""``rewardkit data ...``: commands that prepare training data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console

from ..errors import ConfigError

data_app = typer.Typer(help="Prepare training data (encode a dataset to latents once).",
                       no_args_is_help=True)
console = Console()

LATENT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@data_app.command("encode")
def encode_command(
    source: str = typer.Argument(..., help="Webdataset shards (path, brace range, pipe: URL) or an "
                                           "image folder with captions."),
    out_dir: Path = typer.Argument(..., help="Empty folder for the latent shards and manifest.json."),
    teacher: str = typer.Option(..., "--teacher", help="The teacher: hub id or local pipeline folder."),
    resolution: int = typer.Option(512, help="Pixels per side after resize and crop."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per VAE call."),
    backbone: str = typer.Option("stable-diffusion", help="Backbone that loads the teacher."),
    center_crop: bool = typer.Option(True, "--center-crop/--random-crop",
                                     help="Crop the centre (default) or a seeded random square."),
    seed: int = typer.Option(0, help="Seeds the VAE posterior sample (and random crops)."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Latents per safetensors file."),
    limit: Optional[int] = typer.Option(None, help="Stop after this many latents."),
    latent_dtype: str = typer.Option("float32", "--latent-dtype",
                                     help="Storage dtype: float32, float16 or bfloat16."),
    device: Optional[str] = typer.Option(None, help="Device for the VAE (e.g. cuda); "
                                                    "the backbone's default when omitted."),
    dtype: Optional[str] = typer.Option(None, help="Weight dtype for the teacher (e.g. float16)."),
    revision: Optional[str] = typer.Option(None, help="Hub revision of the teacher."),
    variant: Optional[str] = typer.Option(None, help="Weight variant of the teacher (e.g. fp16)."),
) -> None:
    """Run the teacher's VAE once over a dataset and write latent shards training reads directly."""
    from ..plugins import get_host
    from .encode import encode_dataset
    from .latent_shards import check_encode_output

    for name, value in (("resolution", resolution), ("batch-size", batch_size),
                        ("shard-size", shard_size)):
        if value < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {value}")
    if latent_dtype not in LATENT_DTYPES:
        raise ConfigError(f"--latent-dtype must be one of {', '.join(LATENT_DTYPES)}, got {latent_dtype!r}")
    check_encode_output(out_dir)  # before the teacher loads
    options = {"device": device, "dtype": dtype, "revision": revision, "variant": variant}
    model = get_host().get("backbone", backbone).build(
        pretrained_model_name_or_path=teacher, **{k: v for k, v in options.items() if v is not None})
    manifest, skips = encode_dataset(
        source, out_dir, model, resolution=resolution, batch_size=batch_size,
        center_crop=center_crop, seed=seed, shard_size=shard_size, limit=limit,
        latent_dtype=LATENT_DTYPES[latent_dtype], teacher=teacher, progress=True)
    console.print(skips.summary(source), highlight=False)
    console.print(f"[green]wrote[/] {manifest}", highlight=False)
