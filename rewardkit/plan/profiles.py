"""Activation profiles: the bytes a model's forward (and backward) keeps alive, per sample, as a
function of batch and resolution, measured once with fake tensors and then evaluated anywhere.

A *run* is a function ``run(batch, side)`` that, inside the tracker, builds its inputs at
``batch`` samples of latent side ``side`` and calls the model (forward, and backward where a
graph is kept). :func:`measure` runs it three times under ``FakeTensorMode`` (no memory, no
arithmetic: a full-size SDXL UNet step takes seconds on a CPU), at ``(2, s0)``, ``(4, s0)`` and
``(2, 2 s0)`` (batches of 2 and 4: a batch of one can take other code paths, size-1 dimensions
making some copies views), and reads, at every point ``t`` of the event log, the live bytes as

    live(t) = c(t) + batch * (a(t) + s(t) * (side / s0) ** 2) + g(t)

``c``: what does not grow with the batch (weight casts kept by autocast, say); ``a``: per sample,
not with the resolution (text tokens); ``s``: per sample and per latent pixel; ``g``: the trained
parameters' gradients created so far (counted only where the plan does not already hold them
resident). The three runs must take the same ops in the same order (they do: shapes change, not
the code path), so the three logs align point by point. A :class:`Profile` keeps only the points
that can be the maximum for some batch and resolution (the Pareto front of ``(c, a, s, g)``),
and ``kept``, the bytes alive when the forward ends (what the model holds while later models of
the step run).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


from .tracker import LiveBytes

#: ``run(batch, side, tracker)``: build inputs, call the model; returns the tensors whose
#: storages are the trained parameters' gradients (empty for a frozen model).
Run = Callable[[int, int, LiveBytes], list]


@dataclass
class Profile:
    """A model's activation bytes as a function of batch and latent side (see the module doc)."""

    #: Latent side the spatial terms were measured at (``s`` is per sample at this side).
    side: int
    #: ``(c, a, s)`` of the bytes alive when the forward ends.
    kept: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: ``(c, a, s, g)`` points, one of which is the peak for any batch and side.
    front: list[tuple[float, float, float, float]] = field(default_factory=list)

    def kept_bytes(self, batch: int, side: int) -> float:
        """Bytes the model holds from the end of its forward until its backward."""
        c, a, s = self.kept
        return max(0.0, c + batch * (a + s * (side / self.side) ** 2))

    def peak_bytes(self, batch: int, side: int, gradients: bool = False) -> float:
        """The most bytes alive during the run (``gradients``: with the trained parameters'
        gradients, which a single process creates during backward)."""
        ratio = (side / self.side) ** 2
        best = 0.0
        for c, a, s, g in self.front:
            best = max(best, c + batch * (a + s * ratio) + (g if gradients else 0.0))
        return best

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (the shipped table)."""
        return {"side": self.side, "kept": [round(v) for v in self.kept],
                "front": [[round(v) for v in point] for point in self.front]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Profile":
        """Inverse of :meth:`as_dict`."""
        return cls(side=int(data["side"]), kept=tuple(float(v) for v in data["kept"]),
                   front=[tuple(float(v) for v in point) for point in data["front"]])


@contextlib.contextmanager
def fake_tensors() -> Iterator[Any]:
    """``FakeTensorMode``: tensors with shapes, dtypes and devices but no data."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        yield mode


def trace(run: Run, batch: int, side: int) -> tuple[list[int], list[int], int]:
    """Run ``run`` once under the tracker: live bytes (without gradients) and gradient bytes at
    every event, and the event index where the forward ended (``tracker.mark()`` left by the
    run in ``tracker.forward_end``; the end of the log when it left none)."""
    tracker = LiveBytes()
    with tracker:
        grads = run(batch, side, tracker)
    grad_serials = tracker.serials(grads)
    live, grad, total_live, total_grad = [], [], 0, 0
    for serial, delta in tracker.events:
        if serial in grad_serials:
            total_grad += delta
        else:
            total_live += delta
        live.append(total_live)
        grad.append(total_grad)
    end = getattr(tracker, "forward_end", len(tracker.events))
    return live, grad, end


