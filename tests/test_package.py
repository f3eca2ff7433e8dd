"""The public namespace and the layering rule (the core works without Lightning)."""

from __future__ import annotations

import subprocess
import sys

import hmc


def test_every_public_name_resolves():
    for name in hmc.__all__:
        assert getattr(hmc, name) is not None, name


def test_unknown_attribute_is_an_attribute_error():
    try:
        hmc.not_a_thing  # noqa: B018
    except AttributeError as e:
        assert "not_a_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_core_and_predictor_do_not_import_lightning():
    code = (
        "import sys, hmc, hmc.losses, hmc.decoding, hmc.metrics, hmc.models, hmc.data, "
        "hmc.predict\n"
        "hmc.load_model\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
