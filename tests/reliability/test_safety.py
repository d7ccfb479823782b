"""No code from a file runs when the pipeline reads it: checkpoints load with torch.load(weights_only=True) (a
pickled object in one is refused and never executed), and the package source has no unsafe deserialisation, no
eval/exec and no Hydra instantiate (which would import and call whatever class a config names)."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import torch

from hybridlab.cli import main

from .helpers import REPO, TINY, run_cli, train_argv

SOURCES = [REPO / "src" / "hybridlab", REPO / "kernels" / "hybridlab_kernels", REPO / "workflow" / "scripts"]


class Payload:
    """Unpickling this creates `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_every_checkpoint_loads_weights_only(trained_run):
    paths = [*sorted((trained_run / "ckpt").glob("tokens_*.pt")), trained_run / "last.ckpt"]
    assert len(paths) >= 3
    for path in paths:
        torch.load(path, map_location="cpu", weights_only=True)


def evil_checkpoint(path: Path, marker: Path) -> None:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    blob["extra"] = Payload(marker)
    torch.save(blob, path)


def test_pickled_object_in_a_checkpoint_is_refused(tmp_path, trained_run):
    from hybridlab.config import load_config
    from hybridlab.evals.checkpoints import load_checkpoint
    from hybridlab.models import build_model

    ckpt, marker = tmp_path / "tokens_000000000001.pt", tmp_path / "pwned"
    shutil.copy(sorted((trained_run / "ckpt").glob("tokens_*.pt"))[0], ckpt)
    evil_checkpoint(ckpt, marker)
    model = build_model(load_config("smoke", "swa128", 0, [*TINY]), 501)
    with pytest.raises(Exception):  # noqa: B017 (any refusal will do; the clean message is tested below)
        load_checkpoint(ckpt, model)
    assert not marker.exists()


def test_pickled_object_in_a_checkpoint_is_named(tmp_path, tiny_data, trained_run, capsys):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    ckpt = sorted((run / "ckpt").glob("tokens_*.pt"))[0]
    evil_checkpoint(ckpt, tmp_path / "pwned")
    out = tmp_path / "eval.csv"
    rc = main(["evaluate", "--variant", "swa128", "--data", str(tiny_data), "--run", str(run), "--out", str(out),
               *TINY, "train.steps=8"])
    assert rc == 2 and str(ckpt) in capsys.readouterr().err and not out.exists()


def test_pickled_object_in_last_ckpt_is_refused(tmp_path, tiny_data, trained_run):
    run, marker = Path(shutil.copytree(trained_run, tmp_path / "run")), tmp_path / "pwned"
    for name in ("train_done.json", "metrics.csv"):  # an interrupted run: resumes from last.ckpt
        (run / name).unlink()
    evil_checkpoint(run / "last.ckpt", marker)
    rc = run_cli(train_argv(tiny_data, run, "swa128", 0, "train.steps=12"), tmp_path / "train.log")
    assert rc != 0 and not marker.exists() and not (run / "train_done.json").exists()


# --- the source -------------------------------------------------------------------------------------------------

def python_files() -> list[Path]:
    return sorted(p for root in SOURCES if root.exists() for p in root.rglob("*.py"))


def dotted(node: ast.AST) -> str:
    """'torch.load' for the call target torch.load, 'eval' for a bare name, '<expr>.eval' for x().eval."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return "<expr>"


def kwarg(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


UNSAFE_CALLS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads", "marshal.load",
                "marshal.loads", "shelve.open", "joblib.load", "pd.read_pickle", "pandas.read_pickle", "yaml.load",
                "yaml.unsafe_load", "yaml.full_load", "eval", "exec", "compile", "__import__",
                "hydra.utils.instantiate", "hydra.utils.call", "hydra.utils.get_class", "hydra.utils.get_method"}


def findings(path: Path) -> list[str]:
    out = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hydra.utils"):
            out += [f"{path}:{node.lineno}: from hydra.utils import {a.name}" for a in node.names
                    if a.name in ("instantiate", "call", "get_class", "get_method")]
        if not isinstance(node, ast.Call):
            continue
        name, where = dotted(node.func), f"{path}:{node.lineno}"
        if name in UNSAFE_CALLS:
            out.append(f"{where}: {name}(...)")
        if name.endswith("torch.load") and kwarg(node, "weights_only") is not True:
            out.append(f"{where}: torch.load without weights_only=True")
        if name.endswith(("np.load", "numpy.load")) and kwarg(node, "allow_pickle") not in (None, False):
            out.append(f"{where}: np.load with allow_pickle")
        if name.endswith(".fit") and kwarg(node, "ckpt_path") is not None and kwarg(node, "weights_only") is not True:
            out.append(f"{where}: Trainer.fit resumes without weights_only=True")
    return out


def test_source_has_no_unsafe_loading():
    files = python_files()
    assert len(files) > 20
    problems = [f for path in files for f in findings(path)]
    assert problems == [], ("unsafe deserialisation or dynamic code in the package (Hydra instantiate, if ever "
                            "needed, must go through a guard that only accepts `hybridlab.` targets):\n"
                            + "\n".join(problems))


def test_workflow_and_configs_run_no_code_from_files():
    smk = [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]
    pattern = re.compile(r"(?<![\w.])(eval|exec)\(|pickle\.load|yaml\.load\(|instantiate\(")
    assert [f"{p}: {m.group(0)}" for p in smk for m in pattern.finditer(p.read_text())] == []
    targets = [p for p in (REPO / "src" / "hybridlab" / "conf").rglob("*.yaml") if "_target_" in p.read_text()]
    assert targets == [], "a config names a class to instantiate"


def test_the_scanner_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle, torch, numpy as np\nfrom hydra.utils import instantiate\n"
                   "pickle.load(open('x', 'rb'))\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
                   "np.load('x', allow_pickle=True)\neval(open('x').read())\ntrainer.fit(m, ckpt_path='x')\n"
                   "model.eval()\nm.to(0).eval()\ntorch.load('x', weights_only=True)\nnp.load('x')\n")
    assert len(findings(bad)) == 7, findings(bad)
