"""``rewardkit vote report VOTES``: what a study's votes say, as markdown and JSON.

Per study in the file (a file normally holds one): the win rate of model ``a`` over ``b`` per
criterion and per prompt category, with 95% bootstrap intervals over pairs (ties half, skips
out; :mod:`rewardkit.vote.stats`), the raters and their votes, agreement between raters on
pairs several answered, the share of votes for the left image (position bias) and, with
``metrics``, how often each reward model prefers the image the raters chose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from .log import VoteLog
from .stats import CONFIDENCE, RESAMPLES, left_rate, rater_agreement, rm_agreement, win_rate

RM_BATCH = 32


def read_votes(path: str | Path) -> tuple[list[dict[str, Any]], str | None]:
    """The votes of ``path`` and a warning about lines that are not votes (or ``None``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"votes file {path} does not exist; pass the -o file of "
                          "`rewardkit vote`" if not path.is_dir()
                          else f"votes file {path} is a folder; pass the .jsonl file")
    read = VoteLog(path).read()
    if not read.votes:
        bad = f" ({len(read.bad_lines)} line(s) that are not votes)" if read.bad_lines else ""
        raise ConfigError(f"votes file {path} holds no votes{bad}; is it the -o file of "
                          "`rewardkit vote`?")
    return read.votes, read.warning(path)


