"""One definition per setting (hybridlab.settings): every key any preset composes is documented, no entry is
stale, today's error texts hold, and docs/config.md is what hybridlab.config_doc generates from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hybridlab import config_doc, settings
from hybridlab.config import ConfigError, _compose, load_config, scale_names, variant_names

ROOT = Path(__file__).resolve().parents[2]
# Every composition a key can come from: each scale preset, each data option, each variant.
COMPOSITIONS = ([[f"scale={s}"] for s in scale_names()] + [["~scale", f"data={d}"] for d in ("hf", "files", "paper")]
                + [["~scale", f"variant={v}"] for v in variant_names()])


@pytest.fixture(scope="module")
def composed() -> list[dict]:
    return [OmegaConf.to_container(_compose(args), resolve=False, throw_on_missing=False) for args in COMPOSITIONS]


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for name, value in tree.items():
        key = f"{prefix}{name}"
        out.add(key)
        if isinstance(value, dict):
            out |= _keys(value, f"{key}.")
    return out


def test_every_composed_key_is_documented(composed):
    for tree, args in zip(composed, COMPOSITIONS, strict=True):
        assert settings.undocumented(tree) == [], args


def test_an_undocumented_key_is_found():
    tree = OmegaConf.to_container(_compose(["+train.new_knob=1", "+eval.lm_eval.suites.mine.label=x"]))
    assert settings.undocumented(tree) == ["train.new_knob"]  # under a tree entry (suites) any name is free


def test_every_entry_has_a_meaning_and_matches_a_composed_key(composed):
    keys = set().union(*(_keys(t) for t in composed))
    for pattern, setting in settings.SETTINGS.items():
        assert setting.doc.strip(), pattern
        assert setting.allowed_text.strip(), pattern
        assert any(settings.setting_for(k) == (pattern, setting) for k in keys), f"stale entry {pattern}"


@pytest.mark.parametrize(("override", "key", "allowed"), [
    ("train.lr=-1", "train.lr", "a number > 0"),
    ("model.head_dim=15", "model.head_dim", "an even integer >= 2"),
    ("train.betas=[0.9,1.0]", "train.betas", "a list of 2, each a number in [0, 1)"),
    ("train.precision=fp8", "train.precision", "auto, 32-true, bf16-mixed, 16-mixed, bf16-true"),
    ("eval.niah_depth_range=[0.8,0.2]", "eval.niah_depth_range",
     "[lo, hi] with 0 <= lo <= hi <= 1 (fractions of the haystack)"),
    ("eval.retrieval_query_from_end=5", "eval.retrieval_query_from_end",
     "null or an integer in [1, 4] (1: the last token; the authors: 2)"),
    ("scale.variants=[full,full]", "scale.variants", "a non-empty list of distinct items, each "
     + ", ".join(variant_names())),
    ("data.distance_dist=gauss", "data.distance_dist", "loguniform, powerlaw, uniform"),
])
def test_errors_keep_their_one_line_text(override, key, allowed):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert (e.value.key, e.value.allowed) == (key, allowed)
    assert str(e.value).startswith(f"config key '{key}': got ")


def test_corpus_rules_come_from_the_settings():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["data=hf", "data.corpora.main.hf.name=x", "data.corpora.main.role=test"])
    assert (e.value.key, e.value.allowed) == ("data.corpora.main.role", settings.rule("data.corpora.*.role").allowed)


def test_reference_page_is_fresh():
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == config_doc.reference_markdown(), "docs/config.md is stale: run `make docs` and commit it"


def test_reference_page_shows_defaults_and_scale_overrides():
    rows = {r.key: r for _, section in config_doc.reference_rows() for r in section}
    assert set(rows) == set(settings.SETTINGS)
    steps = rows["train.steps"]
    assert steps.default == "200" and "smoke: 120" in steps.set_by and "mini: 1500" in steps.set_by
    assert rows["train.lr"].allowed == "a number > 0" and "learning rate" in rows["train.lr"].doc
    vocab = rows["data.tokenizer.vocab_size"]
    assert vocab.default == "8192" and "paper: 73448" in vocab.set_by
