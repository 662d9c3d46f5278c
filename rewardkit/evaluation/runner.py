"""``rewardkit eval``: sample models on a prompt set, score the images, compare with the teacher.

::

    evaluation = Evaluation(load_prompt_set("hpsv2", limit=100), ["hpsv2", "clip-score", "fid"],
                            "eval-out", reference_images="coco-val2014/")
    results = evaluation.run([ModelSpec("rg-lcm", "runs/rg-lcd/pipeline", steps=[1, 2, 4]),
                              ModelSpec("teacher", "stabilityai/stable-diffusion-2-1",
                                        kind="teacher", steps=[50])])

Image ``j`` of prompt ``i`` is sampled with seed ``seed + i * images_per_prompt + j`` by every
model, so rows differ only by the model (and the win rate compares like with like). Images are
written as PNG under ``images/<model>/steps-<n>/`` and scored from there: a ``resume`` run
generates only the missing ones, and the scores are those of the files a reader can open.
Under ``accelerate launch`` each process samples every ``num_processes``-th image; the main
process scores once all are on disk.

The sampling pass times each row while it samples it (rows one after another). With
``timing_rounds`` the rows' ms/image come instead from :func:`~.timing.time_interleaved` (every
row timed in turn on one batch, several rounds: median and spread), and each row gets its
speed-up over the first teacher as the median of per-round ratios, which load on the machine
cannot invent.

Every registered reward model is a per-image metric by its name (a third-party RM plugin is
one at once); registered ``metric`` components (``fid``, ``kid``, ``world-fd``) are
distribution metrics against reference images (``reference_images`` or the prompt set's own).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .prompt_sets import PromptSet

logger = logging.getLogger(__name__)

KINDS = ("student", "teacher")
#: What an evaluation records first into its output folder: the settings its images are
#: sampled with (checked by ``--resume``).
SETTINGS_FILE = "evaluation.json"
#: Everything an evaluation writes into its output folder (what ``overwrite`` removes).
EVAL_FILES = (SETTINGS_FILE, "images", "models", "results.json", "report.md", "grid.png",
              "steps.png")


@dataclass
class ModelSpec:
    """One model to evaluate: a label, where it is (pipeline folder or hub id), how to sample.

    ``kind="student"`` samples with ``LCMScheduler``; ``"teacher"`` with DDIM and
    classifier-free guidance at ``guidance_scale`` (a student embeds ``w = scale - 1``).
    """

    label: str
    location: str
    kind: str = "student"
    steps: list[int] = field(default_factory=lambda: [1, 2, 4])
    guidance_scale: float = 7.5
    #: Where the model came from when ``location`` is a copy written by the evaluation (a
    #: training checkpoint exported to a pipeline); its content is the model's identity.
    source: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"model '{self.label}': kind must be one of {', '.join(KINDS)}")
        if not math.isfinite(self.guidance_scale):
            raise ConfigError(f"model '{self.label}': the guidance scale (--guidance) must be a "
                              f"finite number, got {self.guidance_scale}")
        if not self.steps or any(int(s) < 1 for s in self.steps):
            raise ConfigError(f"model '{self.label}': steps must be positive, got {self.steps}")
        if not self.label or "/" in self.label or self.label.startswith("."):
            raise ConfigError(f"model label {self.label!r} must be a plain name (it names a folder)")


def process_state() -> Any:
    """This process's place among ``accelerate launch`` / ``torchrun`` processes.

    Without CUDA, accelerate only joins torchrun's processes into a group when told it runs on
    the CPU (see :mod:`rewardkit.training.runtime`); otherwise each would evaluate everything.
    """
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def load_png_folder(folder: Path, count: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``[count, 3, H, W]`` in [0, 1] from ``folder/00000.png`` ... (the saved samples); a sample
    of another size than ``size`` (width, height; default: the size most samples have) is named."""
    from PIL import Image

    from ..sampling import pil_to_tensor

    images = []
    for index in range(count):
        path = folder / f"{index:05d}.png"
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"sample {path} cannot be read ({exc}); delete it and rerun with "
                              "--resume to sample it again") from None
    sizes = [image.size for image in images]
    common = size or (max(set(sizes), key=sizes.count) if sizes else None)
    for index, found in enumerate(sizes):
        if found != common:
            raise ConfigError(f"sample {folder / f'{index:05d}.png'} is {found[0]}x{found[1]} px "
                              f"but the model samples {common[0]}x{common[1]}; delete it and "
                              "rerun with --resume to sample it again")
    return pil_to_tensor(images)


