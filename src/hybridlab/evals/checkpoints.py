"""Loading a run's trajectory checkpoints (weights only) into a model, in token order; each load is one progress
line in the job's log.

A run folder is either a training run (ckpt/tokens_*.pt, train_done.json) or Hugging Face models: a folder
holding a config.json (one checkpoint, e.g. a released model or `hybridlab export-hf` output) or a folder of
such folders (a trajectory, oldest first; evals/hf_model.py). Every evaluation and analysis reads runs through
here, so each of them takes either."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from hybridlab.digest import load_verified
from hybridlab.evals.hf_model import checkpoint_info, hf_model_dirs, load_hf
from hybridlab.identity import check_stamp, run_identity
from hybridlab.io import CorruptFileError, read_json
from hybridlab.models import HybridLM, build_model
from hybridlab.progress import Progress

log = logging.getLogger("hybridlab")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's trajectory checkpoints, oldest first: those its train_done.json lists (a file dropped into ckpt/
    is ignored, a listed one missing is an error); only of a run that finished, so an interrupted run never
    yields a table that looks complete. Hugging Face models: their folders."""
    hf = hf_model_dirs(run_dir)
    if hf is not None:
        return hf
    done = Path(run_dir) / "train_done.json"
    if not done.exists():
        raise FileNotFoundError(f"{done}: missing; the run has not finished training (re-run the train stage)")
    names = read_json(done).get("checkpoints")
    if not isinstance(names, list) or not all(isinstance(n, str) and Path(n).name == n for n in names or [None]):
        raise CorruptFileError(done, f"no list of checkpoint file names (checkpoints: {names!r})")
    folder = Path(run_dir) / "ckpt"
    paths = [folder / n for n in names]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise CorruptFileError(missing[0], f"listed in {done.name} but missing")
    unlisted = sorted({p.name for p in folder.glob("tokens_*.pt")} - set(names))
    if unlisted:
        log.warning("%s: ignoring %s, not written by this run (train_done.json lists its checkpoints)", folder,
                    ", ".join(unlisted))
    return paths


def load_checkpoint(path: str | Path, model: HybridLM, identity: dict | None = None) -> dict:
    """Load weights into `model` (weights_only: no code from the file runs; the tensors' checksum must match,
    and with `identity`, the run that wrote the file: hybridlab.identity); return step and tokens."""
    blob = load_verified(path, covered=("model",))
    if identity is not None:
        check_stamp(path, blob, identity)
    try:
        model.load_state_dict(blob["model"])
    except (RuntimeError, KeyError) as e:
        raise CorruptFileError(path, f"checkpoint does not fit the model ({type(e).__name__}: {e})") from None
    return {"step": int(blob["step"]), "tokens": int(blob["tokens"])}


def iter_checkpoints(cfg, run_dir: str | Path, vocab_size: int, device: torch.device):
    """Yield (model, info) for each trajectory checkpoint, oldest first, on `device` in eval mode."""
    hf = hf_model_dirs(run_dir)
    if hf is not None:
        progress = Progress("model", len(hf))
        for i, path in enumerate(hf):
            progress.start(path.name)
            yield load_hf(path, device, vocab_size), checkpoint_info(path, i)
        progress.done()
        return
    model = build_model(cfg, vocab_size)
    paths = list_checkpoints(run_dir)
    progress = Progress("checkpoint", len(paths))
    for path in paths:
        info = load_checkpoint(path, model, run_identity(cfg))
        progress.start(f"step {info['step']}, {info['tokens']:,} tokens")
        yield model.to(device).eval(), info
    progress.done()


def load_final(cfg, run_dir: str | Path, vocab_size: int, device: torch.device) -> tuple[HybridLM, dict]:
    """The run's last trajectory checkpoint (the end of training) on `device` in eval mode, and its info."""
    hf = hf_model_dirs(run_dir)
    if hf is not None:
        return load_hf(hf[-1], device, vocab_size), checkpoint_info(hf[-1], len(hf) - 1)
    model = build_model(cfg, vocab_size)
    info = load_checkpoint(list_checkpoints(run_dir)[-1], model, run_identity(cfg))
    Progress("final checkpoint", 1).start(f"step {info['step']}, {info['tokens']:,} tokens")
    return model.to(device).eval(), info


def selected_checkpoints(cfg, run_dir: str | Path, vocab_size: int, device: torch.device, every: bool):
    """Every trajectory checkpoint (oldest first) when `every`, else only the final one: (model, info) pairs."""
    if every:
        return iter_checkpoints(cfg, run_dir, vocab_size, device)
    return [load_final(cfg, run_dir, vocab_size, device)]


def pick_device(cfg) -> torch.device:
    if torch.cuda.is_available() and cfg.scale.accelerator != "cpu":
        return torch.device("cuda")
    return torch.device("cpu")
