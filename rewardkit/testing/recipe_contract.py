"""The contract of a training recipe, as checks any recipe on the training loop can run.

::

    from rewardkit.testing.recipe_contract import check_recipe
    passed = check_recipe(MyRecipe, {"pretrained_teacher_model": ..., ...}, tmp_path)

:func:`check_recipe` trains the recipe a few steps on what ``values`` configures (a tiny teacher
built offline, a small image folder) and checks:

- ``resume``: a run interrupted after a checkpoint and resumed ends with the same weights, bit
  for bit, and logs the same losses, as an uninterrupted one;
- ``no_pickles``: every file of every checkpoint is safetensors or JSON (no pickle, no
  ``torch.save`` archive);
- ``non_finite``: a loss term that turns NaN stops the run with a ``TrainingError`` naming it,
  and the checkpoints written before it stay intact;
- ``two_processes``: two CPU processes (gloo, through ``torch.distributed.run``) end with
  identical weights (the recipe class must be importable by its module path; skipped with
  ``processes=False``).

The weights compared are the trained module's, read from ``model.safetensors`` of the last
checkpoint. Returns the names of the checks that passed; a failed check raises
``AssertionError`` saying which and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

def _run(recipe_class: type, values: dict[str, Any], out: Path, **extra: Any) -> Any:
    recipe = recipe_class(recipe_class.Config(**{**values, "output_dir": str(out), **extra}))
    recipe.run(progress=False)
    return recipe


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from ..training.safe_state import load_tensor_file

    return load_tensor_file(checkpoint / "model.safetensors")


def _losses(out: Path) -> list[dict[str, float]]:
    from ..training.metrics import read_metrics

    rows = read_metrics(out / "metrics.jsonl")
    return [{k: v for k, v in row.items() if k.endswith("loss")} for row in rows
            if any(k.endswith("loss") for k in row)]


def _interrupted(recipe_class: type, at_step: int) -> type:
    class Interrupted(recipe_class):
        def after_step(self):  # noqa: D401 - a test double
            if self.global_step + 1 == at_step:
                raise KeyboardInterrupt("simulated interruption")
            return super().after_step()

    Interrupted.__name__ = f"Interrupted{recipe_class.__name__}"
    return Interrupted


def _poisoned(recipe_class: type, at_step: int) -> type:
    class Poisoned(recipe_class):
        def losses(self, batch):
            terms = super().losses(batch)
            if self.global_step + 1 == at_step:
                name = next(iter(terms))
                terms = {**terms, name: terms[name] * float("nan")}
            return terms

    return Poisoned


def check_resume(recipe_class: type, values: dict[str, Any], root: Path, steps: int) -> None:
    """Interrupted after the middle checkpoint and resumed == uninterrupted, bit for bit."""
    half = steps // 2
    common = dict(max_train_steps=steps, checkpointing_steps=half)
    _run(recipe_class, values, root / "straight", **common)
    try:
        _run(_interrupted(recipe_class, half + 1), values, root / "resumed", **common)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("resume: the interrupted run did not stop")
    assert (root / "resumed" / f"checkpoint-{half}").is_dir(), "resume: no middle checkpoint"
    _run(recipe_class, values, root / "resumed", resume_from_checkpoint="latest", **common)
    a = _weights(root / "straight" / f"checkpoint-{steps}")
    b = _weights(root / "resumed" / f"checkpoint-{steps}")
    assert a.keys() == b.keys(), "resume: the resumed model has other tensors"
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert not changed, f"resume: {len(changed)} tensors differ after resuming, e.g. {changed[:3]}"
    first = _weights(root / "straight" / f"checkpoint-{half}")
    assert any(not torch.equal(first[k], a[k]) for k in a), "resume: the model never changed"
    straight, resumed = _losses(root / "straight"), _losses(root / "resumed")
    assert straight[half:] == resumed[-(steps - half):], "resume: the resumed losses differ"


def check_no_pickles(root: Path) -> None:
    """Every file of every checkpoint under ``root`` is safetensors (that safetensors opens) or
    JSON (that parses): nothing there could be unpickled."""
    from safetensors import safe_open

    checkpoints = [p for p in root.rglob("checkpoint-*") if p.is_dir()]
    assert checkpoints, "no_pickles: no checkpoint was written"
    for checkpoint in checkpoints:
        for path in (p for p in checkpoint.rglob("*") if p.is_file()):
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    list(handle.keys())
            elif path.suffix == ".json":
                json.loads(path.read_text())
            else:
                raise AssertionError(f"no_pickles: '{path}' is neither safetensors nor JSON")


def check_non_finite(recipe_class: type, values: dict[str, Any], root: Path) -> None:
    """A NaN loss term at step 2 stops the run naming it; checkpoint-1 stays intact."""
    from ..training.errors import TrainingError

    out = root / "non-finite"
    try:
        _run(_poisoned(recipe_class, 2), values, out, max_train_steps=3, checkpointing_steps=1)
    except TrainingError as error:
        assert "step 2" in str(error) and "not finite" in str(error), (
            f"non_finite: the error does not name the step and the term: {error}")
    else:
        raise AssertionError("non_finite: a NaN loss did not stop the run")
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists(), (
        "non_finite: the checkpoints around the NaN step are not as they were")
    weights = _weights(out / "checkpoint-1")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def check_two_processes(recipe_class: type, values: dict[str, Any], root: Path) -> None:
    """Two gloo processes train 2 steps and end with identical weights."""
    out = root / "two-processes"
    target = f"{recipe_class.__module__}:{recipe_class.__qualname__}"
    config = json.dumps({**values, "output_dir": str(out), "max_train_steps": 2,
                         "checkpointing_steps": 2})
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", "2", "--standalone",
               "-m", "rewardkit.testing.recipe_contract", target, config]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"two_processes: the run failed:\n{done.stderr[-3000:]}"
    from ..training.safe_state import load_tensor_file

    ranks = [load_tensor_file(out / f"contract-rank-{rank}.safetensors") for rank in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    differ = [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])]
    assert not differ, f"two_processes: {len(differ)} tensors differ between ranks, e.g. {differ[:3]}"


def check_recipe(recipe_class: type, values: dict[str, Any], root: str | Path, *, steps: int = 4,
                 processes: bool = True) -> list[str]:
    """Run every check on ``recipe_class`` configured with ``values`` (everything but
    ``output_dir``, ``max_train_steps``, ``checkpointing_steps`` and ``resume_from_checkpoint``,
    which the checks set), in folders under ``root``; the names of the checks passed."""
    root = Path(root)
    check_resume(recipe_class, values, root, steps)
    passed = ["resume"]
    check_no_pickles(root)
    passed.append("no_pickles")
    check_non_finite(recipe_class, values, root)
    passed.append("non_finite")
    if processes:
        check_two_processes(recipe_class, values, root)
        passed.append("two_processes")
    return passed


def _worker(target: str, config: str) -> None:
    """One rank of :func:`check_two_processes`: train, then save this rank's weights."""
    import importlib

    from ..training.safe_state import save_tensor_file

    torch.set_num_threads(1)
    module, _, name = target.partition(":")
    recipe_class = importlib.import_module(module)
    for part in name.split("."):
        recipe_class = getattr(recipe_class, part)
    values = json.loads(config)
    recipe = recipe_class(recipe_class.Config(**values))
    recipe.run(progress=False)
    rank = recipe.accelerator.process_index
    save_tensor_file(recipe.unwrapped_model.state_dict(),
                     Path(values["output_dir"]) / f"contract-rank-{rank}.safetensors")


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])


__all__ = ["check_no_pickles", "check_non_finite", "check_recipe", "check_resume",
           "check_two_processes"]
