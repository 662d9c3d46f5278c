"""A study: two models (arms ``a`` and ``b``), a prompt set and seeds, and its images on disk.

Pair ``i`` is image ``i`` of both arms: prompt ``i // K`` (``K`` images per prompt) sampled with
seed ``seed + i`` by each model, exactly as ``rewardkit eval`` samples
(:meth:`rewardkit.evaluation.Evaluation.sample`, which this reuses with its resume), so the
page never waits on a model and a second run samples only what is missing. Images live under
``IMAGES/images/<label>/steps-<n>/<i>.png`` and ``IMAGES/study.json`` records what the study
is; its :attr:`Study.id` ties votes to it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError

STUDY_FILE = "study.json"
#: Steps of an arm whose ``--steps`` is not given, by kind (the paper's headline comparison).
DEFAULT_STEPS = {"student": 2, "teacher": 50}


def detect_kind(location: str) -> str:
    """``"student"`` for a pipeline saved with ``LCMScheduler`` (a distilled student), else
    ``"teacher"`` (sampled with DDIM and classifier-free guidance); a hub id cannot be read
    without downloading, so it must be said with ``--kinds``."""
    scheduler = Path(location).expanduser() / "scheduler" / "scheduler_config.json"
    if not scheduler.is_file():
        if Path(location).expanduser().is_dir():
            raise ConfigError(f"model {location} is not a diffusers pipeline folder (no "
                              "scheduler/scheduler_config.json); pass a run's pipeline/ folder "
                              "or a training checkpoint")
        if Path(location).expanduser().exists() or location.startswith((".", "/", "~")):
            raise ConfigError(f"model {location} does not exist; check the path")
        raise ConfigError(f"model {location} is not a local folder, so whether it is a student "
                          "or a teacher is unknown; pass --kinds student,teacher (one per model)")
    try:
        name = json.loads(scheduler.read_text()).get("_class_name", "")
    except (OSError, ValueError):
        raise ConfigError(f"model {location}: {scheduler} cannot be read; is the pipeline "
                          "complete?") from None
    return "student" if name == "LCMScheduler" else "teacher"


@dataclass
class Arm:
    """One side of the comparison: a model (pipeline folder or hub id) sampled one way."""

    label: str
    location: str
    kind: str
    steps: int
    guidance_scale: float = 7.5

    def describe(self) -> str:
        """``"label (N steps)"``: how votes and reports name the arm."""
        return f"{self.label} ({self.steps} step{'s' if self.steps != 1 else ''})"


@dataclass
class Pair:
    """What one pair shows: image ``index`` of both arms, its prompt and seed."""

    index: int
    prompt: str
    category: str
    seed: int


@dataclass
class Study:
    """Two arms, the prompts (a category each) and seeds, with images under ``folder``."""

    arms: tuple[Arm, Arm]
    prompts: list[str]
    categories: list[str]
    folder: Path
    images_per_prompt: int = 1
    seed: int = 0
    prompt_set: str = ""
    _id: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if len(self.arms) != 2:
            raise ConfigError(f"a study compares two models, got {len(self.arms)}")
        if self.arms[0].label == self.arms[1].label:
            raise ConfigError(f"the two models need different labels, both are "
                              f"{self.arms[0].label!r}")

    # ------------------------------------------------------------ identity

    def identity(self) -> dict[str, Any]:
        """What decides which images the study shows: the arms (labels, kinds, steps,
        guidance), prompts, categories and seeds; not where the models are, so servers on
        machines that mount them elsewhere share one study."""
        arms = [{k: v for k, v in asdict(arm).items() if k != "location"} for arm in self.arms]
        return {"arms": arms, "prompts": self.prompts, "categories": self.categories,
                "images_per_prompt": self.images_per_prompt, "seed": self.seed}

    @property
    def id(self) -> str:
        """A short hash of :meth:`identity`: votes carry it, so they are never mixed up with
        another study's."""
        if not self._id:
            text = json.dumps(self.identity(), sort_keys=True)
            self._id = hashlib.sha256(text.encode()).hexdigest()[:12]
        return self._id

    def title(self) -> str:
        """``"A (2 steps) vs B (50 steps)"``."""
        return f"{self.arms[0].describe()} vs {self.arms[1].describe()}"

    # ------------------------------------------------------------ pairs and images

    @property
    def num_pairs(self) -> int:
        """Pairs in the study: prompts times images per prompt."""
        return len(self.prompts) * self.images_per_prompt

    def pair(self, index: int) -> Pair:
        """Pair ``index`` (eval's image order: prompt ``index // K``, seed ``seed + index``)."""
        prompt = index // self.images_per_prompt
        return Pair(index, self.prompts[prompt], self.categories[prompt], self.seed + index)

    def image(self, arm: str, index: int) -> Path:
        """The image of arm ``"a"`` or ``"b"`` in pair ``index``."""
        chosen = self.arms[0 if arm == "a" else 1]
        return self.folder / "images" / chosen.label / f"steps-{chosen.steps}" / f"{index:05d}.png"

    def missing_images(self) -> list[Path]:
        """Images of the study not on disk yet."""
        return [path for i in range(self.num_pairs) for arm in "ab"
                if not (path := self.image(arm, i)).is_file()]

    # ------------------------------------------------------------ on disk

    def save(self) -> str | None:
        """Write ``folder/study.json``; refuse a folder holding another study's images. Returns
        a note when the folder's images were sampled from models at other locations (kept: the
        labels, steps, prompts and seeds are the study's)."""
        path = self.folder / STUDY_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("id") != self.id:
                raise ConfigError(f"{self.folder} holds the images of another study (id "
                                  f"{data.get('id')}, this one is {self.id}: other models, steps, "
                                  "prompts or seeds); pass another --images folder or delete it")
            before = [arm.get("location") for arm in data.get("locations", [])]
            now = [arm.location for arm in self.arms]
            if before and before != now:
                return (f"the images in {self.folder} were sampled from {', '.join(before)}; "
                        f"kept for {', '.join(now)} (delete the folder to sample them again)")
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"id": self.id, "title": self.title(),
                                    "prompt_set": self.prompt_set, **self.identity(),
                                    "locations": [{"label": arm.label, "location": arm.location}
                                                  for arm in self.arms]}, indent=1))
        return None

    @classmethod
    def load(cls, folder: str | Path) -> "Study":
        """The study whose images are in ``folder`` (its ``study.json``)."""
        folder = Path(folder)
        path = folder / STUDY_FILE
        try:
            data = json.loads(path.read_text())
            where = {entry["label"]: entry["location"] for entry in data.get("locations", [])}
            study = cls(tuple(Arm(**arm, location=where.get(arm["label"], ""))
                              for arm in data["arms"]), list(data["prompts"]),
                        list(data["categories"]), folder,
                        images_per_prompt=int(data["images_per_prompt"]), seed=int(data["seed"]),
                        prompt_set=data.get("prompt_set", ""))
        except FileNotFoundError:
            raise ConfigError(f"no study in {folder} (no {STUDY_FILE}); start it with "
                              "`rewardkit vote MODEL_A MODEL_B -o VOTES` or pass its --images "
                              "folder") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} cannot be read ({type(exc).__name__}: {exc}); start the "
                              "study again to write it") from None
        if data.get("id") not in (None, study.id):
            raise ConfigError(f"{path} was edited: its id {data.get('id')} is not that of its "
                              f"contents ({study.id}); start the study again to write it")
        return study

    def generate(self, device: str = "auto", dtype: str = "float32", batch_size: int = 8,
                 progress: bool = True) -> str | None:
        """Sample the missing images of both arms with ``rewardkit eval``'s sampling (fixed
        seeds, resumable: images already on disk are kept); returns :meth:`save`'s note."""
        from ..evaluation.prompt_sets import PromptSet
        from ..evaluation.runner import Evaluation, ModelSpec
        from ..progress import ProgressBar

        note = self.save()
        prompt_set = PromptSet(self.prompt_set or "study", self.prompts, self.categories)
        evaluation = Evaluation(prompt_set, [], self.folder,
                                images_per_prompt=self.images_per_prompt, seed=self.seed,
                                batch_size=batch_size, device=device, dtype=dtype, resume=True)
        missing = len(self.missing_images())
        if not missing:
            return note
        done = [0]
        with ProgressBar(missing, 0, enabled=progress, keys=(), label="sample",
                         unit="image") as bar:
            def advance(count: int) -> None:
                done[0] += count
                bar.update(done[0], {})

            for arm in self.arms:
                evaluation.sample(ModelSpec(arm.label, arm.location, arm.kind, [arm.steps],
                                            arm.guidance_scale), advance)
        return note


