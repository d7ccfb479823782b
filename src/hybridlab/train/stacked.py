"""The seeds of one variant trained in one stacked step (train.stack_seeds): one card kept busy by small models.

A mini model's step leaves an H200 mostly idle (the host's Python and launches bound it), and several processes
time-slicing one card train slower together than one alone (issue 15). `train_stacked` trains G runs that differ
only in their seed as one module (`hybridlab.train.ensemble.stack_models`): one forward, one backward and one
optimizer step do the work of all G. Each run is still its own:
  - its own initialisation (its seed's) and data order (its own StepSampler): the stacked batch is the G runs'
    micro-batches one after another, model g applied to the g-th block;
  - its own loss (the mean over its tokens; the G losses are summed, so each model's gradient is its own), its
    own gradient clipping (train.grad_clip on that model's gradient norm alone) and its own AdamW update
    (element-wise, so the stacked update is the G updates; weight decay by the single model's parameter groups);
  - its own run folder, exactly as `train` writes it: provenance.json, trajectory checkpoints, metrics.csv
    (tokens/s and MFU are the run's share of the stacked step), sessions.jsonl, train_done.json and a `last.ckpt`
    that is that run's Lightning state, so either path (stacked or one run alone) resumes it.
Checked equal to separate runs on the CPU (tests/unit/test_stacked.py). Every variant stacks (the recurrent
mixers' convolutions, gated norms and per-head vectors have stacked forms), on one device, with AdamW; anything
else trains one run after another (`train_group`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Sampler

from hybridlab.data.shards import load_split, read_manifest
from hybridlab.digest import DIGEST_KEY, load_verified, tensor_digest
from hybridlab.identity import IDENTITY_KEY, PROVENANCE, check_stamp, folder_lock, run_identity, stamp, train_provenance
from hybridlab.io import atomic_path, write_json
from hybridlab.models import build_model
from hybridlab.train.ensemble import stack_models, stack_refusal, unstack_state
from hybridlab.train.lit import RESUME_COVERED, LitLM, NonFiniteLossError, StepSampler, TokenDataset, pl
from hybridlab.train.memory import check_memory
from hybridlab.train.muon import split_params
from hybridlab.train.preempt import StopOnSignal, Stopped, slurm_deadline

log = logging.getLogger("hybridlab")


def why_not_stacked(cfgs: list[DictConfig]) -> str | None:
    """None when these runs can train as one stacked step; else the reason, in words."""
    if len(cfgs) < 2:
        return "a single run"
    t = cfgs[0].train
    if int(t.devices) * int(t.num_nodes) != 1:
        return f"train.devices x train.num_nodes = {int(t.devices) * int(t.num_nodes)} (stacking runs on one device)"
    if t.optimizer != "adamw":
        return f"train.optimizer={t.optimizer} (stacking is checked for AdamW only)"
    if t.get("logger") not in (None, "none"):
        return f"train.logger={t.logger} (one logger per run folder is written by runs trained alone)"
    first = {k: v for k, v in run_identity(cfgs[0]).items() if k != "seed"}
    for cfg in cfgs[1:]:
        other = {k: v for k, v in run_identity(cfg).items() if k != "seed"}
        if other != first:
            diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            return f"the runs differ in more than their seed ({', '.join(diff[:3])})"
    with torch.device("meta"):
        return stack_refusal(build_model(cfgs[0], 64))


class StackedSampler(Sampler[list[int]]):
    """The G runs' own micro-batches, concatenated: block g of every stacked micro-batch is run g's."""

    def __init__(self, samplers: list[StepSampler]):
        self.samplers = samplers

    def __iter__(self):
        for parts in zip(*self.samplers, strict=True):
            yield [i for part in parts for i in part]

    def __len__(self) -> int:
        return len(self.samplers[0])


class StackedData(pl.LightningDataModule):
    def __init__(self, tokens: np.ndarray, cfgs: list[DictConfig]):
        super().__init__()
        self.tokens, self.cfgs = tokens, cfgs

    def train_dataloader(self) -> DataLoader:
        t, trainer = self.cfgs[0].train, self.trainer
        samplers = [StepSampler(len(self.tokens), t.batch_size, t.micro_batch_size, int(cfg.seed), t.steps,
                                lambda: trainer.global_step) for cfg in self.cfgs]
        return DataLoader(TokenDataset(self.tokens), batch_sampler=StackedSampler(samplers),
                          num_workers=t.num_workers, pin_memory=torch.cuda.is_available())


def stacked_param_groups(stacked: torch.nn.Module, template: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups of the stacked module, routed as the single model's (`adamw_groups` on `template`) and in
    its order, so optimizer-state indices match a single run's (a stacked [G, d] norm weight is no matrix)."""
    by_name = dict(stacked.named_parameters())
    routes = split_params(template.named_parameters())
    groups = [{"name": "decay", "params": [by_name[n] for n, _ in routes["hidden"]], "weight_decay": weight_decay},
              {"name": "no_decay", "params": [by_name[n] for n, _ in routes["other"]], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def clip_per_model(params, max_norm: float, g: int) -> torch.Tensor:
    """Scale each model's gradient (block g of every stacked parameter) to at most `max_norm` in total norm, as
    torch.nn.utils.clip_grad_norm_ does for one model (coefficient max_norm / (norm + 1e-6), at most 1). Returns the
    G norms before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    sq = torch.stack([gr.detach().float().reshape(g, -1).pow(2).sum(1) for gr in grads]).sum(0)
    norms = sq.sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for gr in grads:
        gr.mul_(coef.view(-1, *([1] * (gr.dim() - 1))).to(gr.dtype))
    return norms


class StackedLM(LitLM):
    """LitLM over the stacked module: the G runs' losses kept apart, clipped and logged per run."""

    def __init__(self, stacked, template, cfg, step_model, g: int):
        super().__init__(stacked, cfg, step_model)
        self.g, self._template = g, (template,)  # a tuple: not a submodule
        self._step_losses: tuple[int, list[float]] | None = None

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        logits = self._step_model[0](batch[:, :-1])
        per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(),
                                                      reduction="none")
        losses = per_token.view(self.g, -1).mean(1)  # each run's mean over its own tokens
        detached = losses.detach()
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=losses.device)
        bad = ~torch.isfinite(detached).all() & (self._first_bad < 0)
        self._first_bad = torch.where(bad, self.global_step, self._first_bad)
        self.micro_losses.append(detached)
        return losses.sum()  # the sum: each model's gradient is that of its own loss

    def step_losses(self) -> list[float]:
        """Each run's loss of the optimizer step just taken (the mean over its micro-batches), once per step."""
        step = self.trainer.global_step
        if self._step_losses is None or self._step_losses[0] != step:
            values = torch.stack(self.micro_losses).mean(0).tolist() if self.micro_losses else [float("nan")] * self.g
            self.micro_losses.clear()
            self._step_losses = (step, values)
        return self._step_losses[1]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        pass  # the stack's state is split into the runs' own checkpoints, each with its digest and identity

    def configure_optimizers(self):
        t = self.cfg.train
        from hybridlab.train.lit import lr_multiplier

        opt = torch.optim.AdamW(stacked_param_groups(self.model, self._template[0], float(t.weight_decay)),
                                lr=t.lr, betas=tuple(t.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, self.cfg))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val:
            clip_per_model(self.model.parameters(), float(gradient_clip_val), self.g)