def _readable(path: Path) -> bool:
    """Whether a saved sample exists and decodes; a broken one is reported and sampled again."""
    from PIL import Image

    if not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, ValueError, SyntaxError):
        logger.warning("sample %s cannot be read; sampling it again", path)
        return False


def reference_images(spec: str | Path, side: int, count: int) -> torch.Tensor:
    """``count`` real images at ``side`` px, ``[count, 3, side, side]`` in [0, 1], from a folder of
    images, or any data spec the training data engine reads (webdataset shards, a brace range,
    ``world:...``; centre-cropped and resized by the same loader). A source smaller than
    ``count`` gives what it has."""
    from .builtin_sets import load_images

    folder = Path(spec)
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*")
                       if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if files and not (folder / "manifest.json").is_file():
            if len(files) < 2:
                raise ConfigError(f"--reference-images {folder} holds {len(files)} image; a "
                                  "distribution metric needs at least 2")
            return load_images(files[:count], side)
    from ..data.specs import build_training_loader, check_data_spec

    check_data_spec("--reference-images", str(spec))
    loader = build_training_loader(str(spec), resolution=side, batch_size=min(count, 64), seed=0,
                                   center_crop=True)
    if getattr(loader, "kind", "pixels") == "latents":
        raise ConfigError(f"--reference-images {spec} holds latents; FID compares images: pass "
                          "the images (folder or shards) the latents were encoded from")
    images: list[torch.Tensor] = []
    seen: set[str] = set()
    while sum(len(x) for x in images) < count:
        batch = next(loader)
        keys = batch.get("keys") or [None] * len(batch["pixel_values"])
        fresh = []
        for i, key in enumerate(keys):
            if key is None or key not in seen:
                fresh.append(i)
                if key is not None:
                    seen.add(key)
        if not fresh:  # the loader went round: the source is smaller than count
            break
        images.append((batch["pixel_values"][fresh].float() + 1) / 2)
        if len(fresh) < len(keys):  # it went round within this batch
            break
    out = torch.cat(images)[:count].clamp(0, 1)
    if len(out) < 2:
        raise ConfigError(f"--reference-images {spec} gave {len(out)} image; a distribution "
                          "metric needs at least 2")
    return out


