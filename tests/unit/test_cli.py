"""The CLI as a newcomer meets it: every option explained with its default and choices, the commands in
pipeline order with the examples of the epilog valid, --version, the `list` views, `describe` planning what an
override asks for, tables on standard output with `--out -`, and readable progress lines."""

from __future__ import annotations

import argparse
import json
import re
from importlib.metadata import version

import pandas as pd
import pytest

from hybridlab.cli import EPILOG, build_parser, main
from hybridlab.config import model_names, scale_names, variant_labels, variant_names
from hybridlab.settings import SETTINGS

# The order a run goes through the stages: each command after the one whose output it reads.
PIPELINE = ("describe", "prepare-data", "train", "evaluate", "analyze", "aggregate", "figures", "report-index")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_of_every_command_is_explained_with_its_default():
    for name, p in _subparsers().items():
        text = p.format_help()
        assert p.description, name
        for action in p._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            flag = "/".join(action.option_strings) or action.dest
            assert action.help, f"{name} {flag} has no help"
            shows_default = (action.option_strings and not action.required and action.default not in
                             (None, False, [], argparse.SUPPRESS))
            if shows_default:
                assert f"(default: {action.default})" in " ".join(text.split()), f"{name} {flag}"


def test_run_options_list_their_choices():
    p = _subparsers()["train"]
    text = " ".join(p.format_help().split())
    assert all(f"{v} ({label})" in text for v, label in variant_labels().items())  # swa128 (SWA-128)
    assert all(s in text for s in scale_names()) and all(m in text for m in model_names())
    assert SETTINGS["seed"].doc.split("(")[0].strip() in text
    assert "--out RUN_DIR" in text and "--data DATA_DIR" in text


def test_top_level_help_lists_the_stages_in_pipeline_order_and_its_examples_parse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Rethinking the Role of Efficient Attention" in out and "examples:" in out
    listed = re.findall(r"^    ([a-z][a-z-]+)\b", out, re.M)
    assert set(listed) == set(_subparsers())
    positions = [listed.index(name) for name in PIPELINE]
    assert positions == sorted(positions), listed
    examples = [line.split("  ")[1].strip() for line in EPILOG.splitlines() if line.startswith("  hybridlab ")]
    assert len(examples) >= 5
    parser = build_parser()
    for example in examples:
        args = parser.parse_args(example.split()[1:])
        assert callable(args.fn), example


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"hybridlab {version('hybridlab')}"


def test_cli_runs_from_a_checkout_that_is_not_installed(monkeypatch, capsys):
    """On the GPU image the package runs from src/ on PYTHONPATH, without installed metadata: the parser (every
    command) must not need it (it did: importlib.metadata raised and every DAG job failed)."""
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("hybridlab ")


def test_list_shows_sizes_variant_labels_scales_and_keys(capsys):
    assert main(["list", "sizes"]) == 0
    sizes = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in sizes] == model_names() and all("d_model" in line for line in sizes)
    assert main(["list", "variants"]) == 0
    variants = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in variants] == variant_names()
    assert any(line.split(None, 1)[1] == "SWA-128" for line in variants if line.startswith("swa128 "))
    assert main(["list", "scales"]) == 0
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines()} == set(scale_names())
    assert main(["list", "keys"]) == 0
    keys = {line.split(" = ")[0] for line in capsys.readouterr().out.splitlines() if " = " in line}
    assert {k for k in SETTINGS if "*" not in k} <= keys


def test_describe_plans_what_a_scale_override_asks_for(tmp_path, capsys):
    """`describe scale=mini` (the default --scale smoke, overridden) names and plans the mini scale alike."""
    from hybridlab.config import scale_plan

    mini = scale_plan("mini")
    assert main(["describe", "--out", str(tmp_path / "info.json"), "scale=mini"]) == 0
    out = capsys.readouterr().out
    plan = json.loads((tmp_path / "info.json").read_text())
    assert plan["name"] == "mini" and plan["context"] == mini["context"]
    assert out.startswith(f"scale mini: context {mini['context']}")
    runs = sum(r["seeds"] for r in plan["runs"])
    assert f"{runs} training runs" in out and {r["variant"] for r in plan["runs"]} == set(mini["variants"])
    assert {r["label"] for r in plan["runs"]} >= {"SWA-128", "Full"}


def test_describe_without_out_writes_nothing_and_dash_means_stdout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["describe"]) == 0
    assert "training runs" in capsys.readouterr().out and not list(tmp_path.iterdir())
    assert main(["describe", "--out", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["name"] == "smoke" and "training runs" in captured.err
    assert not list(tmp_path.iterdir())  # no file named "-"


def test_a_table_goes_to_stdout_with_out_dash(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows = pd.DataFrame({"variant": ["full"], "seed": [0], "step": [1], "tokens": [8], "metric": ["val_loss"],
                         "length": [16], "value": [2.5]})
    rows.to_csv(tmp_path / "eval.csv", index=False)
    assert main(["aggregate", "--kind", "eval", "--out", "-", "eval.csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("size,variant,seed") and "2.5" in captured.out
    assert "1 rows -> standard output" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.csv"]


def test_a_folder_output_refuses_dash(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["prepare-data", "--out", "-"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "got '-'" in err and "a folder path" in err and not list(tmp_path.iterdir())


def test_prepare_data_says_what_it_wrote_in_words(tmp_path, capsys):
    tiny = ["scale.context=64", "data.n_train_seqs=8", "data.n_val_seqs=4", "eval.niah_samples=2",
            "eval.ruler_tasks=[niah_single]", "eval.ruler_samples=2", "eval.probe_samples=0"]
    assert main(["prepare-data", "--out", str(tmp_path / "d"), *tiny]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    expected = r"data: train 8 sequences \(512 tokens\), val 4 sequences \(256 tokens\); vocabulary [0-9,]+ -> "
    assert re.fullmatch(expected + re.escape(str(tmp_path / "d")), line), line
