"""Reading webdataset samples from a tar stream: members grouped by key, as raw bytes.

A sample is the run of consecutive members sharing a key, webdataset's rule: the key is the
member's path up to the first dot of its file name, the extension (lower-cased) the rest
(``00042.jpg``, ``00042.txt`` -> key ``00042``, extensions ``jpg`` and ``txt``). Nothing is decoded
here; a tar that breaks off yields one :class:`CorruptSample` and ends.
"""

from __future__ import annotations

import re
import tarfile
from typing import IO, Iterator

from .sample import CorruptSample

_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")

RawSample = tuple[str, "dict[str, bytes] | CorruptSample"]


def split_key(name: str) -> tuple[str, str] | None:
    """``("dir/00042", "jpg")`` for ``"dir/00042.jpg"``; None for names without an extension."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def iter_tar_samples(stream: IO[bytes], where: str) -> Iterator[RawSample]:
    """Yield ``(key, {extension: bytes})`` per sample, or ``(where, CorruptSample)`` when the tar breaks."""
    key: str | None = None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                parts = split_key(info.name)
                if parts is None or "/." in "/" + info.name:  # no extension, or a hidden file
                    continue
                member_key, ext = parts
                if member_key != key:
                    if key is not None:
                        yield key, members
                    key, members = member_key, {}
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                if len(data) != info.size:  # tarfile's stream mode ends quietly on a short file
                    raise EOFError(f"{info.name} is cut short ({len(data)} of {info.size} bytes)")
                members[ext] = data
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        # The sample being assembled when the tar broke is lost with the rest of the shard.
        yield f"{where}:{key or '?'}", CorruptSample("unreadable shard", f"{where}: {exc}", where)
        return
    if key is not None:
        yield key, members
