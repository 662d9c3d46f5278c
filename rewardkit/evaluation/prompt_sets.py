"""Prompt sets: the prompts an evaluation samples, a category per prompt, optional references.

``--prompts`` is either a registered prompt set (``hpsv2``, ``partiprompts``, ``drawbench``,
``coco``, ``world``; any plugin can add one with ``register_prompt_sets``) or a file:

- ``.txt``: one prompt per line (blank lines and lines starting with ``#`` skipped);
- ``.jsonl``: one object per line with ``prompt`` (or ``caption`` / ``text``) and optionally
  ``category``;
- ``.json``: a list of prompts, a list of such objects, or ``{category: [prompts]}``;
- ``.csv`` / ``.tsv``: a header row with a prompt column (``prompt``, ``prompts`` or
  ``caption``, any case) and optionally ``category``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError

PROMPT_KEYS = ("prompt", "prompts", "caption", "text")


@dataclass
class PromptSet:
    """What an evaluation samples: ``prompts`` with one ``categories`` entry each ("" if none).

    ``references(side)``, when set, returns ``[N, 3, side, side]`` real images in [0, 1] for
    the distribution metrics (FID); ``source`` says where the prompts came from (for the report).
    """

    name: str
    prompts: list[str]
    categories: list[str] = field(default_factory=list)
    references: Callable[[int], torch.Tensor] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not self.prompts:
            where = f" (read from {self.source})" if self.source else ""
            raise ConfigError(f"prompt set '{self.name}' has no prompts{where}")
        if not self.categories:
            self.categories = [""] * len(self.prompts)
        if len(self.categories) != len(self.prompts):
            raise ConfigError(f"prompt set '{self.name}' has {len(self.prompts)} prompts but "
                              f"{len(self.categories)} categories")

    def head(self, limit: int | None) -> "PromptSet":
        """The first ``limit`` prompts of every category, in order (all when ``None``)."""
        if limit is None:
            return self
        if limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {limit}")
        seen: dict[str, int] = {}
        keep = []
        for index, category in enumerate(self.categories):
            seen[category] = seen.get(category, 0) + 1
            if seen[category] <= limit:
                keep.append(index)
        references = self.references
        if references is not None and len(keep) != len(self.prompts):
            full = references
            references = lambda side: full(side)[keep]  # noqa: E731
        return PromptSet(self.name, [self.prompts[i] for i in keep],
                         [self.categories[i] for i in keep], references, self.source)


def _prompt_of(row: dict[str, Any], where: str) -> str:
    lowered = {str(k).strip().lower(): v for k, v in row.items()}
    for key in PROMPT_KEYS:
        if isinstance(lowered.get(key), str) and lowered[key].strip():
            return lowered[key].strip()
    raise ConfigError(f"{where} has no prompt field (one of {', '.join(PROMPT_KEYS)})")


def _category_of(row: dict[str, Any]) -> str:
    lowered = {str(k).strip().lower(): v for k, v in row.items()}
    value = lowered.get("category", "")
    return str(value).strip() if value is not None else ""


def read_prompt_set(path: str | Path, name: str | None = None) -> PromptSet:
    """A :class:`PromptSet` from a text, JSONL, JSON, CSV or TSV file (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist; pass a registered prompt set "
                          "(rewardkit list prompts) or a .txt/.jsonl/.json/.csv/.tsv file")
    suffix = path.suffix.lower()
    prompts: list[str] = []
    categories: list[str] = []
    try:
        if suffix == ".jsonl":
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                where = f"{path} line {number}"
                if isinstance(row, str):
                    prompts.append(row)
                    categories.append("")
                    continue
                if not isinstance(row, dict):
                    raise ConfigError(f"{where} is neither a prompt nor an object")
                prompts.append(_prompt_of(row, where))
                categories.append(_category_of(row))
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                bad = [k for k, v in data.items() if not isinstance(v, list)]
                if bad:
                    raise ConfigError(f"{path}: category '{bad[0]}' maps to "
                                      f"{type(data[bad[0]]).__name__}, not a list of prompts")
            elif not isinstance(data, list):
                raise ConfigError(f"{path} holds a {type(data).__name__}; expected a list of "
                                  "prompts or {category: [prompts]}")
            items = ([(category, p) for category, values in data.items() for p in values]
                     if isinstance(data, dict) else [("", item) for item in data])
            for index, (category, item) in enumerate(items):
                if isinstance(item, str):
                    prompts.append(item)
                    categories.append(str(category))
                elif isinstance(item, dict):
                    prompts.append(_prompt_of(item, f"{path} entry {index}"))
                    categories.append(_category_of(item) or str(category))
                else:
                    raise ConfigError(f"{path} entry {index} is neither a prompt nor an object")
        elif suffix in (".csv", ".tsv"):
            with path.open(encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
                for number, row in enumerate(reader, 2):
                    prompts.append(_prompt_of(row, f"{path} row {number}"))
                    categories.append(_category_of(row))
        else:
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    prompts.append(line.strip())
                    categories.append("")
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"prompt file {path} cannot be read ({exc}); fix or replace it") from None
    return PromptSet(name or path.stem, prompts, categories, source=str(path))