class _Member:
    """What RunRecorder reads of its module, for run g of a stack: that run's weights and loss."""

    def __init__(self, lit: StackedLM, g: int):
        self.lit, self.g = lit, g
        self.micro_losses = _NoLosses()
        self.model = self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return unstack_state(self.lit.model, self.g)

    def check_finite(self) -> None:
        self.lit.check_finite()

    def step_loss(self) -> float:
        return self.lit.step_losses()[self.g]

    def log(self, *args, **kwargs) -> None:  # the progress bar's tokens/s: the first run's
        if self.g == 0:
            self.lit.log(*args, **kwargs)


class _NoLosses(list):
    def clear(self) -> None:  # the stack's micro-batch losses are cleared once per step by StackedRecorder
        pass


class StackedRecorder(pl.Callback):
    """Drives one RunRecorder per run of the stack (each writes its own folder) and clears the step's losses."""

    def __init__(self, recorders: list):
        self.recorders = recorders

    def state_dict(self) -> dict:
        return {"rows": [r.rows for r in self.recorders]}

    def load_state_dict(self, state: dict) -> None:
        for r, rows in zip(self.recorders, state["rows"], strict=True):
            r.rows = list(rows)

    def on_train_start(self, trainer, pl_module) -> None:
        for r in self.recorders:
            r.on_train_start(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stepped = trainer.global_step != self.recorders[0]._step_seen
        for g, r in enumerate(self.recorders):
            r.on_train_batch_end(trainer, _Member(pl_module, g), outputs, batch, batch_idx)
        if stepped:
            pl_module.micro_losses.clear()

    def on_train_end(self, trainer, pl_module) -> None:
        self.flush()

    def on_exception(self, trainer, pl_module, exception) -> None:
        for r in self.recorders:
            r.flush(raise_errors=False)

    def flush(self, raise_errors: bool = True) -> None:
        for r in self.recorders:
            r.flush(raise_errors)


# -- a stacked Lightning checkpoint <-> the runs' own ones ------------------------------------------------------

RECORDER_KEY = "RunRecorder"  # the state key a single run's RunRecorder has in its checkpoints


def split_checkpoint(blob: dict, g: int, n: int, stacked_keys: set[str], identity: str | None) -> dict:
    """Run g's own Lightning checkpoint from the stacked one: its block of every stacked weight and optimizer
    moment, the shared step, schedule and loops, its RunRecorder rows, its digest and identity."""
    out = {k: v for k, v in blob.items() if k not in ("state_dict", "optimizer_states", "callbacks", DIGEST_KEY,
                                                      IDENTITY_KEY)}
    out["state_dict"] = {k: (v[g].clone() if k in stacked_keys else v) for k, v in blob["state_dict"].items()}
    out["optimizer_states"] = [
        {"param_groups": opt["param_groups"],
         "state": {i: {k: (v[g].clone() if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n else v)
                       for k, v in s.items()} for i, s in opt["state"].items()}}
        for opt in blob["optimizer_states"]]
    callbacks = dict(blob.get("callbacks", {}))
    stacked_rows = callbacks.pop(StackedRecorder.__qualname__, None)
    if stacked_rows is not None:
        callbacks[RECORDER_KEY] = {"rows": stacked_rows["rows"][g]}
    out["callbacks"] = callbacks
    out[DIGEST_KEY] = tensor_digest({k: out.get(k) for k in RESUME_COVERED})
    if identity is not None:
        out[IDENTITY_KEY] = identity
    return out


def merge_checkpoints(blobs: list[dict], stacked_keys: set[str]) -> dict:
    """The stacked checkpoint of runs saved at one step (the inverse of `split_checkpoint`)."""
    steps = {int(b["global_step"]) for b in blobs}
    if len(steps) != 1:
        raise ValueError(f"merge_checkpoints: the runs are at different steps {sorted(steps)}")
    first = blobs[0]
    out = {k: v for k, v in first.items() if k not in ("state_dict", "optimizer_states", "callbacks", DIGEST_KEY,
                                                       IDENTITY_KEY)}
    out["state_dict"] = {k: (torch.stack([b["state_dict"][k] for b in blobs]) if k in stacked_keys else v)
                         for k, v in first["state_dict"].items()}
    out["optimizer_states"] = []
    for j, opt in enumerate(first["optimizer_states"]):
        state = {}
        for i, s in opt["state"].items():
            state[i] = {k: (torch.stack([b["optimizer_states"][j]["state"][i][k] for b in blobs])
                            if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in s.items()}
        out["optimizer_states"].append({"param_groups": opt["param_groups"], "state": state})
    callbacks = {k: v for k, v in first.get("callbacks", {}).items() if k != RECORDER_KEY}
    callbacks[StackedRecorder.__qualname__] = {"rows": [b["callbacks"][RECORDER_KEY]["rows"] for b in blobs]}
    out["callbacks"] = callbacks
    return out


class StackSaver:
    """Writes each run's own resume point from the stack's state, dumped once per step."""

    def __init__(self, run_dirs: list[Path], stacked_keys: set[str], identities: list[str]):
        self.run_dirs, self.stacked_keys, self.identities = run_dirs, stacked_keys, identities
        self._dumped: tuple[int, dict] | None = None

    def _blob(self, trainer) -> dict:
        if self._dumped is None or self._dumped[0] != trainer.global_step:
            self._dumped = (trainer.global_step, trainer._checkpoint_connector.dump_checkpoint(weights_only=False))
        return self._dumped[1]

    def save(self, g: int, trainer, path: Path) -> None:
        """Run g's resume point at `path` (its last.ckpt or a fork)."""
        blob = split_checkpoint(self._blob(trainer), g, len(self.run_dirs), self.stacked_keys, self.identities[g])
        with atomic_path(Path(path)) as tmp:
            torch.save(blob, tmp)

    def save_all(self, trainer) -> None:
        for g, run_dir in enumerate(self.run_dirs):
            self.save(g, trainer, run_dir / "last.ckpt")


def resume_steps(run_dirs: list[Path], identities: list[dict]) -> list[int]:
    """The step each run resumes from (0: fresh), its last.ckpt checked (digest, identity) as `train` checks it."""
    steps = []
    for run_dir, identity in zip(run_dirs, identities, strict=True):
        last = run_dir / "last.ckpt"
        if last.exists():
            state = load_verified(last, covered=RESUME_COVERED)
            check_stamp(last, state, identity)
            steps.append(int(state["global_step"]))
        else:
            steps.append(0)
    return steps


def train_stacked(cfgs: list[DictConfig], data_dir: str | Path, run_dirs: list[str | Path], shared,
                  start_step: int) -> list[dict]:
    """Train the runs `cfgs` (one variant, seeds differing; `why_not_stacked` is None) in one stacked step, from
    `start_step`, the step every one of them resumes from (`resume_steps`, checked by the caller). Each run's
    folder is written as `train` writes it (module docstring). `shared`: the group's SharedModel (compile once,
    hold the GPU lock)."""
    from hybridlab.train.run import (
        finish_run,
        fit,
        lightning_trainer,
        provenance,
        record_session,
        resolve_budget,
        run_recorder,
        stop_reason,
    )

    run_dirs = [Path(r) for r in run_dirs]
    identities = [run_identity(cfg) for cfg in cfgs]
    stamps = [stamp(i) for i in identities]
    manifest = read_manifest(data_dir)
    check_memory(cfgs[0], int(manifest["vocab_size"]), copies=len(cfgs))
    tokens, _ = load_split(data_dir, "train")
    members = []
    for cfg in cfgs:
        torch.manual_seed(int(cfg.seed))
        members.append(build_model(cfg, manifest["vocab_size"]))
    n_params = members[0].non_embedding_params()
    cfgs = [resolve_budget(cfg, n_params) for cfg in cfgs]
    cfg, t, n = cfgs[0], cfgs[0].train, len(cfgs)
    on_gpu = torch.cuda.is_available() and cfg.scale.accelerator != "cpu"
    if on_gpu:
        torch.set_float32_matmul_precision("high")
    stacked = stack_models(members)
    stacked_keys = {f"model.{k}" for k, _ in stacked.named_parameters()}
    warm = (torch.device("cuda"), n * int(t.micro_batch_size), int(cfg.scale.context) - 1) if on_gpu else None
    stacked, step_model = shared.take(stacked, bool(t.compile), warm, t.get("compile_mode"))
    saver = StackSaver(run_dirs, stacked_keys, stamps)
    recorders = [run_recorder(c, d, members[0], n_params, save=lambda tr, path, g=g: saver.save(g, tr, path),
                              progress=g == 0) for g, (c, d) in enumerate(zip(cfgs, run_dirs, strict=True))]
    for r, s in zip(recorders, stamps, strict=True):
        r.identity = s
    lit = StackedLM(stacked, members[0], cfg, step_model, n)
    stopper = StopOnSignal(run_dirs[0] / "last.ckpt", slurm_deadline(), ddp_every=int(t.log_every),
                           save=saver.save_all)
    trainer = lightning_trainer(cfg, run_dirs[0], on_gpu, [StackedRecorder(recorders), stopper], False)
    with contextlib.ExitStack() as locks:
        for run_dir in run_dirs:
            locks.enter_context(folder_lock(run_dir))
        for c, d, identity in zip(cfgs, run_dirs, identities, strict=True):
            write_json(d / PROVENANCE, train_provenance(provenance(c), identity, None, []))
        log.info("%d runs of %s stacked into one step (seeds %s): %s, %d steps", n, cfg.variant.name,
                 ", ".join(str(int(c.seed)) for c in cfgs), f"resuming from step {start_step}" if start_step else
                 "starting", int(t.steps))
        resume = None
        if start_step:
            resume = run_dirs[0] / "stack_resume.ckpt"
            blobs = [torch.load(d / "last.ckpt", weights_only=True, map_location="cpu") for d in run_dirs]
            with atomic_path(resume) as tmp:
                torch.save(merge_checkpoints(blobs, stacked_keys), tmp)
            del blobs
        session_start = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "from_step": start_step}
        started = time.perf_counter()
        try:
            fit(trainer, lit, StackedData(tokens, cfgs), resume)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e} (in one of the stacked runs {[str(d) for d in run_dirs]})") from e
        finally:
            if resume is not None:
                resume.unlink(missing_ok=True)
        for d in run_dirs:
            record_session(d, {**session_start, "stacked": n}, int(trainer.global_step),
                           stop_reason(trainer, stopper, cfg), time.perf_counter() - started)
        if stopper.signum is not None:
            raise Stopped(stopper.signum, int(trainer.global_step))
        return [finish_run(c, d, trainer, r, n_params, started)
                for c, d, r in zip(cfgs, run_dirs, recorders, strict=True)]

