"""Prompt-only training data: an endless, seeded, rank-sharded, resumable stream of caption batches.

Algorithms that train a student on its *own* samples (reward back-propagation through the
sampler, reward-weighted regression, online preference learning) need prompts, not images.
:func:`build_prompt_loader` reads them the way ``rewardkit eval --prompts`` does (a registered
prompt set, or a ``.txt`` / ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` file; see
:mod:`rewardkit.evaluation.prompt_sets`) and hands them out like the image loaders hand out
images::

    loader = build_prompt_loader("prompts.jsonl", batch_size=8, seed=0,
                                 rank=accelerator.process_index,
                                 world_size=accelerator.num_processes)
    batch = next(loader)         # {"captions": [...8 prompts], "categories": [...], "keys": [...]}
    state = loader.state_dict()  # plain JSON, one per rank; load_state_dict(state) resumes exactly

Order and sharding are the image loaders' (:class:`~rewardkit.data.cursors.IndexCursor`): epoch
``e`` is a permutation drawn from ``(seed, e)``, rank ``r`` of ``W`` takes every ``W``-th prompt
of it, so within an epoch the ranks together visit every prompt exactly once; a batch that runs
past the end of a rank's share continues into the next epoch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ConfigError, DataError
from .cursors import IndexCursor
from .sample import Sample

if TYPE_CHECKING:
    from ..evaluation.prompt_sets import PromptSet

STATE_VERSION = 1


@dataclass
class _Prompt(Sample):
    """One prompt of the set, with its category and its index in the set."""

    category: str = ""
    index: int = 0


class _PromptSource:
    """A :class:`~rewardkit.data.SampleSource` of the prompts of a :class:`PromptSet`."""

    def __init__(self, prompt_set: "PromptSet") -> None:
        self.prompt_set = prompt_set

    def __len__(self) -> int:
        return len(self.prompt_set.prompts)

    def key(self, index: int) -> str:
        return f"{self.prompt_set.name}:{index}"

    def load(self, index: int) -> _Prompt:
        return _Prompt(caption=self.prompt_set.prompts[index], key=self.key(index),
                       category=self.prompt_set.categories[index], index=index)


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


class PromptLoader:
    """An endless iterator of prompt batches whose position saves and restores exactly.

    Build it with :func:`build_prompt_loader`. Each batch is a dict with ``"captions"`` (the
    prompts, ``batch_size`` of them), ``"categories"`` (each prompt's category, ``""`` if the set
    has none) and ``"keys"`` (``"<set name>:<index in the set>"``), so the loops written for the
    image loaders (which read ``batch["captions"]``) take it unchanged.
    """

    def __init__(self, prompt_set: "PromptSet", *, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        _check_positive("batch_size", batch_size)
        _check_positive("world_size", world_size)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        self.prompt_set = prompt_set
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        where = (f" ({prompt_set.source})" if prompt_set.source
                 and prompt_set.source != prompt_set.name else "")
        #: What the loader reads, for messages and for the saved position.
        self.describe = f"prompt set '{prompt_set.name}'{where}"
        digest = hashlib.blake2b(digest_size=8)
        for prompt, category in zip(prompt_set.prompts, prompt_set.categories):
            digest.update(f"{category}\t{prompt}\n".encode("utf-8"))
        #: A fingerprint of the prompts: resuming on edited prompts is refused.
        self.digest = digest.hexdigest()
        self.cursor = IndexCursor(_PromptSource(prompt_set), self.seed, rank, world_size,
                                  self.describe)

    # ------------------------------------------------------------ what it reads

    def __len__(self) -> int:
        """The number of prompts in the whole set (all ranks)."""
        return len(self.prompt_set.prompts)

    @property
    def epoch(self) -> int:
        """The epoch the next prompt comes from (counted per rank)."""
        cursor = self.cursor  # it moves to the next epoch only when asked for the next prompt
        return cursor.epoch + int(cursor.position >= len(cursor.order(cursor.epoch)))

    @property
    def samples_per_epoch(self) -> int:
        """Prompts this rank visits per epoch (the same every epoch)."""
        return len(self.cursor.order(self.cursor.epoch))

    # ------------------------------------------------------------ iteration

    def __iter__(self) -> "PromptLoader":
        return self

    def __next__(self) -> dict[str, list[str]]:
        captions: list[str] = []
        categories: list[str] = []
        keys: list[str] = []
        for _ in range(self.batch_size):
            item = self.cursor.next()
            prompt = item.load()
            self.cursor.guard.mark_good(item.epoch)
            captions.append(prompt.caption)
            categories.append(prompt.category)
            keys.append(item.where)
        self.cursor.guard.check(self.cursor.epoch)  # forgets finished epochs (state stays small)
        return {"captions": captions, "categories": categories, "keys": keys}

    # ------------------------------------------------------------ resuming

    def state_dict(self) -> dict[str, Any]:
        """This rank's exact position (plain JSON-serialisable values)."""
        return {"version": STATE_VERSION, "kind": "prompts", "source": self.describe,
                "digest": self.digest, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "position": self.cursor.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by :meth:`state_dict` on the same prompts and rank."""
        if state.get("kind") != "prompts":
            raise DataError(f"cannot resume the prompt loader from a position saved by a "
                            f"{state.get('kind')!r} loader")
        if state.get("digest") != self.digest:
            raise DataError(f"cannot resume data position: it was saved reading "
                            f"{state.get('source')!r}, whose prompts differ from those of "
                            f"{self.describe}; resume with the same prompts, or start a new run")
        for name in ("seed", "rank", "world_size"):
            if state.get(name) != getattr(self, name):
                raise DataError(f"cannot resume data position: it was saved with {name}="
                                f"{state.get(name)!r}, this loader has {name}="
                                f"{getattr(self, name)!r}")
        self.cursor.load_state_dict(state["position"])

    # ------------------------------------------------------------ the loader interface

    def report(self) -> str:
        """Where the loader is."""
        return (f"{self.describe}: {len(self)} prompts, rank {self.rank}/{self.world_size}, "
                f"epoch {self.epoch}")

    def close(self) -> None:
        """Nothing to release (the loaders' interface)."""

    def __enter__(self) -> "PromptLoader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"PromptLoader({self.describe}, batch_size={self.batch_size}, "
                f"rank {self.rank}/{self.world_size})")


def build_prompt_loader(prompts: "str | Path | PromptSet | Sequence[str]", *, batch_size: int,
                        seed: int = 0, rank: int = 0, world_size: int = 1,
                        source: str | None = None, limit: int | None = None,
                        **params: Any) -> PromptLoader:
    """An infinite, resumable loader of prompt batches for this data-parallel rank.

    Args:
        prompts: a prompt set registered through the ``prompts`` hook (``rewardkit list
            prompts``: ``hpsv2``, ``partiprompts``, ``drawbench``, ``coco``, ``world``, any
            plugin's), a prompt file (``.txt`` one prompt per line; ``.jsonl`` / ``.json`` /
            ``.csv`` / ``.tsv`` with a ``prompt``, ``caption`` or ``text`` field), both read
            exactly as ``rewardkit eval --prompts`` reads them, a
            :class:`~rewardkit.evaluation.PromptSet`, or a list of prompts.
        batch_size: prompts per batch.
        seed: seeds every epoch's order (use the same on every rank).
        rank: this process's rank; ranks read disjoint prompts within an epoch.
        world_size: the number of processes.
        source: a registered set's source (``rewardkit eval --prompts-source``).
        limit: the first ``limit`` prompts of each category, of a set or a file
            (``rewardkit eval --limit``).
        **params: a registered set's own parameters (``rewardkit eval --prompts-param``).

    A missing file, an unknown set name or a set without prompts raises
    :class:`~rewardkit.errors.ConfigError` naming it; a set with fewer prompts than ranks raises
    :class:`~rewardkit.errors.DataError`.
    """
    from ..evaluation.prompt_sets import PromptSet, load_prompt_set

    if isinstance(prompts, PromptSet):
        if source is not None or params:
            raise ConfigError(f"prompts: a built prompt set ('{prompts.name}') takes no source "
                              "or parameters")
        prompt_set = prompts.head(limit)
    elif isinstance(prompts, (str, Path)):
        if not str(prompts).strip():
            raise ConfigError("prompts: an empty name; pass a registered prompt set or a file")
        prompt_set = load_prompt_set(str(prompts), source=source, limit=limit, option="prompts",
                                     **params)
    else:
        items = list(prompts)
        bad = [item for item in items if not isinstance(item, str) or not item.strip()]
        if bad:
            raise ConfigError(f"prompts: {bad[0]!r} in the given list is not a prompt")
        if not items:
            raise ConfigError("prompts: the given list holds no prompts")
        if source is not None or params:
            raise ConfigError("prompts: a list of prompts takes no source or parameters")
        prompt_set = PromptSet("prompts", [item.strip() for item in items]).head(limit)
    return PromptLoader(prompt_set, batch_size=batch_size, seed=seed, rank=rank,
                        world_size=world_size)


__all__ = ["PromptLoader", "build_prompt_loader"]