def measure(setup: Callable[[], Run], side: int, fake: bool = True) -> Profile:
    """The :class:`Profile` of the run ``setup()`` returns (it builds the model: inside the fake
    mode, unless ``fake=False``), from three runs at ``(2, side)``, ``(4, side)`` and
    ``(2, 2 * side)``.

    Should the runs take different code paths (an RM that resizes images at one side but not at
    the other), they are measured again at twice the side; failing that, the profile is fitted
    to each run's peak and kept bytes alone (exact at the measured points, linear between)."""
    context = fake_tensors() if fake else contextlib.nullcontext()
    with context:
        run = setup()
        for reference in (side, 2 * side):
            traces = [trace(run, batch, at) for batch, at in
                      ((2, reference), (4, reference), (2, 2 * reference))]
            lengths = {len(live) for live, _, _ in traces}
            if len(lengths) == 1 and len({end for _, _, end in traces}) == 1:
                return _pointwise(traces, reference)
    return _from_peaks(traces, 2 * side)


def _split(n2: float, n4: float, n_wide: float) -> tuple[float, float, float]:
    """``(c, a, s)`` of values at ``(2, s0)``, ``(4, s0)`` and ``(2, 2 s0)``."""
    per_sample = (n4 - n2) / 2
    spatial = (n_wide - n2) / 2 / 3  # (2 s0 / s0) ** 2 - 1 = 3
    return n2 - 2 * per_sample, per_sample - spatial, spatial


def _pointwise(traces: list, reference: int) -> Profile:
    (one, grad1, end), (two, _, _), (big, _, _) = traces
    points = [(*_split(n2, n4, n_wide), float(g))
              for n2, n4, n_wide, g in zip(one, two, big, grad1)]
    kept = points[end - 1][:3] if end > 0 else (0.0, 0.0, 0.0)
    return Profile(side=reference, kept=tuple(float(v) for v in kept),
                   front=compact(pareto_front(points)))


def _from_peaks(traces: list, reference: int) -> Profile:
    peaks = [max(live) if live else 0 for live, _, _ in traces]
    with_grads = [max((n + g for n, g in zip(live, grad)), default=0) for live, grad, _ in traces]
    kept = [live[end - 1] if end > 0 else 0 for live, _, end in traces]
    grads = float(traces[0][1][-1]) if traces[0][1] else 0.0
    c, a, s = _split(*with_grads)
    return Profile(side=reference, kept=_split(*kept),
                   front=pareto_front([(*_split(*peaks), 0.0), (c - grads, a, s, grads)]))


#: Batches and side ratios (side / measured side) the kept points are the maxima for; other
#: values are covered by these points' linear extension (a lower bound, tight in practice).
GRID_BATCHES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
GRID_SIDE_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)


def compact(points: list[tuple[float, ...]]) -> list[tuple[float, ...]]:
    """The points that are the maximum for some batch, side ratio and gradient weight of the
    grid (:data:`GRID_BATCHES`, :data:`GRID_SIDE_RATIOS`): a handful instead of thousands."""
    kept: dict[tuple[float, ...], None] = {}
    for batch in GRID_BATCHES:
        for ratio in GRID_SIDE_RATIOS:
            for grads in (0.0, 1.0):
                best = max(points, key=lambda p: p[0] + batch * (p[1] + p[2] * ratio ** 2)
                           + grads * p[3])
                kept[tuple(best)] = None
    return list(kept)


def pareto_front(points: list[tuple[float, float, float, float]]) -> list[tuple[float, ...]]:
    """The points no other point beats or equals in every coordinate (their maximum over any
    non-negative weighting is the maximum over all points)."""
    ordered = sorted(set(points), key=lambda p: (-p[0], -p[1], -p[2], -p[3]))
    front: list[tuple[float, ...]] = []
    for point in ordered:
        if not any(all(f[i] >= point[i] for i in range(4)) for f in front):
            front.append(point)
    return front


__all__ = ["Profile", "Run", "fake_tensors", "measure", "pareto_front", "trace"]
