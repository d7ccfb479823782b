"""Every folder is checked against the config of the command that uses it (hybridlab.identity): a run folder
against its provenance and its checkpoints' stamps, a data folder against the settings its manifest records, a
per-run table against its folder. Each refusal is one line naming the setting and both values, leaves the
folder as it was, and the correct command still succeeds afterwards. The cases are the red-team findings of
issue 22 (each reproduced on the code before these checks)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from hybridlab.cli import main

from .helpers import REPO, TINY, run_cli, train_argv

STEPS = "train.steps=8"  # the trained_run fixture's length


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under `folder` (hidden ones too): its mode and content digest."""
    return {str(p.relative_to(folder)): (p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(stderr: str, cmd: str, *fragments: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and "WARNING" not in line]
    errors = [line for line in lines if line.startswith(f"hybridlab {cmd}: error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def refused(argv: list[str], capsys, *fragments: str) -> str:
    assert main(argv) == 2
    return one_error(capsys.readouterr().err, argv[0], *fragments)


@pytest.fixture
def interrupted(tmp_path, trained_run) -> Path:
    """A copy of the trained run as an interrupted one looks: last.ckpt to resume from, no train_done.json."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    for name in ("train_done.json", "metrics.csv"):
        (run / name).unlink()
    return run


@pytest.fixture(scope="module")
def other_run(tmp_path_factory, tiny_data) -> Path:
    """Another run (seed 1) stopped after 3 of 8 steps: its last.ckpt and checkpoints are foreign to seed 0's."""
    run = tmp_path_factory.mktemp("other") / "run"
    assert run_cli(train_argv(tiny_data, run, "swa128", 1, STEPS, "train.stop_after=3"), run.parent / "log") == 0
    return run


# --- 1. resume ignoring changed settings ----------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "key", "ours", "theirs"), [
    (["train.lr=0.001"], "train.lr", "0.001", "0.003"),
    (["train.steps=12"], "train.steps", "12", "8"),
    (["--variant", "full"], "variant.name (--variant)", "'full'", "'swa128'"),
    (["--seed", "1"], "seed (--seed)", "1", "0"),
], ids=["lr", "steps", "variant", "seed"])
def test_resume_with_other_settings_is_refused(interrupted, tiny_data, capsys, extra, key, ours, theirs):
    before = snapshot(interrupted)
    argv = [*train_argv(tiny_data, interrupted, "swa128", 0, STEPS), *extra]
    refused(argv, capsys, f"config key '{key}': got {ours}", f"allowed: {theirs}", str(interrupted),
            "--allow-change")
    assert snapshot(interrupted) == before


def test_finished_run_with_other_settings_is_refused(tmp_path, trained_run, tiny_data, capsys):
    """Before: `train --seed 1` on seed 0's finished folder exited 0 ("already trained")."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    before = snapshot(run)
    refused(train_argv(tiny_data, run, "swa128", 1, STEPS), capsys, "config key 'seed (--seed)': got 1",
            "allowed: 0")
    refused([*train_argv(tiny_data, run, "swa128", 0, STEPS, "train.lr=0.001"), "--allow-change", "train.lr"],
            capsys, "train.lr", "has finished")
    assert snapshot(run) == before
    assert main(train_argv(tiny_data, run, "swa128", 0, STEPS)) == 0  # the same config: done, nothing to do
    assert snapshot(run) == before


def test_deliberate_change_is_resumed_and_recorded(interrupted, tiny_data):
    argv = [*train_argv(tiny_data, interrupted, "swa128", 0, STEPS, "train.lr=0.001"), "--allow-change", "train.lr"]
    assert run_cli(argv, interrupted.parent / "log") == 0
    prov = json.loads((interrupted / "provenance.json").read_text())
    assert prov["changes"] == [{"key": "train.lr", "was": 0.003, "now": 0.001}]
    assert prov["identity"]["train.lr"] == 0.001 and (interrupted / "train_done.json").exists()


def test_unknown_allow_change_key_is_refused(interrupted, tiny_data, capsys):
    before = snapshot(interrupted)
    refused([*train_argv(tiny_data, interrupted, "swa128", 0, STEPS), "--allow-change", "train.lrr"], capsys,
            "config key '--allow-change': got 'train.lrr'", "did you mean 'train.lr'?")
    assert snapshot(interrupted) == before


def test_last_ckpt_of_another_run_is_refused_then_the_right_one_resumes(interrupted, other_run, tiny_data, capsys):
    own = (interrupted / "last.ckpt").read_bytes()
    shutil.copyfile(other_run / "last.ckpt", interrupted / "last.ckpt")
    before = snapshot(interrupted)
    refused(train_argv(tiny_data, interrupted, "swa128", 0, STEPS), capsys, str(interrupted / "last.ckpt"),
            "written by another run: its seed is 1, this run's 0")
    assert snapshot(interrupted) == before
    (interrupted / "last.ckpt").write_bytes(own)
    assert run_cli(train_argv(tiny_data, interrupted, "swa128", 0, STEPS), interrupted.parent / "log") == 0
    assert (interrupted / "train_done.json").exists()


# --- 2. the data folder's settings ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    """A data folder prepared with another corpus seed."""
    out = tmp_path_factory.mktemp("other_data") / "data"
    assert main(["prepare-data", "--out", str(out), *TINY, "data.corpus_seed=7"]) == 0
    return out


def test_training_on_data_of_other_settings_is_refused(tmp_path, other_data, tiny_data, capsys):
    run = tmp_path / "run"
    refused(train_argv(other_data, run, "swa128", 0, STEPS), capsys,
            "config key 'data.corpus_seed': got 1234", "allowed: 7", str(other_data), "prepare-data")
    assert not run.exists()  # nothing written, not even the folder
    assert main(train_argv(other_data, run, "swa128", 0, STEPS, "data.corpus_seed=7", "train.stop_after=1")) == 0


def test_evaluating_with_data_of_other_eval_settings_is_refused(trained_run, tiny_data, capsys, tmp_path):
    out = tmp_path / "eval.csv"
    refused(["evaluate", "--variant", "swa128", "--data", str(tiny_data), "--run", str(trained_run), "--out",
             str(out), *TINY, STEPS, "eval.niah_samples=8"], capsys, "config key 'eval.niah_samples': got 8",
            "allowed: 4")
    assert not out.exists()


def test_data_folder_without_recorded_settings_is_refused(tmp_path, tiny_data, capsys):
    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["settings"]  # as an older hybridlab wrote it
    (data / "manifest.json").write_text(json.dumps(manifest))
    refused(train_argv(data, tmp_path / "run", "swa128", 0, STEPS), capsys, "records no settings", "prepare-data")
    assert not (tmp_path / "run").exists()


# --- 3. evaluations read the run's provenance -----------------------------------------------------------------

RUN_COMMANDS = ["evaluate", "receptive", "analyze", "probe", "gradinf", "lm-eval", "export-hf"]


@pytest.mark.parametrize("cmd", RUN_COMMANDS)
@pytest.mark.parametrize(("flags", "override", "key", "ours", "theirs"), [
    (["--variant", "full"], STEPS, "variant.name (--variant)", "'full'", "'swa128'"),
    (["--variant", "swa128", "--seed", "5"], STEPS, "seed (--seed)", "5", "0"),
    (["--variant", "swa128"], "train.lr=0.001", "train.lr", "0.001", "0.003"),
], ids=["variant", "seed", "lr"])
def test_evaluation_of_a_run_with_other_settings_is_refused(cmd, flags, override, key, ours, theirs, trained_run,
                                                            tiny_data, tmp_path, capsys):
    before, out = snapshot(trained_run), tmp_path / "out"
    refused([cmd, *flags, "--data", str(tiny_data), "--run", str(trained_run), "--out", str(out), *TINY, STEPS,
             override], capsys, f"config key '{key}': got {ours}", f"allowed: {theirs}", "was trained with")
    assert not out.exists() and snapshot(trained_run) == before


def test_evaluation_with_the_runs_settings_succeeds(trained_run, tiny_data, tmp_path):
    out = tmp_path / "eval.csv"
    assert main(["evaluate", "--variant", "swa128", "--data", str(tiny_data), "--run", str(trained_run), "--out",
                 str(out), *TINY, STEPS]) == 0
    df = pd.read_csv(out)
    assert set(df["variant"]) == {"swa128"} and set(df["seed"]) == {0}
    made_by = json.loads(Path(f"{out}.json").read_text())  # the table's stamp: what made it
    prov = json.loads((trained_run / "provenance.json").read_text())
    data = json.loads((tiny_data / "manifest.json").read_text())
    assert made_by["run"] == prov["identity_fingerprint"] and made_by["data"] == data["fingerprint"]


def test_aggregate_refuses_tables_made_with_other_data_or_another_run(tmp_path, trained_run, capsys):
    from hybridlab.identity import write_stamp

    runs = tmp_path / "runs" / "tiny"
    a, b = _eval_table(runs / "swa128" / "seed0", "swa128"), _eval_table(runs / "full" / "seed0", "full")
    write_stamp(a, {"run": "r1", "data": "d1", "eval": "e1"})
    write_stamp(b, {"run": "r2", "data": "d2", "eval": "e1"})
    out = tmp_path / "eval.csv"
    refused(["aggregate", "--kind", "eval", "--out", str(out), str(a), str(b)], capsys, str(b),
            "other data folder (d2) than")
    shutil.copyfile(trained_run / "provenance.json", a.parent / "provenance.json")  # a run folder: stamp r1 is not it
    write_stamp(b, {"run": "r2", "data": "d1", "eval": "e1"})
    refused(["aggregate", "--kind", "eval", "--out", str(out), str(a), str(b)], capsys, str(a),
            "made from another run")
    assert not out.exists()


# --- 4. a variant's name, and aggregated tables ---------------------------------------------------------------

def test_variant_file_whose_name_differs_from_its_file_name_is_refused(tmp_path, monkeypatch):
    import hybridlab.config as config
    import hybridlab.settings as settings

    conf = Path(shutil.copytree(config.CONF_DIR, tmp_path / "conf"))
    (conf / "variant" / "swa128b.yaml").write_text((conf / "variant" / "swa128.yaml").read_text())  # name: swa128
    monkeypatch.setattr(config, "CONF_DIR", conf)
    monkeypatch.setattr(settings, "CONF_DIR", conf)  # the option names (conf/<group>/*.yaml)
    with pytest.raises(config.ConfigError, match=r"config key 'variant.name': got 'swa128'; allowed: 'swa128b'"):
        config.load_config("smoke", "swa128b")
    assert config.load_config("smoke", "swa128").variant.name == "swa128"


def _eval_table(folder: Path, variant: str, seed: int = 0) -> Path:
    rows = [{"variant": variant, "seed": seed, "step": 8, "tokens": 8192, "metric": "val_loss", "length": 128,
             "value": 5.0}]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "eval.csv", index=False)
    return folder / "eval.csv"


def test_aggregate_refuses_mislabelled_and_repeated_rows(tmp_path, capsys):
    runs = tmp_path / "runs" / "tiny"
    good = _eval_table(runs / "swa128" / "seed0", "swa128")
    mislabelled = _eval_table(runs / "full" / "seed0", "swa128")  # a variant file `full` with `name: swa128`
    out = tmp_path / "eval.csv"
    refused(["aggregate", "--kind", "eval", "--out", str(out), str(good), str(mislabelled)], capsys,
            str(mislabelled), "holds rows of variant swa128, but lies in the folder of variant full")
    refused(["aggregate", "--kind", "eval", "--out", str(out), str(good), str(good)], capsys, str(good),
            "repeats rows of")
    copied = runs / "swa128" / "seed1" / "eval.csv"
    copied.parent.mkdir(parents=True)
    shutil.copyfile(good, copied)  # seed 0's table under seed 1's folder
    refused(["aggregate", "--kind", "eval", "--out", str(out), str(good), str(copied)], capsys, "seed")
    assert not out.exists()
    _eval_table(runs / "full" / "seed0", "full")
    assert main(["aggregate", "--kind", "eval", "--out", str(out), str(good), str(mislabelled)]) == 0
    assert sorted(pd.read_csv(out)["variant"]) == ["full", "swa128"]


# --- 5. a tampered manifest -----------------------------------------------------------------------------------

def test_tampered_manifest_never_removes_or_reads_files_outside_the_folder(tmp_path, tiny_data, trained_run,
                                                                          capsys):
    from hybridlab.config import load_config
    from hybridlab.data.prepare import prepare

    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    victims = [tmp_path / "victim.txt", tmp_path / "abs_victim.txt"]
    for v in victims:
        v.write_text("keep me")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["niah"]["x"] = {"tokens": {"file": "../victim.txt", "sha256": "0"},
                             "answer": {"file": str(victims[1]), "sha256": "0"}}
    manifest["splits"]["val"][0]["tokens"]["file"] = "../victim.txt"
    (data / "manifest.json").write_text(json.dumps(manifest))
    refused(["evaluate", "--variant", "swa128", "--data", str(data), "--run", str(trained_run), "--out",
             str(tmp_path / "e.csv"), *TINY, STEPS], capsys, "'../victim.txt', a path outside the data folder")
    manifest["fingerprint"] = "0" * 16  # out of date: prepare-data rebuilds, removing what the old one listed
    (data / "manifest.json").write_text(json.dumps(manifest))
    prepare(load_config("smoke", "full", 0, list(TINY)), data)
    assert all(v.read_text() == "keep me" for v in victims)
    assert json.loads((data / "manifest.json").read_text())["fingerprint"] != "0" * 16


# --- 6. overrides of what a flag sets -------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "key", "got", "flag_value"), [
    ("variant=swa128", "variant", "'swa128'", "'full', the value of --variant"),
    ("seed=3", "seed", "3", "0, the value of --seed"), ("+seed=3", "seed", "3", "0, the value of --seed"),
    ("++seed=3", "seed", "3", "0, the value of --seed"), ("seed='1'", "seed", "1", "0, the value of --seed"),
    ("~seed", "seed", "'~seed'", "0, the value of --seed"),
    ("scale=mini", "scale", "'mini'", "'smoke', the value of --scale"),
    ("model=mini", "model", "'mini'", "'tiny', the value of --size"),
])
def test_override_contradicting_a_flag_is_refused_naming_both_values(override, key, got, flag_value, tmp_path,
                                                                      tiny_data, capsys):
    run = tmp_path / "run"
    argv = [*train_argv(tiny_data, run, "full", 0, STEPS, override), "--size", "tiny", "--scale", "smoke"]
    refused(argv, capsys, f"config key '{key}': got {got}", flag_value, override, "contradicts the flag")
    assert not run.exists()


def test_override_repeating_a_flag_changes_nothing_and_trains(tmp_path, tiny_data):
    from hybridlab.config import load_config

    cfg = load_config("smoke", "swa128", 2, ["variant=swa128", "seed=2", "scale=smoke"], "tiny")
    assert (cfg.variant.name, cfg.seed, cfg.scale.name, cfg.model.name) == ("swa128", 2, "smoke", "tiny")
    run = tmp_path / "run"
    assert run_cli([*train_argv(tiny_data, run, "full", 0, "train.steps=3", "variant=full", "seed=0")],
                   tmp_path / "log") == 0
    assert json.loads((run / "provenance.json").read_text())["identity"]["variant.name"] == "full"


def test_workflow_with_a_variant_override_is_refused_before_any_job(tmp_path):
    """The red-team DAG: every variant folder trained swa128. The config check refuses it up front."""
    import yaml

    from hybridlab.config import ConfigError, check_workflow_config

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    config = {**yaml.safe_load((REPO / "config" / "config.yaml").read_text()), "variants": ["full", "swa128"],
              "overrides": ["variant=swa128"]}
    with pytest.raises(ConfigError, match=r"got 'swa128'; allowed: 'full', the value of --variant"):
        check_workflow_config(config, schema)
    config["overrides"] = ["seed=0"]  # the first seed, repeated: harmless
    assert check_workflow_config(config, schema)["variants"] == ["full", "swa128"]


def test_describe_refuses_a_variant_override(tmp_path, capsys):
    refused(["describe", "--out", str(tmp_path / "info.json"), "variant=swa128"], capsys, "config key 'variant'",
            "'full', the value of --variant")
    assert not (tmp_path / "info.json").exists()


# --- 7. checkpoints the run did not write ---------------------------------------------------------------------

def test_foreign_checkpoint_in_ckpt_is_ignored(tmp_path, trained_run, other_run):
    from hybridlab.config import load_config
    from hybridlab.evals.checkpoints import list_checkpoints, load_final

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    listed = json.loads((run / "train_done.json").read_text())["checkpoints"]
    foreign = sorted((other_run / "ckpt").glob("tokens_*.pt"))[-1]
    shutil.copyfile(foreign, run / "ckpt" / "tokens_999999999999.pt")  # sorts last: was taken as the final one
    assert [p.name for p in list_checkpoints(run)] == listed
    import torch

    cfg = load_config("smoke", "swa128", 0, [*TINY, STEPS])
    _, info = load_final(cfg, run, 501, torch.device("cpu"))
    assert f"tokens_{info['tokens']:012d}.pt" == listed[-1]


def test_listed_checkpoint_replaced_by_another_runs_is_refused(tmp_path, trained_run, other_run, tiny_data, capsys):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    first = run / "ckpt" / json.loads((run / "train_done.json").read_text())["checkpoints"][0]
    shutil.copyfile(sorted((other_run / "ckpt").glob("tokens_*.pt"))[0], first)
    out = tmp_path / "eval.csv"
    refused(["evaluate", "--variant", "swa128", "--data", str(tiny_data), "--run", str(run), "--out", str(out),
             *TINY, STEPS], capsys, str(first), "written by another run: its seed is 1")
    assert not out.exists()


def test_listed_checkpoint_missing_is_named(tmp_path, trained_run):
    from hybridlab.evals.checkpoints import list_checkpoints
    from hybridlab.io import CorruptFileError

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    last = run / "ckpt" / json.loads((run / "train_done.json").read_text())["checkpoints"][-1]
    last.unlink()
    with pytest.raises(CorruptFileError, match="listed in train_done.json but missing"):
        list_checkpoints(run)


# --- a lock per run folder ------------------------------------------------------------------------------------

def test_second_trainer_on_a_locked_folder_is_refused(interrupted, tiny_data, capsys):
    import fcntl

    with open(interrupted / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.truncate(0)
        held.write("pid 4242 on elsewhere\n")
        held.flush()
        before = snapshot(interrupted)
        refused(train_argv(tiny_data, interrupted, "swa128", 0, STEPS), capsys, "config key '--out'",
                "held by pid 4242 on elsewhere")
        assert snapshot(interrupted) == before
    assert run_cli(train_argv(tiny_data, interrupted, "swa128", 0, STEPS), interrupted.parent / "log") == 0


def test_workflow_refuses_a_data_folder_of_other_settings_before_any_job(tmp_path, tiny_data):
    """With `rerun-triggers: mtime` a changed data override did not re-run prepare_data, so new runs trained on
    the old data. The DAG's config check compares the data folder with the config; --forcerun prepare_data is the
    deliberate rebuild."""
    from .helpers import snakemake

    data = tmp_path / "results" / "smoke" / "data"
    shutil.copytree(tiny_data, data)
    before = snapshot(data)
    overrides = "overrides=" + json.dumps([*TINY, "data.corpus_seed=99"])
    proc = snakemake(tmp_path, "-n", "--config", overrides)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("bad configuration: ")]
    assert len(lines) == 1 and "config key 'data.corpus_seed': got 99" in lines[0], proc.stdout + proc.stderr
    assert "allowed: 1234, the value data folder results/smoke/data was prepared with" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and snapshot(data) == before
    assert snakemake(tmp_path, "-n", "--forcerun", "prepare_data", "--config", overrides).returncode == 0
    same = "overrides=" + json.dumps(TINY)  # the folder's own settings: accepted
    assert snakemake(tmp_path, "-n", "--config", same).returncode == 0, "the correct DAG is refused"


def test_group_commands_check_every_folder_before_the_first_run(tmp_path, trained_run, interrupted, tiny_data,
                                                               capsys):
    """evaluate-group and train-group: a folder of another run among several is refused before any run is
    evaluated or trained (the first folder is left as it was)."""
    runs = [Path(shutil.copytree(trained_run, tmp_path / f"seed{i}")) for i in (0, 1)]  # both hold seed 0's run
    before = [snapshot(r) for r in runs]
    refused(["evaluate-group", *TINY, STEPS, "--variant", "swa128", "--seeds", "0", "1", "--data", str(tiny_data),
             "--runs", *map(str, runs)], capsys, "config key 'seed (--seed)': got 1", "allowed: 0",
            str(runs[1]))
    assert [snapshot(r) for r in runs] == before
    started = snapshot(interrupted)
    refused(["train-group", *TINY, STEPS, "--variant", "swa128", "--seeds", "0", "1", "--data", str(tiny_data),
             "--outs", str(interrupted), str(runs[1])], capsys, "config key 'seed (--seed)': got 1",
            str(runs[1]))
    assert snapshot(interrupted) == started and snapshot(runs[1]) == before[1]
