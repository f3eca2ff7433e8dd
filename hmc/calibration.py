"""Post-hoc temperature calibration of a head's outputs, fitted on a validation split.

A :class:`Calibration` holds one temperature per head output (``node_scores``, ``leaf_logits``).
The probability model applies them (``hmc.decoding.node_probabilities(..., temperatures=)``;
for HRN state scores the temperature divides the scores after the sigmoid, the state
distribution's energies), so every probability the package reports (decoders, metrics,
``hmc predict``) is the calibrated one. :func:`fit_calibration` chooses the temperatures that
minimise the validation negative log-likelihood of each sample's observed label,
``-log P(target node)``, which counts a family-labelled sample at the family and a
species-labelled one at the species.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Calibration", "fit_calibration"]

FIELDS = ("node_scores", "leaf_logits")


@dataclass(frozen=True)
class Calibration:
    """Temperatures (> 0, unitless) by head output name; an output not named keeps T = 1."""

    temperatures: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, t in self.temperatures.items():
            if name not in FIELDS:
                raise ValueError(
                    f"Expected calibration temperatures for {list(FIELDS)}, but got {name!r}"
                )
            if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
                raise ValueError(f"temperature of {name!r} must be a finite number > 0, got {t!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"temperatures": dict(self.temperatures)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Calibration:
        return cls(dict((data or {}).get("temperatures", {})))


def fit_calibration(
    node_log_probs: Callable[[Any, dict[str, Tensor]], Tensor],
    output: Any,
    targets: Tensor,
    fields: Sequence[str] = FIELDS,
    max_iter: int = 100,
) -> Calibration:
    """Temperatures for ``fields`` of ``output`` that minimise the mean ``-log P(target)``.

    node_log_probs: ``(output, temperatures) -> [B, N]`` log node probabilities, the package's
        probability model, e.g. ``lambda o, t: hmc.decoding.node_log_probabilities(h, o,
        temperatures=t)``; ``temperatures`` maps each field to a scalar tensor.
    output: the head output on the whole validation split (tensors [B, ...], no grad needed).
    targets: [B] label columns at any depth; negative = unlabelled (ignored).
    Fields that are None in ``output`` are skipped. Optimised in log-temperature with L-BFGS;
    a fit that does not lower the NLL returns T = 1.
    """
    fields = [f for f in fields if getattr(output, f, None) is not None]
    labelled = targets >= 0
    if not fields or not bool(labelled.any()):
        return Calibration({f: 1.0 for f in fields})
    detached = output._replace(**{f: getattr(output, f).detach().float() for f in fields})
    log_t = torch.zeros(len(fields), dtype=torch.float32, requires_grad=True)
    rows = torch.nonzero(labelled).flatten()
    cols = targets[rows]

    def nll() -> Tensor:
        temps = {f: log_t[i].clamp(-4.6, 4.6).exp() for i, f in enumerate(fields)}
        logp = node_log_probs(detached, temps)[rows, cols]
        return -logp.clamp_min(-1e4).mean()

    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    with torch.enable_grad():
        before = float(nll().detach())
        opt.step(closure)
        after = float(nll().detach())
    if not math.isfinite(after) or after > before:  # never make the fit worse than T = 1
        return Calibration({f: 1.0 for f in fields})
    temps = log_t.detach().clamp(-4.6, 4.6).exp().tolist()
    return Calibration(dict(zip(fields, (float(t) for t in temps), strict=True)))
