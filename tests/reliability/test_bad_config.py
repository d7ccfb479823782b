"""Bad input is rejected before any job starts, with one line naming the key, the bad value and what is allowed,
and no traceback: through the CLI (in-process `main` for the whole table, the real executable for a sample) and
through Snakemake (`snakemake -n --config ...`)."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from hybridlab.cli import main

from .helpers import ENV, hybridlab, snakemake

# (id, CLI arguments after the command, key, bad value). DATA and OUT are filled in by the test.
DESCRIBE = ["describe", "--out", "OUT"]
TRAIN = ["train", "--data", "DATA", "--out", "OUT"]
CASES = [
    ("unknown variant", [*TRAIN, "--variant", "nope"], "variant", "nope"),
    ("unknown variant override", [*DESCRIBE, "variant=nope"], "variant", "nope"),
    ("unknown scale", [*DESCRIBE, "--scale", "huge"], "scale", "huge"),
    ("unknown model size", [*DESCRIBE, "model=huge"], "model", "huge"),
    ("negative window", [*TRAIN, "--variant", "swa128", "variant.window=-3"], "variant.window", -3),
    ("zero window", [*TRAIN, "--variant", "swa128", "variant.window=0"], "variant.window", 0),
    ("window beyond the context", [*TRAIN, "--variant", "swa128", "variant.window=20000"], "variant.window", 20000),
    ("ratio does not divide the layers", [*TRAIN, "--variant", "swa128_ratio13", "model.n_layers=6"],
     "variant.ratio", "1:3"),
    ("malformed ratio", [*TRAIN, "--variant", "swa128", "variant.ratio=1-1"], "variant.ratio", "1-1"),
    ("zero steps", [*DESCRIBE, "train.steps=0"], "train.steps", 0),
    ("zero token budget", [*DESCRIBE, "train.budget_k=0"], "train.budget_k", 0),
    ("budget branch inside the warmup", [*DESCRIBE, "train.schedule=wsd", "train.budget_k=0.4",
                                         "train.budgets_k=[0.2,0.4]"], "train.budgets_k", [0.2, 0.4]),
    ("unknown attention backend", [*DESCRIBE, "model.attn_backend=cudnn"], "model.attn_backend", "cudnn"),
    ("unknown mixer backend", [*DESCRIBE, "model.mixer_backend=triton"], "model.mixer_backend", "triton"),
    ("missing data files", [*DESCRIBE, "data=files", "data.corpora.main.files=[/nonexistent/*.jsonl]"],
     "data.corpora.main.files", ["/nonexistent/*.jsonl"]),
    ("missing data folder", ["train", "--variant", "full", "--data", "/nonexistent/data", "--out", "OUT"],
     "--data", "/nonexistent/data"),
    ("data path never set", [*DESCRIBE, "data=hf"], "data.corpora.main.hf.name", "???"),
    ("non-numeric model size", [*DESCRIBE, "model.d_model=abc"], "model.d_model", "abc"),
    ("non-numeric learning rate", [*DESCRIBE, "train.lr=abc"], "train.lr", "abc"),
    ("negative learning rate", [*DESCRIBE, "train.lr=-0.1"], "train.lr", -0.1),
    ("non-integer seed list", [*DESCRIBE, "scale.seeds=[a]"], "scale.seeds", ["a"]),
    ("empty seed list", [*DESCRIBE, "scale.seeds=[]"], "scale.seeds", []),
    ("negative seed", [*TRAIN, "--variant", "full", "--seed", "-1"], "seed", -1),
    ("micro batch does not divide batch", [*DESCRIBE, "train.micro_batch_size=5"], "train.micro_batch_size", 5),
    ("unknown optimizer", [*DESCRIBE, "train.optimizer=sgd"], "train.optimizer", "sgd"),
    ("unknown schedule", [*DESCRIBE, "train.schedule=step"], "train.schedule", "step"),
    ("unknown precision", [*DESCRIBE, "train.precision=fp8"], "train.precision", "fp8"),
    ("first_full outside the group", [*TRAIN, "--variant", "swa128", "variant.first_full=5"], "variant.first_full", 5),
    ("head-wise with a recurrent mixer", [*TRAIN, "--variant", "mamba2", "variant.headwise=true"],
     "variant.headwise", True),
    ("head-wise group does not divide n_heads", [*TRAIN, "--variant", "swa128_headwise", "variant.ratio=1:2"],
     "variant.ratio", "1:2"),
    ("odd head_dim (RoPE)", [*DESCRIBE, "model.head_dim=15"], "model.head_dim", 15),
    ("unknown distance law", [*DESCRIBE, "data.distance_dist=gauss"], "data.distance_dist", "gauss"),
    ("branch_probs do not match branching", [*DESCRIBE, "data.branch_probs=[0.5,0.5]"], "data.branch_probs",
     [0.5, 0.5]),
    ("unknown data source", [*DESCRIBE, "data.source=c4"], "data.source", "c4"),
    ("zero eval length", [*DESCRIBE, "eval.niah_lengths=[0]"], "eval.niah_lengths", [0]),
    ("unknown variant in the scale", [*DESCRIBE, "scale.variants=[full,nope]"], "scale.variants", ["full", "nope"]),
    ("text for a boolean", [*DESCRIBE, "variant.full_rope=yes"], "variant.full_rope", "yes"),
    ("misspelled key", [*DESCRIBE, "train.stepz=3"], "train.stepz", "3"),
    ("override without a value", [*DESCRIBE, "train.steps"], "overrides", "train.steps"),
    ("interpolation that does not resolve", [*DESCRIBE, "train.steps=${oops}"], "train.steps", "${oops}"),
    # issue 22: settings that used to pass and crash a job later, keys that were silently ignored
    ("misspelled key added with +", [*DESCRIBE, "+train.warmup_step=5"], "train.warmup_step", 5),
    ("unknown variant key added with +", [*TRAIN, "--variant", "swa128", "+variant.sink_tokens=4"],
     "variant.sink_tokens", 4),
    ("warmup not below the steps", [*DESCRIBE, "train.warmup_steps=120"], "train.warmup_steps", 120),
    ("wsd warmup and decay beyond the steps", [*DESCRIBE, "train.schedule=wsd", "train.warmup_steps=100"],
     "train.warmup_steps", 100),
    ("non-numeric checkpoint spacing", [*DESCRIBE, "train.ckpt_every=abc"], "train.ckpt_every", "abc"),
    ("zero gradient-influence samples", [*DESCRIBE, "eval.gradinf_samples=0"], "eval.gradinf_samples", 0),
    ("unknown RULER task", [*DESCRIBE, "eval.ruler_tasks=[niah_double]"], "eval.ruler_tasks", ["niah_double"]),
    ("receptive window of the whole context", [*DESCRIBE, "eval.receptive_windows=[1.0]"], "eval.receptive_windows",
     [1.0]),
    ("flash-attn on a CPU machine", [*DESCRIBE, "model.attn_backend=flash"], "model.attn_backend", "flash"),
    ("fla on a CPU machine", [*TRAIN, "--variant", "gdn", "model.mixer_backend=fla"], "model.mixer_backend", "fla"),
    ("variant override beside --variant", [*TRAIN, "--variant", "full", "variant=swa128"], "variant", "swa128"),
    ("seed override beside --seed", [*TRAIN, "--variant", "full", "seed=3"], "seed", 3),
    ("scale override beside --scale", [*DESCRIBE, "--scale", "smoke", "scale=mini"], "scale", "mini"),
    ("variant name other than its file's", [*TRAIN, "--variant", "swa128", "variant.name=full"], "variant.name",
     "full"),
]


def fill(args: list[str], tmp_path, data) -> list[str]:
    return [{"DATA": str(data), "OUT": str(tmp_path / "out")}.get(a, a) for a in args]


def assert_one_error_line(stderr: str, cmd: str, key: str, value) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1, stderr
    line = errors[0]
    assert line.startswith(f"hybridlab {cmd}: error: "), line
    assert (f"config key '{key}'" if not key.startswith("--") else f"{key}:") in line, line
    assert f"got {value!r}" in line and "allowed: " in line, line
    assert "Traceback" not in stderr


def test_table_is_big_enough():
    assert len(CASES) >= 20


@pytest.mark.parametrize(("args", "key", "value"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_rejects(args, key, value, tmp_path, tiny_data, capsys):
    argv = fill(args, tmp_path, tiny_data)
    assert main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, argv[0], key, value)
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.slow
def test_real_executable_prints_one_line(tmp_path, tiny_data):
    """A sample through the installed executable: torch/Lightning imports add nothing to stderr, exit code 2."""
    sample = [c for c in CASES if c[0] in ("unknown variant", "non-numeric learning rate", "missing data folder")]
    with ThreadPoolExecutor(len(sample)) as pool:
        procs = list(pool.map(lambda c: hybridlab(*fill(c[1], tmp_path, tiny_data)), sample))
    for (name, args, key, value), proc in zip(sample, procs, strict=True):
        assert proc.returncode == 2, (name, proc.stderr)
        assert_one_error_line(proc.stderr, args[0], key, value)


# Snakemake: (id, --config arguments, key, value as the message shows it). Run in parallel (each is a parse).
SMK_CASES = [
    ("unknown scale", ["scale=nope"], "scale", "nope"),
    ("variant override for every job", ['overrides=["variant=swa128"]'], "variant", "swa128"),
    ("model override beside the sizes", ['overrides=["model=mini"]'], "model", "mini"),
    ("unknown variant", ["variants=[full,nope]"], "variants", "nope"),
    ("override only a non-default variant rejects", ['overrides=["model.n_layers=3"]'], "variant.ratio", "1:1"),
    ("non-numeric override", ['overrides=["train.lr=abc"]'], "train.lr", "abc"),
]
SMK_SCHEMA_CASES = [
    ("unknown config key", ["bogus=1"], "bogus", 1),
    ("negative seed", ["seeds=[-1]"], "seeds", "-1"),
]


@pytest.fixture(scope="module")
def smk_results(tmp_path_factory):
    work = tmp_path_factory.mktemp("smk_config")
    cases = SMK_CASES + SMK_SCHEMA_CASES + [("good seeds from the command line", ["seeds=[0,1]"], None, None)]
    with ThreadPoolExecutor(3) as pool:
        procs = pool.map(lambda c: snakemake(work, "-n", "--cores", "1", "--config", *c[1]), cases)
        return {c[0]: p for c, p in zip(cases, procs, strict=True)}


def assert_no_traceback_of_ours(out: str) -> None:
    assert "Traceback" not in out and not re.search(r'File "[^"]*src/hybridlab/[^"]*", line', out), out


@pytest.mark.slow
@pytest.mark.parametrize(("name", "key", "value"), [(c[0], c[2], c[3]) for c in SMK_CASES],
                         ids=[c[0] for c in SMK_CASES])
def test_snakemake_rejects(smk_results, name, key, value):
    proc = smk_results[name]
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    lines = [line for line in out.splitlines() if "bad configuration" in line]
    assert len(lines) == 1, out
    assert f"config key '{key}': got {value!r}; allowed: " in lines[0], out
    assert "Job stats" not in out  # no job was planned
    assert_no_traceback_of_ours(out)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "key", "value"), [(c[0], c[2], c[3]) for c in SMK_SCHEMA_CASES],
                         ids=[c[0] for c in SMK_SCHEMA_CASES])
def test_snakemake_schema_rejects(smk_results, name, key, value):
    proc = smk_results[name]
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and key in out and str(value) in out, out
    assert "Job stats" not in out
    assert_no_traceback_of_ours(out)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "key", "value"), [(c[0], c[2], c[3]) for c in SMK_SCHEMA_CASES],
                         ids=[c[0] for c in SMK_SCHEMA_CASES])
def test_snakemake_schema_errors_are_one_line(smk_results, name, key, value):
    out = smk_results[name].stdout + smk_results[name].stderr
    assert f"bad configuration: config key '{key}': got {value!r}" in out and "schema" not in out, out


@pytest.mark.slow
def test_snakemake_accepts_seeds_from_the_command_line(smk_results):
    """`--config seeds=[0,1]` arrives as strings; the schema and common.smk accept and convert them."""
    proc = smk_results["good seeds from the command line"]
    assert proc.returncode == 0, proc.stderr
    assert "seed0" in proc.stdout + proc.stderr and "seed1" in proc.stdout + proc.stderr


def test_config_validation_imports_no_torch():
    code = "import sys; from hybridlab.config import load_config; load_config(); assert 'torch' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