def make_arms(models: Sequence[str], kinds: Sequence[str] | None, steps: Sequence[int] | None,
              guidance_scale: float, prepare: Callable[[str, str], str] | None = None
              ) -> tuple[Arm, Arm]:
    """The two arms of ``rewardkit vote MODEL_A MODEL_B``: labels as ``rewardkit eval`` makes
    them, kinds detected (or given), steps given or by kind (student 2, teacher 50).

    ``prepare(location, label)`` may turn a location into a loadable one (a training checkpoint
    into a pipeline) and returns it.
    """
    from ..evaluation.cli import model_label
    from ..evaluation.models import is_checkpoint

    if len(models) != 2:
        raise ConfigError(f"rewardkit vote compares two models, got {len(models)}")
    for name, values in (("--kinds", kinds), ("--steps", steps)):
        if values is not None and len(values) != 2:
            raise ConfigError(f"{name} takes two values, one per model, got {len(values)}")
    if kinds is not None:
        bad = [k for k in kinds if k not in DEFAULT_STEPS]
        if bad:
            raise ConfigError(f"--kinds: {bad[0]!r} is neither student nor teacher")
    taken: set[str] = set()
    arms = []
    for i, location in enumerate(models):
        checkpoint = is_checkpoint(location)
        path = Path(location)
        label = model_label(f"{path.parent.name}-{path.name}" if checkpoint else location, taken)
        if checkpoint and prepare is not None:
            location = prepare(location, label)
        kind = kinds[i] if kinds is not None else ("student" if checkpoint
                                                   else detect_kind(location))
        count = int(steps[i]) if steps is not None else DEFAULT_STEPS[kind]
        if count < 1:
            raise ConfigError(f"--steps must be positive, got {count}")
        arms.append(Arm(label, location, kind, count, guidance_scale))
    return arms[0], arms[1]


__all__ = ["Arm", "DEFAULT_STEPS", "Pair", "STUDY_FILE", "Study", "detect_kind", "make_arms"]
