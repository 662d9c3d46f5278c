"""The named prompt sets of the papers' evaluations: HPSv2 benchmark, PartiPrompts, DrawBench,
COCO captions.

Each takes ``source``: a local file or folder, or a hub dataset id (downloaded with
``huggingface_hub.snapshot_download(repo_type="dataset")`` into the hub cache, so
``HF_HUB_OFFLINE=1`` with a filled cache works offline); the default is the dataset the papers'
code reads at the time of writing. ``limit`` keeps the first N prompts of every category.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .prompt_sets import PromptSet, combine_sets, read_prompt_set

PROMPT_FILES = ("*.json", "*.jsonl", "*.tsv", "*.csv", "*.txt", "*.parquet")


def resolve_source(source: str, patterns: tuple[str, ...] = PROMPT_FILES) -> Path:
    """A local path as given; otherwise ``source`` is a hub dataset id, fetched (files matching
    ``patterns`` only) into the hub cache."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ConfigError(f"prompt source {source} does not exist (nor is it a hub dataset id "
                          "like owner/name); pass the folder or file")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, repo_type="dataset",
                                      allow_patterns=[f"**/{p}" for p in patterns] + list(patterns)))
    except Exception as exc:  # offline, unknown repo: one sentence naming it
        raise ConfigError(f"cannot fetch the hub dataset '{source}' ({type(exc).__name__}); "
                          "download it and pass its local folder as source") from None


def _read_any(path: Path, name: str) -> PromptSet:
    if path.suffix.lower() != ".parquet":
        return read_prompt_set(path, name)
    try:
        import pandas
    except ImportError:
        raise ConfigError(f"{path} is parquet, which needs pandas and pyarrow (pip install "
                          "pandas pyarrow); or pass a .tsv/.csv/.json copy as source") from None
    frame = pandas.read_parquet(path)
    rows = frame.to_dict("records")
    from .prompt_sets import _category_of, _prompt_of

    return PromptSet(name, [_prompt_of(r, f"{path} row {i}") for i, r in enumerate(rows)],
                     [_category_of(r) for r in rows], source=str(path))


