"""Webdataset shard specs: brace ranges, ``::`` lists, folders of tars, ``pipe:`` and http URLs.

Expansion uses webdataset's own ``expand_urls`` so a spec means exactly what it means to
webdataset (``data-{00000..00009}.tar``, ``a.tar::b-{0..3}.tar``). Opening is done here rather
than with ``webdataset.gopen`` so that a shard abandoned half-way (a resume, the end of a run)
closes its ``pipe:`` subprocess at once instead of waiting for it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import IO, Sequence
from urllib.parse import urlparse

from ..errors import DataError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def is_remote(url: str) -> bool:
    """True for ``pipe:`` commands and URLs with a scheme (http, https, s3, ...)."""
    if url.startswith("pipe:"):
        return True
    scheme = urlparse(url).scheme
    return len(scheme) > 1  # a one-letter scheme is a Windows drive


def looks_like_shard_spec(spec: str) -> bool:
    """Whether a string names webdataset shards rather than a folder."""
    return (is_remote(spec) or "{" in spec or "::" in spec
            or any(spec.endswith(suffix) for suffix in TAR_SUFFIXES))


def expand_shards(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """The list of shard URLs a spec names; :class:`DataError` naming any local shard that is missing."""
    from webdataset.shardlists import expand_urls  # imported late: webdataset is slow to import

    if isinstance(spec, (str, Path)):
        text = str(spec)
        if not is_remote(text) and Path(text).is_dir():
            urls = sorted(str(p) for p in Path(text).iterdir()
                          if p.is_file() and p.name.endswith(TAR_SUFFIXES))
            if not urls:
                raise DataError(f"no .tar shards in folder {text}")
            return urls
        urls = list(expand_urls(text))
    else:
        urls = [u for item in spec for u in expand_shards(item)]
    if not urls:
        raise DataError(f"shard spec {spec!r} names no shards")
    missing = [u for u in urls if not is_remote(u) and not Path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataError(f"missing shard file{'s' if len(missing) > 1 else ''}: "
                        f"{', '.join(missing[:3])}{more} (from {spec})")
    return urls


class ShardReader:
    """A readable byte stream for one shard; closes files and ends ``pipe:`` processes it started."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.process: subprocess.Popen | None = None
        if url.startswith("pipe:"):
            self.process = subprocess.Popen(url[len("pipe:"):], shell=True, stdout=subprocess.PIPE)
            assert self.process.stdout is not None
            self.stream: IO[bytes] = self.process.stdout
        elif is_remote(url):
            if urlparse(url).scheme not in ("http", "https"):
                raise DataError(f"cannot open {url}: use a pipe: command for this scheme "
                                f"(e.g. 'pipe:aws s3 cp {url} -')")
            self.process = subprocess.Popen(["curl", "--fail", "-s", "-L", url],
                                            stdout=subprocess.PIPE)
            assert self.process.stdout is not None
            self.stream = self.process.stdout
        else:
            self.stream = open(url, "rb")

    def exit_problem(self) -> str | None:
        """After reading to the end: why the command failed, or None when it exited cleanly."""
        if self.process is None:
            return None
        status = self.process.wait()
        return None if status == 0 else f"command exited with status {status}"

    def close(self) -> None:
        """Close the stream; stop the subprocess this reader started if it still runs."""
        self.stream.close()
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
            self.process.wait()
