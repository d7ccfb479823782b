"""Hybrid layouts: ratios, placement, windows scaled to the context, head-wise mixing, validation errors."""

import pytest
from omegaconf import OmegaConf

from hybridlab.config import ConfigError, variant_names
from hybridlab.models.layout import build_layout, parse_ratio, scaled_window

MODEL = OmegaConf.create({"n_layers": 8, "n_heads": 4})
SCALE = OmegaConf.create({"context": 16384, "ref_context": 16384, "min_window": 1})


def variant(**kw):
    base = {"name": "x", "efficient": "swa", "ratio": "1:1", "first_full": 1, "window": 128, "sinks": 0,
            "full_rope": True, "efficient_rope": True, "headwise": False}
    return OmegaConf.create({**base, **kw})


def test_one_to_one_alternates_starting_at_first_full():
    layout = build_layout(variant(), MODEL, SCALE)
    assert [s.role for s in layout] == ["efficient", "full"] * 4
    assert all(s.windows == (128,) * 4 for s in layout if s.role == "efficient")
    assert all(s.windows == (None,) * 4 for s in layout if s.role == "full")


def test_one_to_three_ratio_places_one_full_layer_per_group():
    layout = build_layout(variant(ratio="1:3", first_full=3), MODEL, SCALE)
    assert [s.role for s in layout] == ["efficient"] * 3 + ["full"] + ["efficient"] * 3 + ["full"]


def test_nope_only_on_full_layers():
    layout = build_layout(variant(full_rope=False), MODEL, SCALE)
    assert {s.rope for s in layout if s.role == "full"} == {False}
    assert {s.rope for s in layout if s.role == "efficient"} == {True}


def test_headwise_mixing_puts_windows_on_some_heads_of_every_layer():
    layout = build_layout(variant(headwise=True), MODEL, SCALE)
    assert all(s.windows == (128, 128, None, None) for s in layout)


def test_window_scales_with_context():
    assert scaled_window(128, 2048, 16384, 1) == 16
    assert scaled_window(2048, 256, 16384, 4) == 32
    assert scaled_window(128, 256, 16384, 4) == 4  # floor at min_window


@pytest.mark.parametrize("kw, key", [
    ({"ratio": "1:2"}, "variant.ratio"),          # group of 3 does not divide 8 layers
    ({"ratio": "a:b"}, "variant.ratio"),
    ({"window": 0}, "variant.window"),
    ({"window": -5}, "variant.window"),
    ({"window": 16384}, "variant.window"),        # not below the context
    ({"efficient": "rnn"}, "variant.efficient"),
    ({"first_full": 2}, "variant.first_full"),
    ({"efficient": "gdn", "headwise": True}, "variant.headwise"),
])
def test_invalid_layouts_name_key_and_value(kw, key):
    with pytest.raises(ConfigError) as e:
        build_layout(variant(**kw), MODEL, SCALE)
    assert e.value.key == key
    assert "allowed" in str(e.value)


def test_parse_ratio():
    assert parse_ratio("1:3") == (1, 3)


def test_every_variant_file_builds_at_smoke_scale(smoke_cfg):
    for name in variant_names():
        cfg = smoke_cfg(name)
        layout = build_layout(cfg.variant, cfg.model, cfg.scale)
        assert len(layout) == cfg.model.n_layers
