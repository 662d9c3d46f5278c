"""``rewardkit vote``: a blind A/B study of two models (the page), its report, its export.

``rewardkit vote MODEL_A MODEL_B`` is ``rewardkit vote study MODEL_A MODEL_B``: a group whose
default subcommand is the study, so ``rewardkit vote report VOTES`` still reads as a verb.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from ..errors import ConfigError

DEFAULT_VOTES = Path("votes.jsonl")


class StudyByDefault(TyperGroup):
    """A command group whose arguments go to ``study`` unless they start with a subcommand."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["study", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=StudyByDefault, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)


def images_folder(votes: Path, images: Optional[Path]) -> Path:
    """Where a study's images go: ``--images``, else ``<votes without suffix>-images`` beside
    the votes file."""
    return images if images is not None else votes.with_name(votes.stem + "-images")


def _numbers(text: Optional[str], option: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option} takes two comma-separated integers like 2,50; got "
                          f"{text!r}") from None


def _prompt_spec(prompts: Optional[str]) -> str:
    from ..evaluation.cli import preset_eval_defaults
    from ..plugins import get_host

    prompts = prompts or preset_eval_defaults().get("prompts")
    if not prompts:
        sets = ", ".join(spec.name for spec in get_host().list("prompts")) or "none registered"
        raise ConfigError(f"rewardkit vote needs --prompts (a registered prompt set: {sets}; "
                          "or a prompt file); no registered preset provides one")
    return prompts


@app.command("study", short_help="The study page: both models sampled ahead, raters vote "
             "(the default: rewardkit vote MODEL_A MODEL_B).")
