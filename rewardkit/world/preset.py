"""The ``world`` preset: what ``rewardkit run rg-lcd``, ``lrm-pretrain``, ``draft`` and ``grpo``
do with no arguments (the shipped teacher, world data, ``world-judge``), the report after
rg-lcd, and what ``rewardkit eval`` measures without ``--prompts`` / ``--metrics``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def without_idle_guard(defaults: dict[str, Any], chosen: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` without the reward-hacking guard when the user turned validations off
    (``validation_steps=0``): the guard measures at validations, and a guard the user did not ask
    for must not refuse their config."""
    if chosen.get("validation_steps", defaults.get("validation_steps")) == 0:
        return {**defaults, "gold_panel": [], "guard_fd_metric": None}
    return defaults


class WorldPreset:
    """The embedded world: RG-LCD, LRM pretraining, DRaFT and GRPO on the shipped teacher."""

    name = "world"
    recipes = ("rg-lcd", "lrm-pretrain", "draft", "grpo")

    def defaults(self, recipe: str, chosen: dict[str, Any]) -> dict[str, Any]:
        """Config overrides of ``recipe``, fitted to the user's ``chosen`` values (which win)."""
        if recipe in ("draft", "grpo"):
            from .tuning_run import world_tuning_overrides

            return without_idle_guard(world_tuning_overrides(recipe, chosen), chosen)
        if recipe == "rg-lcd":
            from .default_run import default_rg_lcd_overrides, fit_world_defaults

            fitted = fit_world_defaults(default_rg_lcd_overrides(), chosen)
            return {**without_idle_guard(fitted, chosen), "report": True}
        # lrm-pretrain: a world LRM on the shipped teacher with world-judge (what `rewardkit
        # world build` ships as lrm/), into lrm-pretrained-world, sized for the chosen proxy
        from .assets import TEACHER, asset_path
        from .build import PLANS
        from .lrm import world_lrm_overrides

        plan = PLANS["full"]
        return world_lrm_overrides(
            asset_path(TEACHER), "lrm-pretrained-world", contrastive_steps=plan.lrm_contrastive_steps,
            preference_prompts=plan.lrm_preference_prompts,
            preference_steps=plan.lrm_preference_steps, eval_prompts=plan.lrm_eval_prompts,
            proxy=chosen.get("proxy", "lrm"))

    def eval_defaults(self) -> dict[str, str]:
        """``rewardkit eval``'s ``--prompts`` and ``--metrics`` when the user gives none: the
        world's test prompts with the judge, the scorer and the world's Frechet distance."""
        from .evaluate import METRICS

        return {"prompts": "world", "metrics": ",".join(METRICS)}

    def after_run(self, recipe: Any, output_dir: Path) -> Path:
        """Evaluate the teacher and the trained student on the world; write and name the report."""
        from .default_run import finalize_world_run

        report = finalize_world_run(output_dir, teacher=recipe.config.pretrained_teacher_model)
        recipe.accelerator.print(f"report: {report}")
        return report
