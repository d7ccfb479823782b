"""Which settings made a folder, and the checks that a command's config matches the folders it reads.

Run folders. A run's identity is the part of its config that decides what it trains: the seed, the model, the
variant, the data settings, the training schedule and the context (every key but FREE_KEYS, which change how
it runs, not what it computes). `provenance.json` records it, and every checkpoint the run writes carries it
(IDENTITY_KEY), so a file copied from another run is recognised. `train` on a folder that holds a run compares
the two before it writes anything; `evaluate`, `analyze` and the other per-run commands do the same with their
own config. `train --allow-change KEY` resumes an interrupted run with KEY changed on purpose (provenance.json
then lists the change with both values).

Data folders. The manifest records the settings the folder was prepared with (data.prepare.data_settings); a
command that reads the folder compares them with its own config: `train` the data settings and the context,
the evaluations also the eval-set settings.

A mismatch is refused with one line naming the setting and both values (a ConfigError). A run folder being
trained holds a lock (`.lock`, flock), so a second trainer is refused at once instead of crashing later.
No torch here: the workflow imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from hybridlab.config import ConfigError
from hybridlab.io import CorruptFileError, read_json

log = logging.getLogger("hybridlab")
IDENTITY_KEY = "hybridlab_identity"  # in last.ckpt, forks/*.ckpt and ckpt/tokens_*.pt: the writing run's identity
PROVENANCE = "provenance.json"
LOCK = ".lock"
# Sections of a run config that make its identity (`scale.*`: only the keys that shape the model or the data).
IDENTITY_SECTIONS = ("seed", "model", "variant", "data", "train")
IDENTITY_SCALE_KEYS = ("context", "ref_context", "min_window", "budget_k_by_size")
# Keys of those sections that change how a run is computed, not what: devices, compilation, backends (the same
# function), data-loader workers, logging, checkpoint cadence for resume, time slicing, the label of plots.
FREE_KEYS = frozenset({
    "train.stop_after", "train.num_workers", "train.log_every", "train.last_every", "train.compile",
    "train.group_seeds", "train.stack_seeds", "train.group_branches", "train.devices", "train.num_nodes",
    "train.micro_batch_size",
    "model.attn_backend", "model.mixer_backend", "variant.label",
})
# Differences named first, with the flag that sets them: the usual mistake is a wrong --variant, --seed or size.
FLAGS = {"seed": "--seed", "variant.name": "--variant", "model.name": "--size", "scale.context": "scale.context"}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b': leaf} for a nested mapping (a DictConfig is resolved first); lists stay values."""
    if isinstance(tree, DictConfig | ListConfig):
        tree = OmegaConf.to_container(tree, resolve=True)
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out |= flatten(value, name) if isinstance(value, dict) and value else {name: value}
    return out


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """The settings that decide what a run trains, flat (`train.lr`: 0.003, ...). With a token budget the step
    count is derived from it (train.run.resolve_budget), so the budget is what identifies the run, not the steps."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    flat = flatten({k: tree[k] for k in IDENTITY_SECTIONS if k in tree})
    flat |= flatten({k: tree["scale"][k] for k in IDENTITY_SCALE_KEYS if k in tree["scale"]}, "scale")
    by_size = (flat.get(f"scale.budget_k_by_size.{flat.get('model.name')}") is not None)
    if by_size or flat.get("train.budget_k") is not None:
        flat["train.steps"] = "from the token budget"
    return {k: v for k, v in flat.items() if k not in FREE_KEYS}


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stamp(identity: dict[str, Any]) -> str:
    """What a checkpoint carries under IDENTITY_KEY: the identity as JSON (a string: loads with weights_only)."""
    return json.dumps(identity, sort_keys=True, default=str)


_ABSENT = "(absent)"


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, our value, their value) for every key whose values differ; the flag-set keys first."""
    keys = sorted(set(ours) | set(theirs), key=lambda k: (k not in FLAGS, list(FLAGS).index(k) if k in FLAGS else 0,
                                                         k))
    return [(k, ours.get(k, _ABSENT), theirs.get(k, _ABSENT)) for k in keys
            if _normal(ours.get(k, _ABSENT)) != _normal(theirs.get(k, _ABSENT))]


