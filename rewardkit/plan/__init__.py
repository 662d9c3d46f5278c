"""The memory plan: what an ``lcd`` / ``rg-lcd`` run keeps per GPU, before anything loads.

``rewardkit run RECIPE --config FILE --plan [--gpu_memory 80GiB] [--num_processes N]
[--zero_stage 2]`` prints it; from Python::

    from rewardkit.plan import Launch, plan_config
    plan = plan_config(config, Launch(num_processes=8))
    plan.total, plan.fits(80 * 2**30)

How it is computed and how it was validated: ``docs/memory.md``.
"""

from .plan import GiB, Launch, Line, MemoryPlan, load_for_plan, plan_config, plan_file
from .report import parse_memory, plan_table
from .suggest import Suggestion, suggestions
from .table import Profiles

__all__ = ["GiB", "Launch", "Line", "MemoryPlan", "Profiles", "Suggestion", "load_for_plan",
           "parse_memory", "plan_config", "plan_file", "plan_table", "suggestions"]