def fetch_dataset_file(source: str, filename: str) -> Path:
    """A file of a hub *dataset* repository (``source`` is its id), through the hub cache.

    Uses ``huggingface_hub.hf_hub_download(..., repo_type="dataset")``, which honours
    ``HF_HUB_OFFLINE`` and the local cache, as every other hub download in the toolkit does.
    """
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, filename, repo_type="dataset"))
    except Exception as exc:  # offline, unknown repo or file: one sentence, the culprit named
        raise ConfigError(f"cannot fetch {filename} from the hub dataset '{source}' "
                          f"({type(exc).__name__}); download it and pass its local path as "
                          "source") from None


def split_prompt_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"NAME?key=value&..."`` -> ``("NAME", {key: value})``: a registered set's parameters
    in one string (for config keys such as a recipe's training prompts); integer values
    become ints."""
    name, _, query = spec.partition("?")
    params: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"prompt set spec {spec!r}: '{part}' is not key=value")
        params[key] = int(value) if value.lstrip("-").isdigit() else value
    return name, params


def check_prompt_spec(key: str, spec: str) -> None:
    """Before anything loads: ``spec`` (config key ``key``) names a registered prompt set
    (optionally ``NAME?key=value&...``) or an existing prompt file."""
    from ..plugins import get_host

    if not spec:
        raise ConfigError(f"{key} is required: a registered prompt set or a prompt file")
    name, _ = split_prompt_spec(spec)
    if name in {c.name for c in get_host().list("prompts")}:
        return
    if not Path(spec).expanduser().is_file():
        raise ConfigError(f"{key}: {spec!r} is neither a registered prompt set (see `rewardkit "
                          "list prompts`) nor an existing prompt file")


def load_prompt_set(spec: str, source: str | None = None, limit: int | None = None,
                    option: str = "--prompts", **params: Any) -> PromptSet:
    """A registered prompt set by name (``source``, ``limit`` and ``params`` go to its
    factory) or a prompt file (``limit`` keeps the first N prompts of each category).
    ``option`` names where ``spec`` came from in the error an unknown spec raises."""
    from ..plugins import get_host

    names = [component.name for component in get_host().list("prompts")]
    spec, query = split_prompt_spec(spec)
    params = {**query, **params}
    if spec in names:
        given = {k: v for k, v in (("source", source), ("limit", limit)) if v is not None}
        return get_host().get("prompts", spec).build(**given, **params).load()
    if Path(spec).suffix or Path(spec).exists():
        if source is not None or params:
            raise ConfigError(f"prompt file {spec} takes no source or parameters")
        return read_prompt_set(spec).head(limit)
    raise ConfigError(f"{option} {spec!r} is neither a registered prompt set "
                      f"({', '.join(sorted(names)) or 'none'}) nor a file")


def combine_sets(name: str, parts: Sequence[tuple[str, list[str]]], source: str) -> PromptSet:
    """A prompt set from ``(category, prompts)`` parts, in order."""
    prompts = [p for _, values in parts for p in values]
    categories = [category for category, values in parts for _ in values]
    return PromptSet(name, prompts, categories, source=source)