def _in_order(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _submissions(votes: Sequence[dict[str, Any]], skipped: bool,
                 rater: str | None = None) -> set[tuple[str, Any]]:
    """``(rater, pair)`` of the pairs answered (or skipped): one submission, whatever the
    number of criteria."""
    return {(v["rater"], v["pair"]) for v in votes if (v["winner"] == "skip") == skipped
            and (rater is None or v["rater"] == rater)}


def summarise(votes: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """One summary per study in ``votes`` (in the file's order): see the module docstring."""
    out = []
    for study in _in_order([v["study"] for v in votes]):
        mine = [v for v in votes if v["study"] == study]
        criteria = _in_order([v["criterion"] for v in mine])
        categories = sorted({v["category"] for v in mine} - {""})
        raters = _in_order([v["rater"] for v in mine])
        summary: dict[str, Any] = {
            "study": study, "model_a": mine[0]["model_a"], "model_b": mine[0]["model_b"],
            "answers": len(_submissions(mine, skipped=False)),
            "skips": len(_submissions(mine, skipped=True)),
            "raters": len(raters), "pairs": len({v["pair"] for v in mine}),
            "criteria": {}, "left": left_rate(mine),
            "by_rater": {r: {"answers": len(_submissions(mine, False, r)),
                             "skips": len(_submissions(mine, True, r))} for r in raters}}
        for criterion in criteria:
            these = [v for v in mine if v["criterion"] == criterion]
            entry = {"win_rate": win_rate(these, seed), "agreement": rater_agreement(these)}
            if categories:
                entry["by_category"] = {c: win_rate([v for v in these if v["category"] == c],
                                                    seed) for c in categories}
            summary["criteria"][criterion] = entry
        out.append(summary)
    return out


def rm_agreements(votes_path: str | Path, votes: Sequence[dict[str, Any]],
                  metrics: Sequence[str], device: str = "cpu",
                  seed: int = 0) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """``{(study, criterion): {rm: agreement}}``: each RM scores both images of every voted
    pair once (read from the study's images), then :func:`~rewardkit.vote.stats.rm_agreement`."""
    import torch

    from .. import api
    from ..plugins import get_host
    from ..sampling import resolve_device
    from .images import load_images, vote_image

    keyed = {(v["study"], v["pair"]): v for v in votes if v["winner"] in ("a", "b")}
    keys = list(keyed)
    scores: dict[str, dict[str, list[float]]] = {}
    for name in metrics:
        takes = {p.name for p in get_host().get("reward", name).params}
        params = {"device": str(resolve_device(device))} if "device" in takes else {}
        model = api.reward_model(name, **params)
        scores[name] = {}
        for arm in "ab":
            values: list[float] = []
            for start in range(0, len(keys), RM_BATCH):
                chunk = [keyed[k] for k in keys[start:start + RM_BATCH]]
                images = load_images([vote_image(votes_path, v, arm) for v in chunk])
                with torch.no_grad():
                    values += model(images.to(model.device),
                                    [v["prompt"] for v in chunk]).float().cpu().tolist()
            scores[name][arm] = values
    where = {key: i for i, key in enumerate(keys)}
    out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for study, criterion in _in_order([(v["study"], v["criterion"]) for v in votes]):
        these = [v for v in votes if v["study"] == study and v["criterion"] == criterion
                 and v["winner"] in ("a", "b")]
        rows = [where[(v["study"], v["pair"])] for v in these]
        out[(study, criterion)] = {
            name: rm_agreement(these, [scores[name]["a"][i] for i in rows],
                               [scores[name]["b"][i] for i in rows], seed)
            for name in metrics}
    return out


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _rate(entry: dict[str, Any], key: str = "win_rate") -> tuple[str, str]:
    if entry[key] is None:
        return "-", "-"
    return f"{entry[key]:.3f}", f"{entry['ci_low']:.3f} – {entry['ci_high']:.3f}"


def markdown(summaries: Sequence[dict[str, Any]], source: str, warning: str | None = None,
             rms: dict[tuple[str, str], dict[str, dict[str, Any]]] | None = None) -> str:
    """The report of :func:`summarise` (and :func:`rm_agreements`) as markdown."""
    level = int(CONFIDENCE * 100)
    lines = ["# Human evaluation", "",
             f"Votes: `{source}`. Win rate of A over B: a vote for A counts 1, for B 0, and "
             "**a tie counts as half a win for each side**; skips are left out. Intervals: "
             f"{level}% percentile bootstrap over pairs ({RESAMPLES} resamples; the votes of "
             "several raters on one pair resampled together)."]
    if warning:
        lines += ["", f"> {warning}"]
    for summary in summaries:
        a, b = summary["model_a"], summary["model_b"]
        lines += ["", f"## A: {a} vs B: {b}", "",
                  f"Study `{summary['study']}`: {_count(summary['answers'], 'answer')} and "
                  f"{_count(summary['skips'], 'skip')} from {_count(summary['raters'], 'rater')} "
                  f"on {_count(summary['pairs'], 'different pair')}; criteria: "
                  f"{', '.join(summary['criteria'])}.", "",
                  f"| criterion | win rate of A | {level}% interval | A wins | B wins | ties | "
                  "votes | pairs | raters |", "|---|---|---|---|---|---|---|---|---|"]
        for criterion, entry in summary["criteria"].items():
            rate = entry["win_rate"]
            lines.append(f"| {criterion} | {' | '.join(_rate(rate))} | {rate['a']} | {rate['b']} "
                         f"| {rate['tie']} | {rate['votes']} | {rate['pairs']} | "
                         f"{rate['raters']} |")
        for criterion, entry in summary["criteria"].items():
            if "by_category" not in entry:
                continue
            lines += ["", f"**{criterion}, by prompt category**", "",
                      f"| category | win rate of A | {level}% interval | votes |",
                      "|---|---|---|---|"]
            for category, rate in entry["by_category"].items():
                lines.append(f"| {category} | {' | '.join(_rate(rate))} | {rate['votes']} |")
        lines += ["", "**Raters**", "", "| rater | answered | skipped |", "|---|---|---|"]
        lines += [f"| {rater} | {n['answers']} | {n['skips']} |"
                  for rater, n in summary["by_rater"].items()]
        lines.append("")
        for criterion, entry in summary["criteria"].items():
            agreement = entry["agreement"]
            if agreement["agreement"] is None:
                lines.append(f"- Agreement between raters ({criterion}): no pair was answered by "
                             "more than one rater.")
            else:
                same = round(agreement["agreement"] * agreement["rater_pairs"])
                lines.append(f"- Agreement between raters ({criterion}): "
                             f"{agreement['agreement']:.3f} (the same answer in {same} of "
                             f"{agreement['rater_pairs']} pairs of raters, on the "
                             f"{agreement['pairs']} pairs answered by more than one rater).")
        left = summary["left"]
        if left["left_rate"] is not None:
            lines.append(f"- Position bias: {left['left_rate']:.3f} of {left['votes']} votes "
                         "that chose a side chose the left image (0.5: none; sides are random, "
                         "so this does not bias the win rate).")
        if rms:
            lines += ["", "**Reward models against the raters**: how often each RM scores the "
                      "image the rater chose higher (rater ties left out, RM ties half).", "",
                      f"| criterion | reward model | agreement | {level}% interval | votes |",
                      "|---|---|---|---|---|"]
            for criterion in summary["criteria"]:
                for name, entry in rms.get((summary["study"], criterion), {}).items():
                    lines.append(f"| {criterion} | {name} | {' | '.join(_rate(entry, 'agreement'))}"
                                 f" | {entry['votes']} |")
    return "\n".join(lines) + "\n"


def report(votes_path: str | Path, metrics: Sequence[str] = (), device: str = "cpu",
           seed: int = 0) -> tuple[str, dict[str, Any]]:
    """``(markdown, results)`` of a votes file (see the module docstring)."""
    votes, warning = read_votes(votes_path)
    if metrics:
        from ..plugins import get_host

        known = {spec.name for spec in get_host().list("reward")}
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise ConfigError(f"--metrics: {unknown[0]!r} is not a registered reward model "
                              f"({', '.join(sorted(known))})")
    summaries = summarise(votes, seed)
    rms = rm_agreements(votes_path, votes, metrics, device, seed) if metrics else None
    if rms:
        for summary in summaries:
            for criterion, entry in summary["criteria"].items():
                entry["reward_models"] = rms.get((summary["study"], criterion), {})
    results = {"votes_file": str(votes_path), "skipped_lines": warning, "studies": summaries,
               "ties": "half a win for each side", "confidence": CONFIDENCE,
               "resamples": RESAMPLES}
    return markdown(summaries, str(votes_path), warning, rms), results


__all__ = ["markdown", "read_votes", "report", "rm_agreements", "summarise"]
