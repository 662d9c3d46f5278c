"""Pre-encoded latent shards: the folder ``rewardkit data encode`` writes and training reads.

Layout of ``OUT_DIR``::

    manifest.json                 # written last: its presence marks a complete dataset
    latents-00000.safetensors     # tensor "latents" [n, C, h, w]; metadata "captions", "keys" (JSON lists)
    latents-00001.safetensors
    ...

``manifest.json`` holds ``format`` ("rewardkit-latents"), ``version``, ``count``,
``latent_shape`` ([C, h, w]), ``scaling_factor`` (latents are stored already multiplied by it),
``dtype``, ``resolution``, ``center_crop``, ``seed``, ``source``, ``teacher``, ``skipped`` (counts by
reason from encoding) and ``shards`` ([{"file", "count"}]).
"""

from __future__ import annotations

import bisect
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ConfigError, DataError
from ..files import follow_umask
from .sample import CorruptSample, Sample

MANIFEST = "manifest.json"
#: A shard's file name (or its temporary name while it is written).
_SHARD_FILE = re.compile(r"^latents-\d{5,}\.safetensors(\.tmp)?$")
FORMAT = "rewardkit-latents"
VERSION = 1
REQUIRED_FIELDS = ("count", "latent_shape", "scaling_factor", "shards")


