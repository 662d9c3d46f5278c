"""``rewardkit eval``: the command line of :mod:`rewardkit.evaluation.runner`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import ConfigError
from ..secrets import redact_command


def parse_steps(text: str, option: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (each at least 1)."""
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated integers like 1,2,4; got {text!r}") from None
    if not steps or min(steps) < 1:
        raise ConfigError(f"{option} takes positive step counts; got {text!r}")
    return steps


def parse_params(items: list[str], option: str = "--metric-param",
                 form: str = "METRIC.KEY=VALUE") -> dict[str, dict[str, Any]]:
    """``["fid.weights=/path", "kid.subsets=10"]`` -> ``{"fid": {"weights": "/path"}, ...}``
    (values are read as JSON when they parse, else kept as text)."""
    import json

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        metric, dot, key = name.partition(".")
        if not sep or not dot or not metric or not key:
            raise ConfigError(f"{option} takes {form}, got {item.removeprefix('prompts.')!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(metric, {})[key] = parsed
    return out


def model_label(location: str, taken: set[str]) -> str:
    """A short, unique label: the run folder for ``run/pipeline``, else the last path part."""
    path = Path(location)
    label = path.parent.name if path.name == "pipeline" and path.parent.name else path.name
    label = label or "model"
    unique, n = label, 2
    while unique in taken:
        unique, n = f"{label}-{n}", n + 1
    taken.add(unique)
    return unique


def preset_eval_defaults() -> dict[str, str]:
    """``--prompts`` / ``--metrics`` of the first registered preset (by name) that has
    ``eval_defaults()`` (the embedded world's), or ``{}`` when none does."""
    from ..plugins import get_host

    for spec in get_host().list("preset"):
        if hasattr(spec.factory, "eval_defaults"):
            return {key: str(value) for key, value in spec.factory().eval_defaults().items()
                    if key in ("prompts", "metrics")}
    return {}


def fill_eval_defaults(prompts: str | None, metrics: str | None) -> tuple[str, str]:
    """The ``--prompts`` and ``--metrics`` to use: the user's, else a preset's; a ConfigError
    saying what to pass when neither gives one."""
    if prompts is None or metrics is None:
        defaults = preset_eval_defaults()
        prompts = prompts if prompts is not None else defaults.get("prompts")
        metrics = metrics if metrics is not None else defaults.get("metrics")
    if not prompts or not metrics:
        from ..plugins import get_host

        sets = ", ".join(spec.name for spec in get_host().list("prompts")) or "none registered"
        wanted = {"--prompts": f"--prompts (a registered prompt set: {sets}; or a prompt file)",
                  "--metrics": "--metrics (comma-separated reward models and distribution "
                               "metrics, e.g. clip-score,fid)"}
        missing = [text for option, text in wanted.items()
                   if not (prompts if option == "--prompts" else metrics)]
        raise ConfigError(f"rewardkit eval needs {' and '.join(missing)}; no registered preset "
                          "provides them")
    return prompts, metrics


def eval_command(
    models: Annotated[list[str], typer.Argument(help="Students to evaluate: diffusers pipeline "
                                               "folders (e.g. a run's pipeline/), hub ids, or "
                                               "training checkpoints (run/checkpoint-N).")],
    prompts: Annotated[Optional[str], typer.Option("--prompts", "-p", help="A registered prompt "
                       "set (hpsv2, partiprompts, drawbench, coco, ...; rewardkit list prompts) "
                       "or a .txt/.jsonl/.json/.csv/.tsv file (default: a registered preset's, "
                       "e.g. the embedded world's).")] = None,
    prompts_source: Annotated[Optional[str], typer.Option(
        "--prompts-source", help="Where a named set's files are: a local file/folder or a hub "
        "dataset id (default: the set's own).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Keep the first N prompts of each category.")] = None,
    prompts_param: Annotated[list[str], typer.Option(
        "--prompts-param", help="KEY=VALUE for a named prompt set, e.g. image_dir=val2014 for "
        "coco's FID references (repeatable).")] = [],  # noqa: B006
    metrics: Annotated[Optional[str], typer.Option("--metrics", "-m", help="Comma-separated: any "
                       "registered reward model (hpsv2, image-reward, clip-score, pickscore, "
                       "aesthetic, ...) and distribution metrics (fid, kid, clip-fid, ...) "
                       "(default: a registered preset's, e.g. the embedded world's).")] = None,
    steps: Annotated[str, typer.Option(help="Student step counts.")] = "1,2,4",
    teacher: Annotated[Optional[str], typer.Option(help="A teacher pipeline to compare with "
                       "(DDIM + classifier-free guidance); win rates are against it.")] = None,
    teacher_steps: Annotated[str, typer.Option("--teacher-steps", help="Teacher step counts "
                             "(win rates use the first).")] = "50",
    guidance: Annotated[float, typer.Option("--guidance", "-g", help="Guidance scale (a student "
                        "embeds w = scale - 1, the teacher runs CFG with it).")] = 7.5,
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", "-k",
                                 help="Samples per prompt (different seeds).")] = 1,
    reference_images: Annotated[Optional[str], typer.Option(
        "--reference-images", help="Real images for fid/kid: a folder, webdataset shards or any "
        "data spec (default: the prompt set's own, e.g. the world's renders).")] = None,
    metric_param: Annotated[list[str], typer.Option(
        "--metric-param", help="METRIC.KEY=VALUE, e.g. fid.weights=/models/pt_inception.pth or "
        "hpsv2.checkpoint=HPS_v2.1_compressed.pt (repeatable).")] = [],  # noqa: B006
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("eval"),
    resume: Annotated[bool, typer.Option("--resume", help="Keep images already in OUTPUT; "
                      "sample only the missing ones (the same models and settings only).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier evaluation "
                         "in OUTPUT (its own files only). Without --resume or --overwrite an "
                         "OUTPUT that holds anything is refused.")] = False,
    seed: Annotated[int, typer.Option(help="First seed (image i: seed + i).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per pipeline call.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    timing_rounds: Annotated[int, typer.Option(
        "--timing-rounds", help="Time sampling speed again after sampling: every (model, steps) "
        "row in turn on one batch, this many rounds; ms/image is the median (with the lowest and "
        "highest round) and each row gets a speed-up over the teacher. 0: the sampling pass's "
        "own times.")] = 0,
    timing_threads: Annotated[int, typer.Option(
        "--timing-threads", help="torch's CPU threads during the timing rounds (0: as sampling; "
        "1 keeps the speed-up steady when other processes load the cores).")] = 0,
) -> None:
    """Sample models on a prompt set, score them with reward models and FID, compare with the
    teacher (win rates with bootstrap intervals); writes results.json, report.md and grids."""
    from rich.console import Console

    from .models import export_on_main, is_checkpoint, read_run_config
    from .prompt_sets import load_prompt_set
    from .runner import Evaluation, ModelSpec

    from ..sampling import resolve_device

    resolve_device(device)  # a device this machine lacks is named before anything loads
    prompts, metrics = fill_eval_defaults(prompts, metrics)
    set_params = parse_params([f"prompts.{item}" for item in prompts_param],
                              option="--prompts-param", form="KEY=VALUE").get("prompts", {})
    prompt_set = load_prompt_set(prompts, source=prompts_source, limit=limit, **set_params)
    taken: set[str] = set()
    specs = []
    exports = []
    for location in models:
        if is_checkpoint(location):  # a training checkpoint: written out as a pipeline first
            path = Path(location)
            read_run_config(path)  # before anything else: it says how to rebuild the student
            label = model_label(f"{path.parent.name}-{path.name}", taken)
            spec = ModelSpec(label, str(output / "models" / label), "student",
                             parse_steps(steps, "--steps"), guidance, source=str(path))
            exports.append(spec)
        else:
            spec = ModelSpec(model_label(location, taken), location, "student",
                             parse_steps(steps, "--steps"), guidance)
        specs.append(spec)
    if teacher is not None:
        specs.append(ModelSpec(model_label("teacher", taken), teacher, "teacher",
                               parse_steps(teacher_steps, "--teacher-steps"), guidance))
    evaluation = Evaluation(
        prompt_set, [m.strip() for m in metrics.split(",") if m.strip()], output,
        images_per_prompt=images_per_prompt, seed=seed, batch_size=batch_size, device=device,
        dtype=dtype, resume=resume, overwrite=overwrite, reference_images=reference_images,
        metric_params=parse_params(metric_param), timing_rounds=timing_rounds,
        timing_threads=timing_threads, command=" ".join(["rewardkit", "eval",
                          *map(shlex.quote, redact_command(sys.argv[2:]))]))
    evaluation.prepare_output(specs)  # before anything (an export) is written into OUTPUT
    for spec in exports:
        export_on_main(spec.source, spec.location, device="cpu" if device == "auto" else device)
    results = evaluation.run(specs)
    if results:
        Console(stderr=True).print(f"[green]wrote[/] {output / 'report.md'} and "
                                   f"{output / 'results.json'}", highlight=False)
