"""A folder of images with captions, as a random-access :class:`~rewardkit.data.SampleSource`.

Captions come from one of:

- ``captions.jsonl`` or ``metadata.jsonl`` at the folder's root, one ``{"file_name": ..., "text":
  ...}`` object per line (Hugging Face ``imagefolder`` style; ``"caption"`` works for ``"text"``),
  ``file_name`` relative to the folder;
- otherwise a sidecar text file per image: ``cat.png`` + ``cat.txt``.

Images are found recursively (jpg, jpeg, png, webp, bmp, gif, ppm, tif, tiff) in sorted order,
so indices are stable. An image without a caption, a caption line that is not valid JSON, or a
listed file that is missing are skipped samples, not errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .decode import IMAGE_EXTENSIONS, decode_caption, decode_image
from .sample import CorruptSample, Sample

CAPTION_FILES = ("captions.jsonl", "metadata.jsonl")


@dataclass
class _Entry:
    path: Path
    caption: str | None = None
    problem: CorruptSample | None = None


class ImageFolderSource:
    """Images and captions from a local folder (JSONL captions or sidecar ``.txt`` files)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist")
        self.captions_file = next((self.root / name for name in CAPTION_FILES
                                   if (self.root / name).is_file()), None)
        images = sorted(p for p in self.root.rglob("*")
                        if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS and p.is_file())
        self.entries = (self._entries_from_jsonl(images) if self.captions_file
                        else [_Entry(p) for p in images])
        if not self.entries:
            raise DataError(f"no images found in {self.root} "
                            f"(looked for {', '.join(IMAGE_EXTENSIONS)})")

    def _entries_from_jsonl(self, images: list[Path]) -> list[_Entry]:
        assert self.captions_file is not None
        listed: dict[Path, _Entry] = {}
        broken: list[_Entry] = []
        lines = self.captions_file.read_bytes().splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{self.captions_file.name}:{number}"
            try:
                record = json.loads(line.decode("utf-8"))
                name = record["file_name"]
            except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
                broken.append(_Entry(self.captions_file, problem=CorruptSample(
                    "undecodable caption", f"bad line: {exc!r}", where)))
                continue
            text = record.get("text", record.get("caption"))
            path = self.root / str(name)
            entry = _Entry(path, text.strip() if isinstance(text, str) else None)
            if not path.is_file():
                entry.problem = CorruptSample("missing image file", str(name), f"{name} ({where})")
            listed[path.resolve()] = entry
        unlisted = [_Entry(p) for p in images if p.resolve() not in listed]
        return sorted([*listed.values(), *unlisted], key=lambda e: str(e.path)) + broken

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"ImageFolderSource({str(self.root)!r}, {len(self)} images)"

    def key(self, index: int) -> str:
        """The image's path relative to the folder."""
        path = self.entries[index].path
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def load(self, index: int) -> Sample:
        """The decoded image and caption at ``index``; :class:`CorruptSample` if unusable."""
        entry = self.entries[index]
        key = self.key(index)
        if entry.problem is not None:
            raise entry.problem
        caption = entry.caption
        if caption is None and self.captions_file is None:
            sidecar = entry.path.with_suffix(".txt")
            if sidecar.is_file():
                caption = decode_caption(sidecar.read_bytes(), key)
        if caption is None:
            raise CorruptSample("missing caption", "", key)
        try:
            data = entry.path.read_bytes()
        except OSError as exc:
            raise CorruptSample("unreadable file", str(exc), key) from None
        return Sample(caption=caption, image=decode_image(data, key), key=key)
