"""Tests for hybridlab.figures: every figure renders from small hand-made tables, missing inputs give
placeholders, FIGURE_NAMES matches what is written, and the figures code never imports torch.

`synthetic_tables` (also used by test_claims.py and test_report.py) builds every input table for a tiny run in
which each variant's retrieval head forms at a chosen number of tokens.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hybridlab.figures import FIGURE_NAMES, TABLE_NAMES
from hybridlab.figures.tables import INPUT_COLUMNS, Tables, load_tables
from hybridlab.io import write_json, write_table

CONTEXT = 256
TOKENS = (1000, 2000, 4000, 6000, 8000, 10000)
SEEDS = tuple(range(8))  # a variant runs as many of these as its onset tuple has entries
INF = math.inf
# Onset (tokens) of the retrieval head per variant and seed: small windows first (the paper's laziness).
ONSETS = {"full": (6000, INF, 8000), "swa128": (2000, 2000, 4000), "swa512": (4000, 6000, 4000),
          "swa2048": (6000, INF, 8000), "swa128_nope": (2000, 2000, 4000), "swa128_ratio13": (2000, 4000, 4000),
          "swa128_headwise": (4000, 4000, 6000)}
WINDOW = {"swa128": 2, "swa512": 8, "swa2048": 32, "swa128_nope": 2, "swa128_ratio13": 2, "swa128_headwise": 2}


def _layout(variant: str) -> list[str]:
    if variant == "full":
        return ["attn:full:full,full"] * 4
    w = WINDOW[variant]
    eff = f"attn:efficient:{w},{w}"
    return [eff, "attn:full:full,full", eff, eff] if variant.endswith("ratio13") else [eff, "attn:full:full,full"] * 2


def synthetic_tables(onsets: dict[str, tuple] | None = None, *, nope_short_delta: float = 0.0,
                     receptive_increase: tuple[float, float] = (1.0, 0.05), sizes: bool = False) -> Tables:
    """Every input table of a tiny 4-layer run; a run's NIAH accuracy is 1 (0.3 beyond the training length,
    1 for NoPE) once its head has formed, 0 before; log(LongPPL) drops by 0.5 when it forms."""
    onsets = ONSETS if onsets is None else onsets
    ev, heads, train, traj, onset_rows, traced = [], [], [], [], [], []
    for v, per_seed in onsets.items():
        roles = [s.split(":")[1] for s in _layout(v)]
        for seed, on in zip(SEEDS, per_seed, strict=False):
            for step, t in enumerate(TOKENS, 1):
                formed = t >= on
                loss = 2.0 + 3000.0 / t
                run = (v, seed, step, t)
                ev += [(*run, "val_loss", CONTEXT, loss),
                       (*run, "val_loss_local", CONTEXT, loss - 0.05 + (nope_short_delta if v.endswith("nope") else 0)),
                       (*run, "log_longppl", CONTEXT, loss + 1.0 - 0.5 * formed)]
                for length in (128, 256, 512):
                    beyond = 1.0 if v.endswith("nope") else 0.3
                    acc = float(formed) * (beyond if length > CONTEXT else 1.0)
                    ev += [(*run, "niah_acc", length, acc), (*run, "ruler_vt", length, 0.8 * acc)]
                ev += [(*run, "loss_by_pos", pos, loss + 1.0 / np.log(pos)) for pos in (16, 64, 256)]
                for layer, role in enumerate(roles):
                    for head in (0, 1):
                        mass = 0.9 if (formed and role == "full" and head == 0 and layer == 1) else 0.03
                        heads += [(*run, layer, head, role, "needle_mass", CONTEXT, mass),
                                  (*run, layer, head, role, "entropy_norm", CONTEXT, 1.0 - mass)]
                train.append((*run, loss + 0.1, 1e-3, 5e4, np.nan, 1.5))
                for metric, value in (("entropy_norm", 0.9 - 0.6 * formed), ("q_rel_l2", 1.0 - t / TOKENS[-1]),
                                      ("k_rel_l2", 0.8 - 0.8 * t / TOKENS[-1]), ("needle_mass", 0.9 * formed)):
                    if on < INF:  # analyze traces only the heads that formed
                        traj.append((*run, 1, 0, metric, value))
            traced.append((v, seed, 0, 1, 0, "full", 0.9 if on < INF else 0.03, on, on < INF))
            # any_full is what C3 reads; the strongest-head and interpolated rows must not leak into it.
            onset_rows += [(v, seed, "any_full", -1, -1, "onset_tokens", on, on < INF),
                           (v, seed, "any_full", -1, -1, "onset_tokens_interp", on * 0.9, on < INF),
                           (v, seed, "strongest", 3, 1, "onset_tokens", INF, False)]
    last = (TOKENS[-1], len(TOKENS))
    variants = list(onsets)
    hybrids = [v for v in variants if v != "full"]
    inc_full, inc_eff = receptive_increase
    seeds_of = {v: SEEDS[:len(onsets[v])] for v in variants}
    rec = []
    for v in variants:
        for seed in seeds_of[v]:
            run = (v, seed, last[1], last[0])
            rec.append((*run, "none", CONTEXT, "log_longppl", 3.0))
            for window in (32, 64):  # Full's "efficient" rows equal "none", as analysis/receptive.py writes them
                rec.append((*run, "full", window, "log_longppl", 3.0 + inc_full))
                rec.append((*run, "efficient", window, "log_longppl", 3.0 + (inc_eff if v in hybrids else 0)))
    probe = [(v, s, last[1], last[0], layer, feat, "probe_acc", 0.125 + 0.2 * layer)
             for v in variants for s in seeds_of[v] for layer in range(4) for feat in ("resid", "delta")]
    grad = [(v, s, last[1], last[0], d, "grad_influence", 1.0 / d) for v in variants for s in seeds_of[v]
            for d in (1, 4, 16, 64, 256)]
    mask = [(v, s, last[1], last[0], k, h, CONTEXT, "niah_acc", max(0.0, 1 - k * (0.3 if h == "top" else 0.02)))
            for v in variants for s in seeds_of[v] for k in (0, 1, 2, 4) for h in ("top", "random")]
    fit = [(v, "no_constant", "param", n, x) for v in variants
           for n, x in (("B", 60.0), ("alpha", 0.25), ("C", 20.0), ("beta", 0.3))]
    frames = {
        "eval": ev, "heads": heads, "train": train, "receptive": rec, "probe": probe, "trajectory": traj,
        "onset": onset_rows, "gradinf": grad, "masking": mask, "scaling_fit": fit, "traced": traced,
    }
    columns = dict(INPUT_COLUMNS, train=("variant", "seed", "step", "tokens", "loss", "lr", "tokens_per_s", "mfu",
                                         "peak_mem_gb"))
    frames = {k: pd.DataFrame(rows, columns=list(columns[k])) for k, rows in frames.items()}
    frames = {k: df.assign(size="S1") if k != "scaling_fit" else df for k, df in frames.items()}
    if sizes:  # a smaller size S0 whose losses are 10% higher, beside S1
        small = frames["eval"].assign(size="S0", value=frames["eval"]["value"] * 1.1)
        frames["eval"] = pd.concat([small, frames["eval"]], ignore_index=True)
    names = ["S0", "S1"] if sizes else ["S1"]
    runs = [{"size": z, "variant": v, "non_embedding_params": 1e6 * (i + 1)} for i, z in enumerate(names)
            for v in variants]
    info = {"name": "unit", "context": CONTEXT, "ref_context": 16384, "variants": variants, "seeds": list(SEEDS),
            "sizes": names, "layouts": {v: _layout(v) for v in variants}, "runs": runs}
    return Tables(info=info, frames=frames)


def write_tables(tables: Tables, folder: Path, only: tuple[str, ...] | None = None) -> Path:
    """Write the tables (all, or `only` these) and info.json to `folder` as a results tables folder."""
    for name, df in tables.frames.items():
        if df is not None and (only is None or name in only):
            write_table(folder / f"{name}.csv", df)
    write_json(folder / "info.json", tables.info)
    return folder


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 50


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[Path]]:
    from hybridlab.figures.build import build_all

    root = tmp_path_factory.mktemp("full")
    tables = write_tables(synthetic_tables(), root / "tables")
    return root / "paper", build_all("unit", tables, root / "paper")


@pytest.mark.parametrize("name", FIGURE_NAMES)
def test_every_figure_renders_from_small_tables(built, name):
    paper, paths = built
    assert_png(paper / "figures" / f"{name}.png")
    pdf = paper / "figures" / f"{name}.pdf"
    assert pdf.read_bytes().startswith(b"%PDF") and pdf in paths
    caption = (paper / "captions" / f"{name}.rst").read_text()
    assert "No data" not in caption and "The paper reports" in caption


def test_build_writes_exactly_the_declared_outputs(built):
    paper, paths = built
    figures = {p.name for p in (paper / "figures").iterdir()}
    assert figures == {f"{n}.{ext}" for n in FIGURE_NAMES for ext in ("pdf", "png")}
    tables = {p.name for p in (paper / "tables").iterdir()}
    assert tables == {f"{n}.{ext}" for n in TABLE_NAMES for ext in ("csv", "md", "tex")}
    assert {p.name for p in paths} >= {"report.md", "report.html"}


def test_figure_specs_match_figure_names():
    from hybridlab.figures.build import figure_specs
    from hybridlab.figures.claims import load_claims_config

    specs = figure_specs(load_claims_config())
    assert tuple(s.name for s in specs) == FIGURE_NAMES
    assert all(s.caption for s in specs)


def test_several_sizes_restrict_claims_and_other_figures_to_the_largest():
    t = synthetic_tables(sizes=True)
    assert t.sizes == ["S0", "S1"] and t.main_size == "S1"
    one = t.at_size(t.main_size)
    assert set(one.frames["eval"]["size"]) == {"S1"} and len(one.frames["eval"]) * 2 == len(t.frames["eval"])
    assert one.frames["scaling_fit"] is t.frames["scaling_fit"]  # no size column: kept whole


def test_missing_tables_give_placeholders_and_the_cli_never_imports_torch(tmp_path):
    """Only info.json: every figure is a placeholder saying why; run through the CLI in a fresh interpreter where
    importing torch fails, so any torch import (however indirect) would break it."""
    tables = write_tables(synthetic_tables({"swa128": ONSETS["swa128"]}), tmp_path / "tables", only=())
    code = ("import sys\n"
            "class BlockTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ImportError('torch is blocked in this test')\n"
            "sys.meta_path.insert(0, BlockTorch())\n"
            "from hybridlab.cli import main\n"
            f"rc = main(['figures', '--scale', 'unit', '--tables', {str(tables)!r},\n"
            f"           '--out', {str(tmp_path / 'p')!r}])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in FIGURE_NAMES:
        assert_png(tmp_path / "p" / "figures" / f"{name}.png")
    caption = (tmp_path / "p" / "captions" / "fig3_receptive.rst").read_text()
    assert "No data at this scale: receptive.csv is absent" in caption
    report = (tmp_path / "p" / "report.md").read_text()
    assert "**No data at this scale:** receptive.csv is absent" in report
    assert "INCONCLUSIVE" in report and "**PASS**" not in report and "**FAIL**" not in report


def test_importing_the_figures_package_and_report_builder_never_imports_torch():
    code = ("import sys\n"
            "import hybridlab.figures, hybridlab.figures.build, hybridlab.figures.report, hybridlab.figures.claims\n"
            "import hybridlab.figures.html, hybridlab.figures.plots\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_load_tables_needs_info_and_checks_columns(tmp_path):
    from hybridlab.io import CorruptFileError

    with pytest.raises(FileNotFoundError, match="info.json"):
        load_tables(tmp_path)
    write_json(tmp_path / "info.json", {"context": 8})
    assert load_tables(tmp_path).missing == [f"{k}.csv" for k in INPUT_COLUMNS]
    pd.DataFrame({"variant": ["a"]}).to_csv(tmp_path / "eval.csv", index=False)
    with pytest.raises(CorruptFileError, match="missing columns"):
        load_tables(tmp_path)


def test_built_report_embeds_every_figure_and_is_self_contained(built):
    paper, _ = built
    md = (paper / "report.md").read_text()
    html = (paper / "report.html").read_text()
    assert all(f"![{n}](figures/{n}.png)" in md for n in FIGURE_NAMES)
    assert html.count("data:image/png;base64,") == len(FIGURE_NAMES)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # base64 may spell anything
    assert "src=\"figures/" not in text and "http" not in text.replace("http-equiv", "")