def study_command(
    models: Annotated[list[str], typer.Argument(help="MODEL_A MODEL_B: diffusers pipeline "
                                               "folders (a run's pipeline/), hub ids or "
                                               "training checkpoints (run/checkpoint-N).")],
    prompts: Annotated[Optional[str], typer.Option("--prompts", "-p", help="A registered prompt "
                       "set or a .txt/.jsonl/.json/.csv/.tsv file (default: a registered "
                       "preset's, e.g. the embedded world's).")] = None,
    prompts_source: Annotated[Optional[str], typer.Option(
        "--prompts-source", help="Where a named set's files are (default: the set's own).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Keep the first N prompts of each "
                                                 "category.")] = None,
    prompts_param: Annotated[list[str], typer.Option(
        "--prompts-param", help="KEY=VALUE for a named prompt set (repeatable).")] = [],  # noqa: B006
    steps: Annotated[Optional[str], typer.Option(help="Steps of MODEL_A,MODEL_B (default: 2 for "
                     "a student, 50 for a teacher).")] = None,
    kinds: Annotated[Optional[str], typer.Option(help="student or teacher, for MODEL_A,MODEL_B "
                     "(default: read from each pipeline's scheduler; needed for hub ids).")] = None,
    guidance: Annotated[float, typer.Option("--guidance", "-g", help="Guidance scale of both.")] = 7.5,
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", "-k",
                                 help="Pairs per prompt (seeds seed + i).")] = 1,
    seed: Annotated[int, typer.Option(help="First seed (pair i: seed + i, both models).")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="The votes file (JSONL), shared "
                      "by every rater and server of the study.")] = DEFAULT_VOTES,
    images: Annotated[Optional[Path], typer.Option(help="Where the images go (default: "
                      "VOTES-images beside the votes file).")] = None,
    criteria: Annotated[str, typer.Option(help="What raters answer, comma-separated: overall, "
                        "alignment (prompt alignment), quality.")] = "overall",
    port: Annotated[int, typer.Option(help="Port of the local server.")] = 7860,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: raters on other "
                    "machines of the network).")] = "127.0.0.1",
    prepare_only: Annotated[bool, typer.Option("--prepare-only", help="Sample the images and "
                            "stop (serve them later, e.g. on a machine without a GPU).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per pipeline "
                          "call.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
) -> None:
    r"""A blind A/B study: sample both models on the prompts (fixed seeds, resumable), then
    serve a local page where raters pick the better image of each pair; votes are appended to
    the votes file as they are cast. Needs pip install 'rewardkit\[demo]'."""
    from rich.console import Console

    from ..evaluation.cli import parse_params
    from ..evaluation.prompt_sets import load_prompt_set
    from .log import VoteLog
    from .session import VotingSession, parse_criteria
    from .study import Study, make_arms

    folder = images_folder(output, images)
    asked = parse_criteria(criteria)
    if not prepare_only:
        from ..demo.page import _gradio

        _gradio()  # a missing extra fails before any model samples

    def prepare(location: str, label: str) -> str:
        from ..evaluation.models import export_checkpoint

        return str(export_checkpoint(location, folder / "models" / label,
                                     device="cpu" if device == "auto" else device))

    arms = make_arms(models, None if kinds is None else [k.strip() for k in kinds.split(",")],
                     _numbers(steps, "--steps"), guidance, prepare)
    set_params = parse_params([f"prompts.{item}" for item in prompts_param],
                              option="--prompts-param", form="KEY=VALUE").get("prompts", {})
    prompt_set = load_prompt_set(_prompt_spec(prompts), source=prompts_source, limit=limit,
                                 **set_params)
    study = Study(arms, list(prompt_set.prompts), list(prompt_set.categories), folder,
                  images_per_prompt=images_per_prompt, seed=seed, prompt_set=prompt_set.name)
    log = VoteLog(output)
    session = VotingSession(study, log, asked)  # a votes file of another study fails here
    note = study.generate(device=device, dtype=dtype, batch_size=batch_size)
    console = Console(stderr=True)
    if note:
        console.print(note, style="yellow", highlight=False, markup=False)
    console.print(f"study {study.id}: {study.title()}, {study.num_pairs} pairs; images in "
                  f"{folder}, votes in {output}", highlight=False)
    if prepare_only:
        return
    from .page import build_page

    build_page(session).launch(server_name=host, server_port=port, share=False)


@app.command("report", short_help="Win rates with 95% intervals per criterion and category, "
             "raters, agreement; a markdown report.")
def report_command(
    votes: Annotated[Path, typer.Argument(help="The votes file (the -o of rewardkit vote).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where the markdown "
                      "report goes (default: VOTES-report.md beside the votes).")] = None,
    metrics: Annotated[str, typer.Option("--metrics", "-m", help="Comma-separated reward models "
                       "to hold against the raters (e.g. world-judge,world-scorer).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON instead of "
                       "the markdown.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    device: Annotated[str, typer.Option(help="Where the reward models run.")] = "cpu",
) -> None:
    """Win rate of MODEL_A over MODEL_B per criterion (and per prompt category) with a 95%
    bootstrap interval over pairs (a tie counts half a win for each side, skips are left out),
    the raters and their votes, agreement between raters, position bias and, with --metrics,
    each reward model's agreement with the raters. Writes a markdown report."""
    import json

    from rich.console import Console
    from rich.markup import escape

    from .report import report

    text, results = report(votes, [m.strip() for m in metrics.split(",") if m.strip()],
                           device=device, seed=seed)
    target = output if output is not None else votes.with_name(votes.stem + "-report.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    err = Console(stderr=True)
    if results["skipped_lines"]:
        err.print(f"[yellow]{escape(results['skipped_lines'])}[/]", highlight=False)
    typer.echo(json.dumps(results, indent=1) if as_json else text)
    err.print(f"[green]wrote[/] {target}", highlight=False)


@app.command("export", short_help="The votes as a preference set (safetensors) that "
             "lrm-pretrain trains on and rg-lcd rehearses.")
def export_command(
    votes: Annotated[Path, typer.Argument(help="The votes file (the -o of rewardkit vote).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="The preference set "
                      "folder (default: VOTES-preference-set beside the votes).")] = None,
    teacher: Annotated[Optional[str], typer.Option(help="The backbone whose VAE and text encoder "
                       "the proxy reads (default: the study's teacher).")] = None,
    backbone: Annotated[str, typer.Option(help="Registered backbone that loads it.")] = "stable-diffusion",
    criterion: Annotated[str, typer.Option(help="Which criterion's votes.")] = "overall",
    resolution: Annotated[Optional[int], typer.Option(help="Resize the images to this side "
                          "before encoding (the training resolution of the run that will use "
                          "the set; default: as sampled).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the VAE's latent samples.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "cpu",
) -> None:
    """Turn the votes into a preference set: per voted pair, the two images as the teacher's
    latents, scored by the raters' share of votes (a tie half); pairs split evenly are left
    out. lrm-pretrain trains on it (--preference_set), rg-lcd rehearses it
    (--proxy_rehearsal_set)."""
    from rich.console import Console

    from ..files import write_aside
    from ..plugins import get_host
    from ..sampling import resolve_device
    from .export import study_teacher, votes_to_preference_set
    from .report import read_votes

    read, warning = read_votes(votes)
    console = Console(stderr=True)
    if warning:
        console.print(warning, highlight=False, markup=False, style="yellow")
    teacher = teacher or study_teacher(votes, read)
    if not teacher:
        raise ConfigError(f"the study of {votes} has no teacher to encode the images with (or "
                          "its study.json is not beside its images); pass --teacher, the "
                          "pipeline whose VAE and text encoder the proxy reads")
    if resolution is not None and resolution < 8:
        raise ConfigError(f"--resolution must be at least 8, got {resolution}")
    built = get_host().get("backbone", backbone).build(
        pretrained_model_name_or_path=teacher, device=str(resolve_device(device)))
    pset = votes_to_preference_set(votes, read, built, criterion, resolution, seed,
                                   progress=lambda text: console.print(text, highlight=False))
    target = output if output is not None else votes.with_name(votes.stem + "-preference-set")
    write_aside(target, pset.save)
    console.print(f"[green]wrote[/] {pset.num_prompts} voted pairs ({pset.meta['votes']} votes, "
                  f"latents {tuple(pset.latents.shape[1:])}) to {target}; train a proxy on "
                  f"them with rewardkit run lrm-pretrain --preference_set {target} (or rehearse "
                  f"them in rg-lcd with --proxy_rehearsal_set {target})", highlight=False)


@app.command("simulate", short_help="Synthetic raters: a reward model answers the study "
             "through the page's session (to try a study, its report and export).")
def simulate_command(
    votes: Annotated[Path, typer.Argument(help="The votes file of a study (its images ready: "
                                          "rewardkit vote MODEL_A MODEL_B --prepare-only).")],
    reward: Annotated[str, typer.Option("--reward", "-r", help="The registered reward model "
                      "that answers (e.g. world-judge).")],
    raters: Annotated[int, typer.Option(help="Simulated raters (ids sim-1, sim-2, ...).")] = 3,
    pairs: Annotated[Optional[int], typer.Option(help="Pairs each rater answers (default: "
                     "all).")] = None,
    temperature: Annotated[float, typer.Option(help="Bradley-Terry temperature: a rater picks "
                           "left with probability sigmoid((s_left - s_right) / T).")] = 0.1,
    tie_margin: Annotated[float, typer.Option(help="A tie when the scores differ by less.")] = 0.0,
    criteria: Annotated[str, typer.Option(help="Criteria answered (each an independent "
                        "draw).")] = "overall",
    images: Annotated[Optional[Path], typer.Option(help="The study's images folder (default: "
                      "VOTES-images).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sides and the answers.")] = 0,
    device: Annotated[str, typer.Option(help="Where the reward model runs.")] = "cpu",
) -> None:
    """Synthetic raters answer the study: each sees the reward model's scores of the two
    images shown and picks like a Bradley-Terry rater (see rewardkit.vote.simulate); votes are
    recorded through the page's own session, sides random, into VOTES."""
    import random

    from rich.console import Console

    from .. import api
    from ..plugins import get_host
    from ..sampling import resolve_device
    from .log import VoteLog
    from .session import VotingSession
    from .simulate import simulate
    from .study import Study

    study = Study.load(images_folder(votes, images))
    session = VotingSession(study, VoteLog(votes), criteria, rng=random.Random(seed))
    missing = study.missing_images()
    if missing:
        raise ConfigError(f"the study's image {missing[0]} is missing ({len(missing)} in all); "
                          "sample them with rewardkit vote MODEL_A MODEL_B --prepare-only")
    takes = {p.name for p in get_host().get("reward", reward).params}
    model = api.reward_model(reward, **({"device": str(resolve_device(device))}
                                        if "device" in takes else {}))
    written = simulate(session, model, raters, temperature, tie_margin, pairs, seed)
    Console(stderr=True).print(f"[green]wrote[/] {written} simulated votes ({raters} raters, "
                               f"{reward}) to {votes}", highlight=False)


__all__ = ["app", "export_command", "images_folder", "report_command", "simulate_command",
           "study_command"]
