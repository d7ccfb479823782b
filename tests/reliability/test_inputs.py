"""User-written inputs fail before work starts and name what is wrong (issue 22): unknown keys in a YAML file
with the closest known key, a claims file checked key by key, malformed real-text records by file and line;
paths: result files readable as the umask allows, shell commands that quote every path, a rebuilt paper folder
that replaces the old one only when complete."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from hybridlab.config import ConfigError

from .helpers import snakemake

# --- unknown keys in the user's YAML files --------------------------------------------------------------------


@pytest.fixture
def conf(tmp_path, monkeypatch) -> Path:
    """A copy of the packaged configs that load_config reads instead (a user adding files to conf/)."""
    import hybridlab.config as config
    import hybridlab.settings as settings

    folder = Path(shutil.copytree(config.CONF_DIR, tmp_path / "conf"))
    monkeypatch.setattr(config, "CONF_DIR", folder)
    monkeypatch.setattr(settings, "CONF_DIR", folder)  # the option names (conf/<group>/*.yaml)
    return folder


@pytest.mark.parametrize(("group", "name", "line", "key", "near"), [
    ("variant", "swa128s", "sink_tokens: 4", "variant.sink_tokens", "variant.sinks"),
    ("train", "mine", "warmup_step: 5", "train.warmup_step", "train.warmup_steps"),
    ("scale", "mine", "  contxt: 512", "scale.contxt", "scale.context"),
    ("eval", "mine", "niah_sample: 8", "eval.niah_sample", "eval.niah_samples"),
    ("data", "mine", "facts_per_tokens: 0.1", "data.facts_per_tokens", "data.facts_per_token"),
])
def test_unknown_key_in_a_yaml_file_names_the_closest_known_key(conf, group, name, line, key, near):
    from hybridlab.config import load_config

    base = {"variant": "swa128", "train": "default", "scale": "smoke", "eval": "default", "data": "synthetic"}[group]
    text = (conf / group / f"{base}.yaml").read_text()
    if group == "scale":
        text = text.replace("scale:\n", f"scale:\n{line}\n", 1)
    else:
        text = text.replace("name: swa128", "name: swa128s") + f"\n{line}\n"
    (conf / group / f"{name}.yaml").write_text(text)
    scale, variant, over = "smoke", "swa128", []
    if group == "variant":
        variant = name
    elif group == "scale":
        scale = name
        (conf / group / f"{name}.yaml").write_text(text.replace("name: smoke", f"name: {name}"))
    else:
        over = [f"{group}={name}"]
    with pytest.raises(ConfigError, match=rf"config key '{key}': got .*did you mean '{near}'\?"):
        load_config(scale, variant, 0, over)


def test_every_packaged_config_passes_the_unknown_key_check():
    from hybridlab.config import _names, load_config, scale_names, variant_names

    for scale in scale_names():
        load_config(scale, "swa128", 0)
    for variant in variant_names():
        load_config("smoke", variant, 0)
    extra = {"hf": ["data.corpora.main.hf.name=x"], "files": ["data.corpora.main.files=[README.md]"]}
    for data in _names("data"):
        load_config("smoke", "full", 0, [f"data={data}", *extra.get(data, [])])
    load_config("smoke", "full", 0, ["train=paper"])


# --- the claims file ------------------------------------------------------------------------------------------

def _claims(tmp_path, edit) -> Path:
    from hybridlab.figures.claims import DEFAULT_CONFIG

    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    edit(cfg)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(("edit", "match"), [
    (lambda c: c["c2"].update(min_ration=5.0), r"'c2.min_ration'.*did you mean 'c2.min_ratio'"),
    (lambda c: c.update(c5={"x": 1}), r"config key 'c5'"),
    (lambda c: c["c3"].update(onset_selection="weakest"), r"'c3.onset_selection': got 'weakest'; allowed: any_full"),
    (lambda c: c["c1"].update(early_fraction=1.5), r"'c1.early_fraction': got 1.5"),
    (lambda c: c["c1"].update(early_fraction=0.9), r"'c1.early_fraction': got 0.9; allowed: at most c1.late"),
    (lambda c: c["c1"].update(variants=["swa128"]), r"'c1.variants'.*at least two"),
    (lambda c: c["c4"].update(long_metrics=["niah"]), r"'c4.long_metrics'"),
    (lambda c: c["statistics"].update(seed=-1), r"'statistics.seed': got -1"),
    (lambda c: c["noise_floor"].pop("niah_acc"), r"'noise_floor.niah_acc': got None"),
    (lambda c: c["c2"].update(min_ratio="five"), r"'c2.min_ratio': got 'five'"),
])
def test_claims_file_is_checked_key_by_key(tmp_path, edit, match):
    from hybridlab.figures.claims import load_claims_config

    with pytest.raises(ConfigError, match=match):
        load_claims_config(_claims(tmp_path, edit))


def test_claims_file_that_is_not_yaml_names_its_line(tmp_path):
    from hybridlab.figures.claims import load_claims_config

    path = tmp_path / "claims.yaml"
    path.write_text("statistics:\n  level: 0.95\n c1: [oops\n")
    with pytest.raises(ConfigError, match=r"'--claims'.*a YAML file \(line 3"):
        load_claims_config(path)


# --- real-text inputs: the file and line of a malformed record ------------------------------------------------

def _texts(tmp_path, files: str, text_field: str = "text") -> list[str]:
    from hybridlab.config import load_config
    from hybridlab.data.corpora import corpora, group_texts

    cfg = load_config("smoke", "full", 0, ["data=files", f"data.corpora.main.files=[{files}]",
                                           f"data.corpora.main.text_field={text_field}"])
    return list(group_texts(corpora(cfg.data)[0], 0))


@pytest.mark.parametrize(("name", "content", "match"), [
    ("bad.jsonl", b'{"text": "one"}\n{"text": "two"\n', r"bad.jsonl:2: not a JSON object .*column"),
    ("list.jsonl", b'{"text": "one"}\n\n["text"]\n', r"list.jsonl:3: a JSON list, not an object"),
    ("latin1.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"latin1.jsonl:2: not UTF-8 text \(byte b'\\xe9'"),
    ("number.jsonl", b'{"text": 42}\n', r"number.jsonl:1: field 'text' holds int"),
    ("latin1.txt", b"line one\nline two caf\xe9\n", r"latin1.txt:2: not UTF-8 text"),
    ("broken.parquet", b"PAR1 this is not parquet", r"broken.parquet: not a readable Parquet file"),
])
def test_malformed_record_is_named_by_file_and_line(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    from hybridlab.io import CorruptFileError

    with pytest.raises(CorruptFileError, match=match):
        _texts(tmp_path, str(tmp_path / name))


def test_malformed_record_through_prepare_data_is_one_line(tmp_path, capsys):
    from hybridlab.cli import main

    good = "".join(json.dumps({"text": f"document {i} about harbours and tides."}) + "\n" for i in range(40))
    (tmp_path / "docs.jsonl").write_text(good + '{"text": "cut short\n')
    out = tmp_path / "data"
    rc = main(["prepare-data", "--out", str(out), "data=files", f"data.corpora.main.files=[{tmp_path}/docs.jsonl]",
               "data.tokenizer.vocab_size=300", "data.corpora.main.val_fraction=0.2", "scale.context=64"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{tmp_path}/docs.jsonl:41: not a JSON object" in err and "Traceback" not in err, err


# --- memory: a run that cannot fit is refused before it starts ----------------------------------------------

def test_a_run_that_cannot_fit_in_memory_is_refused_before_anything_is_written(tmp_path, tiny_data, monkeypatch,
                                                                             capsys):
    import hybridlab.train.memory as memory
    from hybridlab.cli import main
    from hybridlab.config import load_config

    from .helpers import TINY, run_cli, train_argv

    cfg = load_config("smoke", "swa128", 0, list(TINY))
    need = memory.training_bytes(cfg, 501)
    with_more = load_config("smoke", "swa128", 0, [*TINY, "train.micro_batch_size=8"])
    assert memory.training_bytes(with_more, 501) > need > 12 * 4 * 12 * 64 * 64  # at least 12 B per layer weight
    monkeypatch.setattr(memory, "device_bytes", lambda cfg: (need - 1, "a test device"))
    run = tmp_path / "run"
    assert main(train_argv(tiny_data, run, "swa128", 0, "train.steps=3")) == 2
    err = capsys.readouterr().err
    assert "config key 'train.micro_batch_size': got 4" in err and "a test device has" in err, err
    assert "Traceback" not in err and not run.exists()
    monkeypatch.undo()
    assert run_cli(train_argv(tiny_data, run, "swa128", 0, "train.steps=3"), tmp_path / "log") == 0


# --- modes: result files are readable as the umask allows -----------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_written_files_follow_the_umask(tmp_path, mask):
    from hybridlab.io import replaced_folder, write_json

    old = os.umask(mask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with replaced_folder(tmp_path / "folder") as new:
            (new / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~mask


def test_a_trained_runs_files_are_group_readable(trained_run):
    mask = os.umask(0)
    os.umask(mask)
    expected = 0o666 & ~mask
    for path in [trained_run / "provenance.json", trained_run / "last.ckpt", trained_run / "metrics.csv",
                 *(trained_run / "ckpt").glob("*.pt")]:
        assert path.stat().st_mode & 0o777 == expected, path


# --- a rebuild replaces the old folder only when complete -----------------------------------------------------

def test_interrupted_rebuild_keeps_the_previous_folder(tmp_path, monkeypatch):
    from hybridlab.figures import build
    from hybridlab.io import write_json, write_table

    paper = tmp_path / "paper" / "unit"
    (paper / "figures").mkdir(parents=True)
    (paper / "report.md").write_text("the previous report\n")
    (paper / "figures" / "fig2_scaling.png").write_bytes(b"old png")
    before = {str(p.relative_to(paper)): p.read_bytes() for p in paper.rglob("*") if p.is_file()}
    tables = tmp_path / "tables"
    import pandas as pd

    write_table(tables / "eval.csv", pd.DataFrame(columns=["variant", "seed", "step", "tokens", "metric", "length",
                                                           "value"]))
    write_json(tables / "info.json", {"context": 128, "variants": ["full"], "seeds": [0]})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what SIGINT does mid-build (SIGTERM kills the process: nothing runs after it)

    monkeypatch.setattr(build, "render_report", killed)  # the very last step of a build
    with pytest.raises(KeyboardInterrupt):
        build.build_all("unit", tables, paper)
    assert {str(p.relative_to(paper)): p.read_bytes() for p in paper.rglob("*") if p.is_file()} == before
    assert [p.name for p in paper.parent.iterdir()] == ["unit"]  # nothing half-built left beside it


def test_a_rebuild_cut_between_its_two_renames_is_undone_by_the_next(tmp_path):
    from hybridlab.io import replaced_folder

    out = tmp_path / "paper"
    out.mkdir()
    (out / "report.md").write_text("old")
    (out / "snakemake_report.html").write_text("kept")
    os.rename(out, tmp_path / ".paper.old-123")  # killed after the first rename
    (tmp_path / ".paper.new-abc").mkdir()  # the new build it was about to put in place
    with pytest.raises(RuntimeError):
        with replaced_folder(out) as new:
            assert (out / "report.md").read_text() == "old"  # the old folder is back before the new build starts
            raise RuntimeError
    with replaced_folder(out) as new:
        (new / "report.md").write_text("new")
    assert (out / "report.md").read_text() == "new" and (out / "snakemake_report.html").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper"]


# --- shell commands quote every path --------------------------------------------------------------------------

@pytest.mark.slow
def test_a_results_dir_with_shell_characters_runs_no_command(tmp_path):
    """Before: `results_dir='x;touch PWNED;y'` ran `touch PWNED` in the describe job's shell."""
    weird = "x;touch PWNED;y $(touch PWNED2) 'q"
    proc = snakemake(tmp_path, "--cores", "1", f"{weird}/smoke/tables/info.json", "--config",
                     f"results_dir={weird}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    assert json.loads((tmp_path / weird / "smoke" / "tables" / "info.json").read_text())["context"] == 256