def _files(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        found += sorted(p for p in folder.rglob(pattern) if not any(
            part.startswith(".") for part in p.relative_to(folder).parts))
    return found


class _FileSet:
    """A prompt set read from one table (PartiPrompts, DrawBench): a file, or the first
    table in a folder / hub dataset."""

    name = "file-set"
    default_source = ""

    def __init__(self, source: str | None = None, limit: int | None = None) -> None:
        self.source = source or self.default_source
        self.limit = limit

    def load(self) -> PromptSet:
        """Read the set (see the class doc)."""
        path = resolve_source(self.source)
        files = [path] if path.is_file() else _files(path, PROMPT_FILES)
        files = [f for f in files if f.name.lower() not in ("readme.md",)]
        if not files:
            raise ConfigError(f"{self.name}: no prompt table (.tsv/.csv/.json/.jsonl/.parquet) in "
                              f"{path}")
        loaded = _read_any(files[0], self.name)
        loaded.source = self.source
        return loaded.head(self.limit)


class PartiPrompts(_FileSet):
    """PartiPrompts (P2, Yu et al. 2022): ~1600 prompts with a ``Category`` each (per-category
    breakdown). ``source``: the ``PartiPrompts.tsv`` of google-research/parti, or a hub dataset
    holding it.

    Args:
        source: a local file/folder or hub dataset id (default ``nateraw/parti-prompts``).
        limit: keep the first N prompts of each category.
    """

    name = "partiprompts"
    default_source = "nateraw/parti-prompts"


class DrawBench(_FileSet):
    """DrawBench (Saharia et al. 2022): 200 prompts in 11 categories (a CSV with ``Prompts``
    and ``Category``).

    Args:
        source: a local file/folder or hub dataset id (default ``sayakpaul/drawbench``).
        limit: keep the first N prompts of each category.
    """

    name = "drawbench"
    default_source = "sayakpaul/drawbench"


class HPSv2Benchmark:
    """The HPSv2 benchmark prompts (Wu et al. 2023): four styles, ``anime``, ``concept-art``,
    ``paintings``, ``photo`` (800 prompts each), as the HPSv2 code reads them: one JSON list
    per style, ``benchmark/<style>.json`` of the HPDv2 dataset. The category is the style, so
    the report breaks every metric down per style as the paper's tables do.

    Args:
        source: a folder with the four ``<style>.json`` files (at its root or in
            ``benchmark/``), or a hub dataset id (default ``zhwang/HPDv2``).
        limit: keep the first N prompts of each style.
    """

    name = "hpsv2"
    STYLES = ("anime", "concept-art", "paintings", "photo")

    def __init__(self, source: str | None = None, limit: int | None = None) -> None:
        self.source = source or "zhwang/HPDv2"
        self.limit = limit

    def load(self) -> PromptSet:
        """Read the four styles (all must be present)."""
        folder = resolve_source(self.source, tuple(f"{s}.json" for s in self.STYLES))
        parts = []
        for style in self.STYLES:
            candidates = [folder / "benchmark" / f"{style}.json", folder / f"{style}.json"]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise ConfigError(f"hpsv2: {style}.json is missing from {folder} (expected "
                                  f"{' or '.join(str(c) for c in candidates)})")
            parts.append((style, read_prompt_set(found).prompts))
        return combine_sets(self.name, parts, self.source).head(self.limit)


class COCOCaptions:
    """COCO captions (the paper's FID protocol: captions of COCO-2014 val images, one per image).

    ``source`` is a ``captions_val2014.json`` annotation file (or a folder holding it);
    ``limit`` images are drawn with ``seed``, one caption each. With ``image_dir`` (the
    ``val2014`` image folder) the set carries those images, centre-cropped and resized, as the
    FID reference.

    Args:
        source: the captions JSON or its folder.
        limit: how many images (captions) to draw (default 1000; the paper uses 30k... as
            ``limit=30000``).
        seed: the draw's seed.
        image_dir: the COCO images, for FID references.
    """

    name = "coco"

    def __init__(self, source: str | None = None, limit: int = 1000, seed: int = 0,
                 image_dir: str | None = None) -> None:
        if source is None:
            raise ConfigError("prompts coco needs source=<captions_val2014.json> (COCO's "
                              "annotations are not on the hub as one file)")
        self.source, self.limit, self.seed, self.image_dir = source, limit, seed, image_dir

    def load(self) -> PromptSet:
        """Draw the captions (and bind the reference images)."""
        path = Path(self.source)
        if path.is_dir():
            matches = sorted(path.rglob("captions_*.json"))
            if not matches:
                raise ConfigError(f"coco: no captions_*.json in {path}")
            path = matches[0]
        if not path.is_file():
            raise ConfigError(f"coco: {path} does not exist; pass captions_val2014.json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            annotations = data["annotations"]
            files = {image["id"]: image.get("file_name") for image in data.get("images", [])}
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"coco: {path} is not a COCO captions file ({exc})") from None
        first: dict[int, str] = {}
        for entry in annotations:
            first.setdefault(int(entry["image_id"]), str(entry["caption"]).strip())
        ids = sorted(first)
        random.Random(self.seed).shuffle(ids)
        ids = ids[:self.limit]
        references = None
        if self.image_dir is not None:
            image_dir = Path(self.image_dir)
            names = [files.get(i) or f"COCO_val2014_{i:012d}.jpg" for i in ids]
            missing = [n for n in names if not (image_dir / n).is_file()]
            if missing:
                raise ConfigError(f"coco: {len(missing)} reference images are missing from "
                                  f"{image_dir}, e.g. {missing[0]}")
            references = lambda side: load_images([image_dir / n for n in names], side)  # noqa: E731
        return PromptSet(self.name, [first[i] for i in ids], ["coco"] * len(ids), references,
                         source=str(path))


def load_images(paths: list[Path], side: int) -> torch.Tensor:
    """``[N, 3, side, side]`` in [0, 1]: each image centre-cropped to a square, then resized."""
    from PIL import Image

    from ..sampling import pil_to_tensor

    squares = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            short = min(image.size)
            left, top = (image.width - short) // 2, (image.height - short) // 2
            squares.append(image.crop((left, top, left + short, top + short)).resize(
                (side, side), Image.BICUBIC))
    return pil_to_tensor(squares)


BUILTIN_PROMPT_SETS: tuple[Any, ...] = (HPSv2Benchmark, PartiPrompts, DrawBench, COCOCaptions)
