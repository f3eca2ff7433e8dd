"""hmc.calibration: temperatures fitted on validation outputs, applied by the probability
model (hmc.decoding.node_probabilities(temperatures=))."""

from __future__ import annotations

import pytest
import torch

from hmc.calibration import Calibration, fit_calibration
from hmc.decoding import node_log_probabilities
from hmc.hierarchy import Hierarchy
from hmc.models import HeadOutput


def _level_softmax(output, temps):
    return torch.log_softmax(output.node_scores / temps.get("node_scores", 1.0), dim=1)


def test_fit_recovers_the_temperature_of_overconfident_logits():
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=g) * 1.5
    targets = torch.distributions.Categorical(logits=true_logits).sample()
    overconfident = HeadOutput(true_logits * 4.0, None, [])
    cal = fit_calibration(_level_softmax, overconfident, targets, fields=["node_scores"])
    assert cal.temperatures["node_scores"] == pytest.approx(4.0, rel=0.1)
    assert "leaf_logits" not in cal.temperatures  # None fields are skipped


def test_unlabelled_targets_are_ignored_and_all_unlabelled_gives_identity():
    out = HeadOutput(torch.randn(10, 3), torch.randn(10, 2), [])
    cal = fit_calibration(_level_softmax, out, torch.full((10,), -100))
    assert cal.temperatures == {"node_scores": 1.0, "leaf_logits": 1.0}


def test_round_trip_and_bad_values():
    cal = Calibration({"node_scores": 2.0, "leaf_logits": 0.5})
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert Calibration.from_dict(None) == Calibration()
    with pytest.raises(ValueError, match="finite number > 0"):
        Calibration({"node_scores": 0.0})
    with pytest.raises(ValueError, match="Expected calibration temperatures"):
        Calibration({"scores": 1.0})


@pytest.mark.parametrize("probabilities", ["states", "leafhead", "product"])
def test_fit_on_the_hrn_probability_models_lowers_the_nll(probabilities):
    """Overconfident HRN outputs (scores x 5 of a model whose sharpness the labels follow):
    the fitted temperatures lower the NLL of held-out labels under every probability model."""
    h = Hierarchy.from_paths([(f"o{i}", f"f{i}{j}", f"s{i}{j}{k}") for i in range(3)
                              for j in range(2) for k in range(3)])  # fmt: skip
    g = torch.Generator().manual_seed(1)
    n = 3000
    out = HeadOutput(
        torch.randn(n, h.num_nodes, generator=g) * 6, torch.randn(n, 18, generator=g) * 6, []
    )

    def logp(o, t):
        return node_log_probabilities(h, o, "states", "logits", probabilities, t)

    # Labels drawn from the same model at a 3x higher temperature, at the leaves.
    truth = {"node_scores": 3.0, "leaf_logits": 3.0}
    leaves = h.tensors().leaves
    p_leaf = logp(out, truth)[:, leaves].exp()
    targets = leaves[torch.multinomial(p_leaf / p_leaf.sum(1, keepdim=True), 1, generator=g)[:, 0]]
    cal = fit_calibration(logp, out, targets)
    rows = torch.arange(n)

    def nll(temps):
        return float(-logp(out, temps)[rows, targets].clamp_min(-1e4).mean())

    assert nll(cal.temperatures) < nll({}) - 0.05
    used = {"states": ["node_scores"], "leafhead": ["leaf_logits"]}.get(probabilities)
    for field in used or ["node_scores", "leaf_logits"]:
        assert cal.temperatures[field] > 1.5  # both softened; the fit is unique per field
