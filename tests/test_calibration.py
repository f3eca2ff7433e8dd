"""hmc.calibration: temperatures fitted on validation outputs, applied to head outputs."""

from __future__ import annotations

import pytest
import torch

from hmc.calibration import Calibration, fit_calibration
from hmc.models import HeadOutput


def _level_softmax(output):
    return torch.log_softmax(output.node_scores, dim=1)


def test_fit_recovers_the_temperature_of_overconfident_logits():
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=g) * 1.5
    targets = torch.distributions.Categorical(logits=true_logits).sample()
    overconfident = HeadOutput(true_logits * 4.0, None, [])
    cal = fit_calibration(_level_softmax, overconfident, targets, fields=["node_scores"])
    assert cal.temperatures["node_scores"] == pytest.approx(4.0, rel=0.1)
    assert "leaf_logits" not in cal.temperatures  # None fields are skipped
    fixed = cal.apply(overconfident)
    assert torch.allclose(fixed.node_scores, true_logits, rtol=0.1, atol=0.3)


def test_unlabelled_targets_are_ignored_and_all_unlabelled_gives_identity():
    out = HeadOutput(torch.randn(10, 3), torch.randn(10, 2), [])
    cal = fit_calibration(_level_softmax, out, torch.full((10,), -100))
    assert cal.temperatures == {"node_scores": 1.0, "leaf_logits": 1.0}
    assert cal.apply(out) is out


def test_round_trip_and_bad_values():
    cal = Calibration({"node_scores": 2.0, "leaf_logits": 0.5})
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert Calibration.from_dict(None) == Calibration()
    with pytest.raises(ValueError, match="finite number > 0"):
        Calibration({"node_scores": 0.0})
    with pytest.raises(ValueError, match="Expected calibration temperatures"):
        Calibration({"scores": 1.0})
    out = HeadOutput(torch.ones(2, 3), torch.ones(2, 4), [])
    applied = cal.apply(out)
    assert torch.equal(applied.node_scores, torch.full((2, 3), 0.5))
    assert torch.equal(applied.leaf_logits, torch.full((2, 4), 2.0))