class Evaluation:
    """Sample, score and compare (see the module docstring).

    Args:
        prompts: the :class:`PromptSet`.
        metrics: metric names: registered reward models and/or registered ``metric`` components.
        output_dir: where images, ``results.json`` and ``report.md`` go.
        images_per_prompt: samples per prompt (seeds ``seed + i * K + j``).
        seed: the first seed.
        batch_size: images per pipeline call.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda:1``...
        dtype: pipeline dtype (``float32``, ``float16``, ``bfloat16``).
        resume: keep images already on disk and sample only missing ones (refused when they
            were sampled with other settings: seed, prompts, images per prompt, a model's
            content, kind, guidance or dtype).
        overwrite: replace an earlier evaluation in ``output_dir`` (its own files only). Without
            ``resume`` or ``overwrite`` a folder that holds anything is refused.
        reference_images: a folder of real images for distribution metrics (default: the
            prompt set's references).
        metric_params: per-metric build parameters, ``{"fid": {"weights": "..."}}``.
        command: the command line, recorded in ``results.json``.
        timing_rounds: when positive, time sampling speed in this many interleaved rounds
            after sampling (:mod:`rewardkit.evaluation.timing`): ms/image is then the median
            over the rounds, with its lowest and highest round, and rows get a speed-up over
            the first teacher. 0: the sampling pass's own times, no speed-up.
        timing_threads: torch's CPU thread count during those rounds (0: the process's; 1
            keeps a speed-up steady when other processes load the cores, see
            :mod:`~.timing`).
    """

    def __init__(self, prompts: PromptSet, metrics: Sequence[str], output_dir: str | Path, *,
                 images_per_prompt: int = 1, seed: int = 0, batch_size: int = 8,
                 device: str = "auto", dtype: str = "float32", resume: bool = False,
                 reference_images: str | Path | None = None,
                 metric_params: dict[str, dict[str, Any]] | None = None,
                 command: str = "", overwrite: bool = False, timing_rounds: int = 0,
                 timing_threads: int = 0) -> None:
        from ..plugins import get_host

        if images_per_prompt < 1:
            raise ConfigError(f"--images-per-prompt must be at least 1, got {images_per_prompt}")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite contradict each other (one keeps the "
                              "earlier evaluation's images, the other removes them); pass one")
        if timing_rounds < 0:
            raise ConfigError(f"--timing-rounds must be 0 or more, got {timing_rounds}")
        if timing_threads < 0:
            raise ConfigError(f"--timing-threads must be 0 (the process's) or more, got "
                              f"{timing_threads}")
        host = get_host()
        rewards = {spec.name for spec in host.list("reward")}
        distributions = {spec.name for spec in host.list("metric")}
        unknown = [m for m in metrics if m not in rewards | distributions]
        if unknown:
            raise ConfigError(f"--metrics: {', '.join(unknown)} is neither a registered reward "
                              f"model ({', '.join(sorted(rewards))}) nor a distribution metric "
                              f"({', '.join(sorted(distributions))})")
        self.prompts, self.output_dir = prompts, Path(output_dir)
        self.reward_metrics = [m for m in metrics if m in rewards]
        self.distribution_metrics = [m for m in metrics if m in distributions]
        self.metric_params = dict(metric_params or {})
        if self.distribution_metrics and reference_images is None and prompts.references is None:
            raise ConfigError(f"--metrics {', '.join(self.distribution_metrics)} compare with real "
                              f"images, and prompt set '{prompts.name}' has none; pass "
                              "--reference-images DIR")
        self.images_per_prompt, self.seed, self.batch_size = images_per_prompt, seed, batch_size
        self.device, self.dtype, self.resume = device, dtype, resume
        self.overwrite, self.prepared = overwrite, False
        self.reference_images, self.command = reference_images, command
        self.timing_rounds, self.timing_threads = timing_rounds, timing_threads

    # ------------------------------------------------------------ the output folder

    def settings(self, models: Sequence[ModelSpec]) -> dict[str, Any]:
        """What the images in the output folder depend on (recorded in :data:`SETTINGS_FILE`):
        the prompts, seeds and, per model label, the model's content and how it is sampled."""
        import hashlib

        from ..models import model_fingerprint

        prompts = json.dumps([self.prompts.prompts, self.prompts.categories])
        return {"seed": self.seed, "images_per_prompt": self.images_per_prompt,
                "prompts": hashlib.sha256(prompts.encode()).hexdigest(),
                "models": {m.label: {"location": m.source or m.location,
                                     "content": model_fingerprint(m.source or m.location),
                                     "kind": m.kind, "guidance_scale": m.guidance_scale,
                                     "dtype": self.dtype} for m in models}}

    def check_output(self, models: Sequence[ModelSpec]) -> dict[str, Any] | None:
        """Refuse, before anything is written, an output folder this evaluation would lose
        data in; returns the earlier evaluation's settings a resume continues (else ``None``).

        A folder that holds anything needs ``resume`` (its images must have been sampled with
        these settings) or ``overwrite`` (removes an earlier evaluation's files, never a
        user's); a file of the user's with a name the evaluation writes is never replaced.
        """
        out = self.output_dir
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--output '{out}' is a file, not a folder; choose another --output")
        entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if not entries:
            return None
        record = out / SETTINGS_FILE
        earlier = (record.is_file() or ((out / "images").is_dir()
                                        and (out / "results.json").is_file()))
        clashing = [e for e in entries if e in EVAL_FILES]
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        if clashing and not earlier:
            raise ConfigError(f"--output '{out}' holds {', '.join(clashing)}, which no "
                              "evaluation wrote there and which it would replace; move them or "
                              "choose another --output")
        if self.overwrite:
            return None
        if not self.resume:
            if earlier:
                raise ConfigError(f"--output '{out}' already holds an evaluation ({shown}); "
                                  "continue it with --resume, replace it with --overwrite, or "
                                  "choose another --output")
            raise ConfigError(f"--output '{out}' already holds files ({shown}); choose an empty "
                              "or new folder, or pass --overwrite to write beside them")
        if not earlier:
            return None  # nothing to resume: the user's files stay, the evaluation starts
        if not record.is_file():
            raise ConfigError(f"--resume: the evaluation in '{out}' has no {SETTINGS_FILE} (an "
                              "older rewardkit wrote it), so its images cannot be checked "
                              "against this run's settings; start over with --overwrite")
        try:
            previous = json.loads(record.read_text())
            if not isinstance(previous.get("models"), dict):
                raise ValueError("no models")
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise ConfigError(f"--resume: '{record}' is unreadable ({exc}); start over with "
                              "--overwrite") from None
        now = self.settings(models)
        options = {"seed": "--seed", "images_per_prompt": "--images-per-prompt",
                   "prompts": "--prompts/--limit"}
        for key, option in options.items():
            if previous.get(key) != now[key]:
                said = ("other prompts" if key == "prompts"
                        else f"{key} {previous.get(key)}, this run {now[key]}")
                raise ConfigError(f"--resume: the images in '{out}' were sampled with {said}; "
                                  f"rerun with the earlier {option}, or start over with "
                                  "--overwrite (or another --output)")
        for label, mine in now["models"].items():
            theirs = previous["models"].get(label)
            if theirs is None:
                continue
            if theirs.get("content") != mine["content"]:
                raise ConfigError(
                    f"--resume: the images of model '{label}' in '{out}' were sampled from "
                    f"'{theirs.get('location')}', which is not the model now given as "
                    f"'{label}' ('{mine['location']}'); pass the models as before (same order), "
                    "or start over with --overwrite (or another --output)")
            for key, option in (("kind", "--teacher"), ("guidance_scale", "--guidance"),
                                ("dtype", "--dtype")):
                if theirs.get(key) != mine[key]:
                    raise ConfigError(
                        f"--resume: the images of model '{label}' in '{out}' were sampled with "
                        f"{key} {theirs.get(key)}, this run asks for {mine[key]}; rerun with "
                        f"the earlier {option}, or start over with --overwrite (or another "
                        "--output)")
        return previous

    def prepare_output(self, models: Sequence[ModelSpec]) -> None:
        """:meth:`check_output`, then (main process) remove an earlier evaluation with
        ``overwrite`` and record this one's settings; every process waits for it."""
        import shutil

        state = process_state()
        previous = self.check_output(models)
        state.wait_for_everyone()  # every process has looked before the main one writes
        if state.is_main_process:
            out = self.output_dir
            if self.overwrite and out.is_dir():
                for name in EVAL_FILES:
                    path = out / name
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    elif path.exists() or path.is_symlink():
                        path.unlink()
            out.mkdir(parents=True, exist_ok=True)
            settings = self.settings(models)
            if previous:
                settings["models"] = {**previous["models"], **settings["models"]}
            (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        state.wait_for_everyone()
        self.prepared = True

    # ------------------------------------------------------------ sampling

    @property
    def num_images(self) -> int:
        """Images per (model, step count)."""
        return len(self.prompts.prompts) * self.images_per_prompt

    def image_prompts(self) -> list[str]:
        """The prompt of every image, in image order."""
        return [p for p in self.prompts.prompts for _ in range(self.images_per_prompt)]

    def folder(self, model: ModelSpec, steps: int) -> Path:
        """Where the samples of ``model`` at ``steps`` go."""
        return self.output_dir / "images" / model.label / f"steps-{steps}"

    def sample(self, model: ModelSpec, progress: Callable[[int], None] | None = None) -> None:
        """Sample the missing images of ``model`` at each step count (this process's share)."""
        from ..sampling import load_pipeline, run_pipeline

        state = process_state()
        prompts = self.image_prompts()
        mine = list(range(state.process_index, self.num_images, state.num_processes))
        todo_per_steps = {}
        for steps in model.steps:
            folder = self.folder(model, steps)
            folder.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                for index in mine:
                    (folder / f"{index:05d}.png").unlink(missing_ok=True)
                (folder / f"timing-{state.process_index}.json").unlink(missing_ok=True)
                if state.is_main_process:  # left by an earlier run with more processes
                    for stale in folder.glob("timing-[0-9]*.json"):
                        if int(stale.stem.split("-")[1]) >= state.num_processes:
                            stale.unlink(missing_ok=True)
            todo_per_steps[steps] = [i for i in mine if not _readable(folder / f"{i:05d}.png")]
        if not any(todo_per_steps.values()):
            return
        pipe = load_pipeline(model.location, "lcm" if model.kind == "student" else "ddim",
                             self.device, self.dtype)
        for steps, todo in todo_per_steps.items():
            folder = self.folder(model, steps)
            if not todo:
                continue
            # one untimed batch first: the first call pays for allocation and kernel selection
            run_pipeline(pipe, [prompts[todo[0]]], steps, model.guidance_scale,
                         seeds=[self.seed + todo[0]])
            record = folder / f"timing-{state.process_index}.json"
            earlier = json.loads(record.read_text()) if record.is_file() else {}  # --resume
            if earlier and (earlier.get("batch_size"), earlier.get("dtype")) != (
                    self.batch_size, self.dtype):
                earlier = {}  # timed another way: these images' times replace it
            passes = 2 if getattr(pipe, "do_classifier_free_guidance", False) else 1
            seconds, calls, timed, batches = 0.0, 0, 0, 0
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                result = run_pipeline(pipe, [prompts[i] for i in chunk], steps,
                                      model.guidance_scale, batch_size=len(chunk),
                                      seeds=[self.seed + i for i in chunk])
                for index, image in zip(chunk, result.images):
                    image.save(folder / f"{index:05d}.png")
                seconds += result.seconds
                calls += result.unet_evaluations
                timed += len(chunk)
                batches += 1
                # written after every chunk: a crash keeps the times of the images it saved
                record.write_text(json.dumps({
                    "images": min(timed + earlier.get("images", 0), len(mine)),
                    "seconds": seconds + earlier.get("seconds", 0.0) * (  # the kept ones' share
                        min(earlier.get("images", 0), len(mine) - timed)
                        / max(earlier.get("images", 0), 1)),
                    "batch_size": self.batch_size, "unet_calls_per_batch": calls / batches,
                    "cfg_passes": passes, "device": str(pipe.device), "dtype": self.dtype,
                    "size": list(result.images[0].size),
                    "guidance_scale": result.guidance_scale}))
                if progress is not None:
                    progress(len(chunk))
        del pipe

    def sample_size(self, model: ModelSpec, steps: int) -> tuple[int, int] | None:
        """(width, height) of the images ``model`` sampled at ``steps`` (as its timing records
        say; ``None`` when none does)."""
        for path in sorted(self.folder(model, steps).glob("timing-[0-9]*.json")):
            size = json.loads(path.read_text()).get("size")
            if size:
                return (int(size[0]), int(size[1]))
        return None

    def timing(self, model: ModelSpec, steps: int) -> dict[str, Any]:
        """ms/image and UNet evaluations/image of the images sampled (by any process, any run)."""
        folder = self.folder(model, steps)
        records = [json.loads(p.read_text()) for p in sorted(folder.glob("timing-[0-9]*.json"))]
        images = sum(r["images"] for r in records)
        seconds = sum(r["seconds"] for r in records)
        calls = records[0]["unet_calls_per_batch"] if records else float("nan")
        passes = records[0]["cfg_passes"] if records else 1
        return {"ms_per_image": 1000.0 * seconds / images if images else float("nan"),
                "timed_images": images,
                "unet_calls": int(round(calls)) if records else None,
                "unet_evaluations": int(round(calls)) * passes if records else None,
                "guidance_scale": records[0].get("guidance_scale") if records else None}

    def time_rows(self, models: Sequence[ModelSpec]) -> dict[tuple[str, int], list[float]]:
        """Per-round ms/image of every (model, steps) row, timed interleaved
        (:func:`~.timing.time_interleaved`) on the first ``batch_size`` images' prompts and seeds."""
        from .timing import time_interleaved

        return time_interleaved(models, self.image_prompts(), rounds=self.timing_rounds,
                                seed=self.seed, batch_size=self.batch_size, device=self.device,
                                dtype=self.dtype, threads=self.timing_threads)

    # ------------------------------------------------------------ scoring

    def score_rewards(self, images: torch.Tensor) -> dict[str, list[float]]:
        """Per-image scores of every reward metric (by name)."""
        from .. import api

        prompts = self.image_prompts()
        scores = {}
        for name in self.reward_metrics:
            model = self._reward_models.get(name)
            if model is None:
                model = api.reward_model(name, **self._params("reward", name))
                self._reward_models[name] = model
            values = []
            with torch.no_grad():
                for start in range(0, len(images), self.batch_size):
                    chunk = images[start:start + self.batch_size].to(model.device)
                    values += model(chunk, prompts[start:start + len(chunk)]).float().cpu().tolist()
            scores[name] = values
        return scores

    def _params(self, kind: str, name: str) -> dict[str, Any]:
        """The user's ``--metric-param`` values; a metric with a ``device`` parameter the user
        did not set runs where the evaluation samples."""
        from ..plugins import get_host
        from ..sampling import resolve_device

        params = dict(self.metric_params.get(name, {}))
        takes = {p.name for p in get_host().get(kind, name).params}
        if "device" in takes and "device" not in params:
            params["device"] = str(resolve_device(self.device))
        return params

    def references(self, side: int) -> torch.Tensor:
        """The reference images at ``side`` pixels (cached)."""
        if side not in self._references:
            if self.reference_images is not None:
                self._references[side] = reference_images(self.reference_images, side,
                                                          max(self.num_images, 2))
            else:
                assert self.prompts.references is not None
                self._references[side] = self.prompts.references(side)
        return self._references[side]

    def score_distributions(self, images: torch.Tensor) -> dict[str, float]:
        """Every distribution metric of ``images`` against the references."""
        from ..plugins import get_host

        out: dict[str, float] = {}
        for name in self.distribution_metrics:
            metric = self._metrics.get(name)
            if metric is None:
                metric = get_host().get("metric", name).build(**self._params("metric", name))
                self._metrics[name] = metric
            out.update(metric.compute(images, self.references(int(images.shape[-1]))))
        return out

    # ------------------------------------------------------------ the whole evaluation

    def run(self, models: Sequence[ModelSpec], progress: bool = True) -> dict[str, Any]:
        """Sample every model, score every row, compare with the first teacher; write the
        report (main process); return the results (``results.json``)."""
        from ..progress import ProgressBar

        if not self.reward_metrics and not self.distribution_metrics:
            raise ConfigError("--metrics: name at least one metric")  # sample() needs none
        labels = [m.label for m in models]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"model labels must differ, got {labels}")
        state = process_state()
        if not self.prepared:
            self.prepare_output(models)
        self._reward_models: dict[str, Any] = {}
        self._metrics: dict[str, Any] = {}
        self._references: dict[int, torch.Tensor] = {}
        total = sum(len(m.steps) for m in models) * len(
            range(state.process_index, self.num_images, state.num_processes))
        done = [0]
        with ProgressBar(total, 0, enabled=progress and state.is_main_process,
                         keys=(), label="sample", unit="image") as bar:
            def advance(count: int) -> None:
                done[0] += count
                bar.update(done[0], {})

            for model in models:
                self.sample(model, advance)
        state.wait_for_everyone()
        if not state.is_main_process:
            return {}
        timed = self.time_rows(models) if self.timing_rounds else {}
        rows, per_image, columns = [], {}, {}
        for model in models:
            for steps in model.steps:
                images = load_png_folder(self.folder(model, steps), self.num_images,
                                         self.sample_size(model, steps))
                scores = self.score_rewards(images)
                distributions = self.score_distributions(images)
                columns.update(dict.fromkeys(distributions))
                per_image[(model.label, steps)] = scores
                rows.append(self._row(model, steps, scores, distributions,
                                      timed.get((model.label, steps))))
        if timed:
            add_round_speedups(rows, models, timed)
        results = {
            "command": self.command,
            "prompt_set": {"name": self.prompts.name, "source": self.prompts.source,
                           "prompts": len(self.prompts.prompts),
                           "categories": sorted(set(self.prompts.categories) - {""})},
            "images_per_prompt": self.images_per_prompt, "seed": self.seed,
            "seeds": f"{self.seed}..{self.seed + self.num_images - 1} (image i: seed + i)",
            "metrics": self.reward_metrics + self.distribution_metrics,
            "distribution_metrics": self.distribution_metrics,
            "distribution_columns": list(columns),
            "rows": rows,
            "win_rates": self._win_rates(models, per_image),
        }
        if timed:
            results["timing"] = {
                "rounds": self.timing_rounds, "images_per_round": min(self.batch_size, self.num_images),
                "cpu_threads": self.timing_threads or torch.get_num_threads(),
                "method": "every row timed in turn on the same batch, order reversed every other "
                          "round; ms/image: median over the rounds [lowest, highest]; speed-up: "
                          "median of the per-round ratios to the first teacher row"}
        from .report import write_report

        write_report(self, models, results)
        return results

    @staticmethod
    def sampled_guidance(model: ModelSpec, recorded: float | None = None) -> float:
        """The guidance scale ``model``'s images were sampled at: the one their timing record
        holds (``recorded``, what :func:`rewardkit.sampling.run_pipeline` used), else its own,
        except for a student folder whose guidance is baked in (an SD3 student samples without
        guidance)."""
        from ..sampling import bakes_guidance

        if recorded is not None:
            return float(recorded)
        if model.kind == "student" and bakes_guidance(model.location):
            return 1.0
        return model.guidance_scale

    def _row(self, model: ModelSpec, steps: int, scores: dict[str, list[float]],
             distributions: dict[str, float], rounds: list[float] | None = None) -> dict[str, Any]:
        timing = self.timing(model, steps)
        row: dict[str, Any] = {"model": model.label, "location": model.location,
                               "kind": model.kind, "steps": steps,
                               "guidance_scale": self.sampled_guidance(
                                   model, timing.pop("guidance_scale")),
                               "num_images": self.num_images, **timing}
        if rounds:
            from .timing import summarise

            summary = summarise(rounds)
            row["sampling_ms_per_image"] = row["ms_per_image"]  # the sampling pass's own time
            row.update(ms_per_image=summary["median"], ms_per_image_min=summary["min"],
                       ms_per_image_max=summary["max"], ms_per_image_rounds=list(rounds),
                       timing_rounds=summary["rounds"])
        categories = np.array([c for c in self.prompts.categories
                               for _ in range(self.images_per_prompt)])
        for name, values in scores.items():
            array = np.asarray(values, dtype=np.float64)
            row[name] = float(array.mean())
            row[f"{name}_se"] = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else 0.0
            per_category = {str(c): float(array[categories == c].mean())
                            for c in sorted(set(categories)) if c}
            if per_category:
                row[f"{name}_by_category"] = per_category
        row.update(distributions)
        return row

    def _win_rates(self, models: Sequence[ModelSpec],
                   per_image: dict[tuple[str, int], dict[str, list[float]]]) -> list[dict[str, Any]]:
        from .win_rate import win_rate

        teacher = next((m for m in models if m.kind == "teacher"), None)
        if teacher is None:
            return []
        reference = (teacher.label, teacher.steps[0])
        out = []
        k = self.images_per_prompt
        for model in models:
            if model.kind != "student":
                continue
            for steps in model.steps:
                for name in self.reward_metrics:
                    # per prompt: the mean over its K seeds, the same seeds for both models
                    mine = np.asarray(per_image[(model.label, steps)][name]).reshape(-1, k).mean(1)
                    theirs = np.asarray(per_image[reference][name]).reshape(-1, k).mean(1)
                    out.append({"model": model.label, "steps": steps, "metric": name,
                                "baseline": f"{teacher.label} {teacher.steps[0]} steps",
                                **win_rate(mine, theirs, seed=self.seed)})
        return out



def add_round_speedups(rows: list[dict[str, Any]], models: Sequence[ModelSpec],
                       timed: dict[tuple[str, int], list[float]]) -> None:
    """Set ``speedup`` (median of the per-round ratios) and its ``speedup_min`` /
    ``speedup_max`` on every row, against the first teacher's first step count (none without
    a teacher)."""
    from .timing import round_ratios, summarise

    teacher = next((m for m in models if m.kind == "teacher"), None)
    if teacher is None:
        return
    reference = timed[(teacher.label, int(teacher.steps[0]))]
    for row in rows:
        summary = summarise(round_ratios(reference, timed[(row["model"], row["steps"])]))
        row.update(speedup=summary["median"], speedup_min=summary["min"],
                   speedup_max=summary["max"])
