"""The public namespace and the layering rule (the core works without Lightning)."""

from __future__ import annotations

import hmc


def test_every_public_name_resolves_to_the_object_of_that_name():
    for name in hmc.__all__:
        assert getattr(hmc, name).__name__ == name, name


def test_dir_lists_the_lazy_names_for_tab_completion():
    assert {"HMCModule", "build_model", "Predictor"} <= set(dir(hmc))


def test_unknown_attribute_is_an_attribute_error():
    try:
        hmc.not_a_thing  # noqa: B018
    except AttributeError as e:
        assert "not_a_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")