def is_latent_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a latent ``manifest.json``."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The validated manifest of a latent folder; :class:`DataError` naming the file otherwise."""
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: not a latent folder written by "
                        "`rewardkit data encode`") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read latent manifest {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a rewardkit latent manifest (format must be {FORMAT!r})")
    missing = [name for name in REQUIRED_FIELDS if name not in manifest]
    if missing:
        raise DataError(f"latent manifest {path} lacks {', '.join(missing)}")
    if manifest.get("version", VERSION) > VERSION:
        raise DataError(f"latent manifest {path} has version {manifest['version']}; this "
                        f"rewardkit reads version {VERSION} (upgrade rewardkit)")
    return manifest


class LatentShardSource:
    """Random access to the latents and captions of a folder written by ``rewardkit data encode``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise DataError(f"latent folder {self.root} does not exist")
        self.manifest = read_manifest(self.root)
        self.scaling_factor = float(self.manifest["scaling_factor"])
        self.latent_shape = tuple(int(d) for d in self.manifest["latent_shape"])
        self.resolution = self.manifest.get("resolution")
        self.shards = [(str(s["file"]), int(s["count"])) for s in self.manifest["shards"]]
        self.offsets = [0]
        for _, count in self.shards:
            self.offsets.append(self.offsets[-1] + count)
        if self.offsets[-1] == 0:
            raise DataError(f"latent folder {self.root} holds no samples (manifest count 0)")
        self._handles: dict[int, Any] = {}
        self._meta: dict[int, tuple[list[str], list[str]]] = {}
        self._lock = threading.Lock()

    @property
    def vae_scaling_factor(self) -> float:
        """The VAE scaling factor the stored latents were multiplied by."""
        return self.scaling_factor

    def __len__(self) -> int:
        return self.offsets[-1]

    def __repr__(self) -> str:
        return f"LatentShardSource({str(self.root)!r}, {len(self)} latents {self.latent_shape})"

    def _open(self, shard: int) -> tuple[Any, list[str], list[str]]:
        with self._lock:
            if shard not in self._handles:
                file = self.root / self.shards[shard][0]
                try:
                    handle = safe_open(str(file), framework="pt")
                    meta = handle.metadata() or {}
                    captions = json.loads(meta.get("captions", "[]"))
                    keys = json.loads(meta.get("keys", "[]"))
                    self._handles[shard] = handle
                    self._meta[shard] = (captions, keys)
                except Exception as exc:  # missing or truncated file: every sample in it is skipped
                    self._handles[shard] = CorruptSample("unreadable latent shard",
                                                        f"{file.name}: {exc}", file.name)
            handle = self._handles[shard]
            if isinstance(handle, CorruptSample):
                raise handle
            return (handle, *self._meta[shard])

    def load(self, index: int) -> Sample:
        """The latents ``[C, h, w]`` (already scaled) and caption at ``index``."""
        shard = bisect.bisect_right(self.offsets, index) - 1
        row = index - self.offsets[shard]
        handle, captions, keys = self._open(shard)
        key = keys[row] if row < len(keys) else f"{self.shards[shard][0]}#{row}"
        try:
            with self._lock:
                latents = handle.get_slice("latents")[row:row + 1]
        except Exception as exc:
            raise CorruptSample("unreadable latents", str(exc), key) from None
        latents = latents[0]
        if tuple(latents.shape) != self.latent_shape:
            raise CorruptSample("wrong latent shape",
                                f"{tuple(latents.shape)} != manifest {self.latent_shape}", key)
        if not torch.isfinite(latents).all():
            raise CorruptSample("non-finite latents", "", key)
        if row >= len(captions) or not isinstance(captions[row], str):
            raise CorruptSample("missing caption", "", key)
        return Sample(caption=captions[row], latents=latents, key=key)


def check_encode_output(root: str | Path) -> None:
    """Refuse, before anything loads, an output folder an encode would lose data in: one that
    holds a finished latent dataset (:data:`MANIFEST`), is a file, or holds files an encode does
    not write (the shards of an interrupted encode, written again, are its own)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output folder '{root}' is a file; choose an empty or new folder")
    if (root / MANIFEST).exists():
        raise DataError(f"{root} already holds a latent dataset ({MANIFEST}); "
                        "choose an empty output folder")
    if root.is_dir():
        foreign = sorted(p.name for p in root.iterdir()
                         if not _SHARD_FILE.match(p.name) and p.name != MANIFEST + ".tmp")
        if foreign:
            raise ConfigError(f"output folder '{root}' holds files an encode did not write "
                              f"({', '.join(foreign[:4])}{', ...' if len(foreign) > 4 else ''}); "
                              "choose an empty or new folder")


class LatentShardWriter:
    """Writes latents and captions into shards, then the manifest (atomically, last)."""

    def __init__(self, root: str | Path, shard_size: int = 1000, dtype: torch.dtype = torch.float32,
                 **manifest_fields: Any) -> None:
        self.root = Path(root)
        check_encode_output(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.dtype = dtype
        self.fields = manifest_fields
        self.shards: list[dict[str, Any]] = []
        self.latent_shape: tuple[int, ...] | None = None
        self._latents: list[torch.Tensor] = []
        self._captions: list[str] = []
        self._keys: list[str] = []

    @property
    def count(self) -> int:
        """Samples written so far (flushed or pending)."""
        return sum(s["count"] for s in self.shards) + len(self._captions)

    def add(self, latents: torch.Tensor, captions: list[str], keys: list[str]) -> None:
        """Append a batch ``[B, C, h, w]`` with its captions and keys."""
        if self.latent_shape is None:
            self.latent_shape = tuple(latents.shape[1:])
        for row, caption, key in zip(latents.detach().to("cpu", self.dtype), captions, keys):
            self._latents.append(row)
            self._captions.append(caption)
            self._keys.append(key)
            if len(self._captions) >= self.shard_size:
                self._flush()

    def _flush(self) -> None:
        if not self._captions:
            return
        name = f"latents-{len(self.shards):05d}.safetensors"
        tmp = self.root / (name + ".tmp")
        save_file({"latents": torch.stack(self._latents).contiguous()}, str(tmp),
                  metadata={"captions": json.dumps(self._captions),
                            "keys": json.dumps(self._keys)})
        follow_umask(tmp)  # safetensors writes 0600: a colleague could not read the shard
        os.replace(tmp, self.root / name)
        self.shards.append({"file": name, "count": len(self._captions)})
        self._latents, self._captions, self._keys = [], [], []

    def finish(self, **more_fields: Any) -> Path:
        """Flush the last shard and write ``manifest.json``; returns its path."""
        self._flush()
        manifest = {"format": FORMAT, "version": VERSION, "count": self.count,
                    "latent_shape": list(self.latent_shape or ()),
                    "dtype": str(self.dtype).replace("torch.", ""),
                    **self.fields, **more_fields, "shards": self.shards}
        path = self.root / MANIFEST
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, path)
        return path