def _normal(value: Any) -> Any:
    """Compare 2 and 2.0 alike, and tuples as lists (JSON round trips)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    return value


def _mismatch(key: str, ours: Any, theirs: Any, what: str, hint: str) -> ConfigError:
    flag = FLAGS.get(key)
    name = f"{key} ({flag})" if flag and flag != key else key
    return ConfigError(name, ours, f"{theirs!r}, the value {what}; {hint}")


# --- run folders --------------------------------------------------------------------------------------------


def recorded_identity(run_dir: str | Path) -> tuple[dict[str, Any], dict] | None:
    """(identity, provenance) of the run in `run_dir`, None if it has no provenance.json. A provenance written
    before identities were recorded yields the identity of its resolved config."""
    path = Path(run_dir) / PROVENANCE
    if not path.exists():
        return None
    prov = read_json(path)
    if not isinstance(prov, dict) or not isinstance(prov.get("config", prov.get("identity")), dict):
        raise CorruptFileError(path, "not a run's provenance (no config)")
    ident = prov.get("identity")
    if ident is None:
        ident = run_identity(OmegaConf.create(prov["config"]))
    return ident, prov


def check_resume(run_dir: str | Path, identity: dict[str, Any], branch: dict | None = None,
                 allow: tuple[str, ...] = ()) -> list[dict]:
    """Before `train` writes to `run_dir`: the run there (if any) must have this identity and branch, except for
    the keys in `allow` when it is unfinished. Returns the changes allowed now and before ({key, was, now})."""
    run_dir = Path(run_dir)
    for key in allow:
        if key not in identity:
            near = _closest(key, identity)
            raise ConfigError("--allow-change", key, "a setting of the run's identity"
                              + (f" (did you mean '{near}'?)" if near else ""))
    found = recorded_identity(run_dir)
    if found is None:
        return []
    theirs, prov = found
    what = f"run folder {run_dir} was trained with"
    for key, ours, old in differences(identity, theirs):
        if key in allow and not (run_dir / "train_done.json").exists():
            continue
        hint = ("a new run folder for new settings; to resume an interrupted run with this setting changed on "
                f"purpose: train --allow-change {key}")
        if key in allow:
            hint = "--allow-change resumes an interrupted run only; this one has finished"
        raise _mismatch(key, ours, old, what, hint)
    theirs_branch = prov.get("branch")
    if (branch or {}).get("budget_k") != (theirs_branch or {}).get("budget_k"):
        raise ConfigError("--budget", (branch or {}).get("budget_k"),
                          f"{(theirs_branch or {}).get('budget_k')!r}, the budget of the branch in {run_dir}")
    changes = list(prov.get("changes", []))
    changes += [{"key": k, "was": old, "now": ours} for k, ours, old in differences(identity, theirs)]
    return changes


def check_stamp(path: str | Path, blob: dict, identity: dict[str, Any], allow: tuple[str, ...] = ()) -> None:
    """A checkpoint must have been written by the run it is used for (its IDENTITY_KEY); one written before
    checkpoints carried identities is accepted with a warning."""
    raw = blob.get(IDENTITY_KEY)
    if raw is None:
        log.warning("%s carries no run identity (written by an older hybridlab); not checked", path)
        return
    try:
        theirs = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        raise CorruptFileError(path, f"unreadable {IDENTITY_KEY}") from None
    for key, ours, old in differences(identity, theirs):
        if key not in allow:
            raise CorruptFileError(path, f"written by another run: its {key} is {old!r}, this run's {ours!r}")


def check_run(run_dir: str | Path, cfg: DictConfig) -> None:
    """Before a command reads a training run: the run must have been trained with this config's identity (a
    folder of Hugging Face models has no provenance and is taken as it is)."""
    run_dir = Path(run_dir)
    trained = (run_dir / "ckpt").is_dir() or (run_dir / "train_done.json").exists()
    if not trained and ((run_dir / "config.json").is_file() or any(run_dir.glob("*/config.json"))):
        return  # Hugging Face models (evals/hf_model.py)
    found = recorded_identity(run_dir)
    if found is None:
        raise CorruptFileError(run_dir / PROVENANCE, "missing: not a run folder written by `hybridlab train` "
                               "(the settings that trained it cannot be checked)")
    theirs, _ = found
    for key, ours, old in differences(run_identity(cfg), theirs):
        raise _mismatch(key, ours, old, f"run folder {run_dir} was trained with",
                        "give this command the settings of the run (its provenance.json)")


def train_provenance(base: dict, identity: dict[str, Any], branch: dict | None, changes: list[dict]) -> dict:
    """provenance.json of a run: `base` (resolved config, versions, host) plus its identity, its branch and the
    changes made on purpose (--allow-change) while resuming."""
    out = {**base, "identity": identity, "identity_fingerprint": fingerprint(identity)}
    if branch:
        out["branch"] = branch
    if changes:
        out["changes"] = changes
    return out


def _rank_zero() -> bool:
    """Whether this process is rank 0 of a distributed run (torchrun, SLURM tasks, Lightning's launcher), or
    not distributed at all."""
    return all(int(v) == 0 for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
               if (v := os.environ.get(var, "")).isdigit())


@contextlib.contextmanager
def folder_lock(folder: str | Path, flag: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on `folder` (created) while its writer runs; refuse at once if another process
    holds it. Only rank 0 of a distributed run takes it (the other ranks write nothing of their own)."""
    import fcntl

    if not _rank_zero():
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ConfigError(flag, str(folder), f"a folder no other process is writing (its lock {LOCK} is held "
                              f"by {holder}; wait for it to finish)") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {platform.node()}\n")
        f.flush()
        yield


# --- per-run tables ---------------------------------------------------------------------------------------
# A per-run table (eval.csv, heads.csv, ...) has a stamp beside it, `<table>.json`: the fingerprints of the run's
# identity, of the data folder and of the evaluation settings that made it. `aggregate` refuses tables of one
# kind made with different data or evaluation settings, or stamped for another run than their folder's.


def table_stamp(cfg: DictConfig, manifest: dict) -> dict:
    evaluation = {k: v for k, v in flatten(cfg.eval, "eval").items() if "batch_size" not in k}  # speed only
    return {"run": fingerprint(run_identity(cfg)), "data": manifest.get("fingerprint"),
            "eval": fingerprint(evaluation), "variant": str(cfg.variant.name), "seed": int(cfg.seed)}


def check_evaluation(cfg: DictConfig, data_dir: str | Path, run_dir: str | Path) -> dict:
    """Before a command evaluates or analyses a run: the data folder and the run must match `cfg` (check_data,
    check_run); returns the stamp its tables will carry (table_stamp)."""
    manifest = check_data(data_dir, cfg, "eval")
    check_run(run_dir, cfg)
    return table_stamp(cfg, manifest)


def write_stamp(table: str | Path, stamp_: dict) -> None:
    from hybridlab.io import write_json

    write_json(f"{table}.json", stamp_)


def check_tables(paths: list[str], frames: list) -> None:
    """Before `aggregate` concatenates per-run tables: a table in a run folder (runs/<size>/<variant>/seed<N>/)
    holds that run's rows only (a variant file whose `name:` is not its file name labels rows otherwise), its
    stamp (if any) names that run and the data and evaluation settings of the others, and no row key (every
    column but the measured ones, analysis/schemas.MEASURED) occurs twice."""
    import pandas as pd

    from hybridlab.analysis.schemas import MEASURED

    first: dict[str, tuple[str, Any]] = {}
    for path in paths:
        stamp_path = Path(f"{path}.json")
        if not stamp_path.exists():
            continue  # a table written before tables were stamped, or by hand
        made_by = read_json(stamp_path)
        run = Path(path).parent
        found = recorded_identity(run) if (run / PROVENANCE).exists() else None
        if found is not None and made_by.get("run") != fingerprint(found[0]):
            raise CorruptFileError(path, f"was made from another run than the one in {run} (its stamp "
                                   f"{stamp_path.name} says run {made_by.get('run')}, the folder's run is "
                                   f"{fingerprint(found[0])})")
        for part, what in (("data", "data folder"), ("eval", "evaluation settings")):
            other, value = first.setdefault(part, (path, made_by.get(part)))
            if value != made_by.get(part):
                raise CorruptFileError(path, f"was made with other {what} ({made_by.get(part)}) than {other} "
                                       f"({value}); tables of one kind must compare like with like")
    for path, df in zip(paths, frames, strict=True):
        run = Path(path).parent
        run = run.parent if run.name.startswith("budget") else run
        if not run.name.removeprefix("seed").isdigit() or df.empty:
            continue
        expected = {"variant": run.parent.name, "seed": int(run.name.removeprefix("seed"))}
        for col, want in expected.items():
            found = sorted({str(v) for v in df[col]}) if col in df else [str(want)]
            if found != [str(want)]:
                raise CorruptFileError(path, f"holds rows of {col} {', '.join(found)}, but lies in the folder of "
                                       f"{col} {want} (a table of another run, or a variant file whose name: "
                                       "differs from its file name)")
    both = pd.concat([df.assign(_source=i) for i, df in enumerate(frames)], ignore_index=True)
    keys = [c for c in both.columns if c not in MEASURED and c != "_source"]
    dup = both.duplicated(keys, keep=False)
    if dup.any():
        rows = both[dup]
        sources = sorted(set(rows["_source"]))
        first, second = sources[0], sources[min(1, len(sources) - 1)]
        where = ", ".join(f"{k} {rows[k].iloc[0]}" for k in ("size", "variant", "seed") if k in rows)
        what = f"repeats rows of {paths[first]}" if first != second else "holds the same row twice"
        raise CorruptFileError(paths[second], f"{what} ({where}): each run's table may be aggregated once")


# --- data folders -------------------------------------------------------------------------------------------


def check_data(data_dir: str | Path, cfg: DictConfig, purpose: str) -> dict:
    """Before a command reads a data folder: it must have been prepared with this config's settings (`train`:
    the data settings and the context; `eval`: also the eval sets'). Returns the manifest."""
    from hybridlab.data.prepare import data_settings
    from hybridlab.data.shards import MANIFEST, read_manifest

    manifest = read_manifest(data_dir)
    recorded = manifest.get("settings")
    if not isinstance(recorded, dict):
        raise CorruptFileError(Path(data_dir) / MANIFEST, "records no settings (prepared by an older hybridlab); "
                               "re-run `hybridlab prepare-data` on it")
    ours = data_settings(cfg)
    if purpose == "train":
        ours = {k: v for k, v in ours.items() if not k.startswith("eval.")}
        recorded = {k: v for k, v in recorded.items() if not k.startswith("eval.")}
    for key, mine, theirs in differences(ours, recorded):
        raise _mismatch(key, mine, theirs, f"data folder {data_dir} was prepared with",
                        "prepare a data folder for these settings (`hybridlab prepare-data` with them; in the "
                        "workflow: --forcerun prepare_data)")
    return manifest


def check_workflow_data(data_dir: str | Path, scale: str, overrides: list[str]) -> None:
    """The workflow's check before any job: a data folder that exists must match the config's settings."""
    from hybridlab.config import load_config
    from hybridlab.data.shards import MANIFEST

    if (Path(data_dir) / MANIFEST).exists():
        check_data(data_dir, load_config(scale, overrides=overrides), "eval")


def _closest(key: str, known) -> str | None:
    import difflib

    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return near[0] if near else None
