"""Muon for hidden 2-D weight matrices, AdamW for everything else, in one optimizer.

`MuonAdamW` is a single `torch.optim.Optimizer` whose param groups carry a `use_muon` flag, so Lightning's
`configure_optimizers`, LR schedulers (which scale each group's `lr`) and checkpointing (one `state_dict`)
treat it like any other optimizer. `build_optimizers` routes a model's parameters into the groups.

Muon update for a matrix W with gradient G (momentum mu, Nesterov; same convention as torch.optim.Muon and
Keller Jordan's reference, an exponential moving average written with `lerp`):

    M <- mu * M + (1 - mu) * G
    U <- (1 - mu) * G + mu * M            (nesterov; U = M otherwise)
    O <- NewtonSchulz5(U)                 (quintic a, b, c = 3.4445, -4.7750, 2.0315; X / ||X||_F first;
                                           wide orientation, i.e. tall matrices are transposed)
    W <- W * (1 - lr * weight_decay)      (decoupled decay, with the group's unadjusted lr)
    W <- W - lr * s(rows, cols) * O

The shape factor s is chosen per group by `adjust_lr_fn`:
  - "original" (default, as torch.optim.Muon's default): s = sqrt(max(1, rows / cols)) (Keller Jordan's Muon;
    muon_lr ~ 0.02, the value in conf/train/default.yaml);
  - "match_rms_adamw": s = 0.2 * sqrt(max(rows, cols)) (Moonshot, "Muon is Scalable for LLM Training"), which
    gives the update about the RMS of an AdamW update, so muon_lr can equal the AdamW lr (~1e-3, not 0.02);
  - "none": s = 1.
"rows, cols" are the parameter's (out_features, in_features) for an nn.Linear weight.

Why not call torch.optim.Muon: it exists in every supported torch (>= 2.9), but it always orthogonalises in
bfloat16 (on CPU too) and its per-tensor function is private, so a combined optimizer would have to wrap two
optimizers and merge their state dicts. Here the Newton-Schulz dtype is bfloat16 on CUDA and float32 elsewhere
(`ns_dtype="auto"`); with `ns_dtype="bfloat16"` the update agrees with torch.optim.Muon (tested).

The AdamW half is the standard decoupled-weight-decay Adam with bias correction (as torch.optim.AdamW).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
ADJUST_LR_FNS = ("original", "match_rms_adamw", "none")
NS_DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}
# A 2-D parameter whose name contains one of these goes to AdamW instead of Muon.
ADAMW_NAME_PATTERNS: tuple[str, ...] = ("embed", "lm_head", "norm")


def newton_schulz(
    matrix: Tensor,
    steps: int = NS_STEPS,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = NS_EPS,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Approximately orthogonalise a 2-D matrix: U S V^T -> U S' V^T with S' roughly in [0.7, 1.2].

    Runs in `dtype` (default: bfloat16 on CUDA, float32 elsewhere) and returns that dtype.
    """
    if matrix.ndim != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    if dtype is None:
        dtype = torch.bfloat16 if matrix.is_cuda else torch.float32
    a, b, c = coefficients
    x = matrix.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    # Frobenius norm bounds the spectral norm, so all singular values start in [0, 1].
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def muon_lr_scale(shape: Sequence[int], adjust_lr_fn: str) -> float:
    """The shape factor s(rows, cols) that multiplies the Muon learning rate (see module docstring)."""
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "none":
        return 1.0
    raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r} is not one of {ADJUST_LR_FNS}")


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two update rules: groups with `use_muon=True` get Muon, the others AdamW.

    Every group may set: lr, weight_decay, use_muon; Muon groups: momentum, nesterov, ns_steps,
    ns_coefficients, ns_eps, ns_dtype ("auto" | "bfloat16" | "float32"), adjust_lr_fn;
    AdamW groups: betas, eps.
    Missing keys take the constructor's defaults.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        *,
        use_muon: bool = False,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = NS_STEPS,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        ns_eps: float = NS_EPS,
        ns_dtype: str = "auto",
        adjust_lr_fn: str = "original",
    ) -> None:
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "use_muon": use_muon,
            "betas": tuple(betas),
            "eps": eps,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "ns_coefficients": tuple(ns_coefficients),
            "ns_eps": ns_eps,
            "ns_dtype": ns_dtype,
            "adjust_lr_fn": adjust_lr_fn,
        }
        super().__init__(params, defaults)
        for i, group in enumerate(self.param_groups):
            _check_group(i, group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MuonAdamW does not support sparse gradients")
                if group["use_muon"]:
                    self._muon_update(p, group)
                else:
                    self._adamw_update(p, group)
        return loss

    def _muon_update(self, p: Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"]
        grad, mu = p.grad, group["momentum"]
        buf.lerp_(grad, 1 - mu)
        update = grad.lerp(buf, mu) if group["nesterov"] else buf
        ortho = newton_schulz(
            update, group["ns_steps"], group["ns_coefficients"], group["ns_eps"], NS_DTYPES[group["ns_dtype"]]
        )
        lr = group["lr"]
        p.mul_(1 - lr * group["weight_decay"])
        p.add_(ortho.to(p.dtype), alpha=-lr * muon_lr_scale(p.shape, group["adjust_lr_fn"]))

    def _adamw_update(self, p: Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step, grad = state["step"], p.grad
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        p.mul_(1 - lr * group["weight_decay"])
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1 = 1 - beta1**step
        bias2_sqrt = math.sqrt(1 - beta2**step)
        denom = (state["exp_avg_sq"].sqrt() / bias2_sqrt).add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)


def _check_group(index: int, group: dict[str, Any]) -> None:
    if group["lr"] < 0 or group["weight_decay"] < 0:
        raise ValueError(
            f"param group {index}: lr and weight_decay must be >= 0, got {group['lr']}, "
            f"{group['weight_decay']}"
        )
    if not group["use_muon"]:
        return
    if group["ns_dtype"] not in NS_DTYPES:
        raise ValueError(
            f"param group {index}: ns_dtype={group['ns_dtype']!r} is not one of {list(NS_DTYPES)}"
        )
    if group["adjust_lr_fn"] not in ADJUST_LR_FNS:
        raise ValueError(
            f"param group {index}: adjust_lr_fn={group['adjust_lr_fn']!r} is not one of {ADJUST_LR_FNS}"
        )
    for p in group["params"]:
        if p.ndim != 2:
            raise ValueError(f"param group {index}: Muon needs 2-D parameters, got shape {tuple(p.shape)}")


def split_params(
    named_params: Iterable[tuple[str, Tensor]], adamw_patterns: Sequence[str] = ADAMW_NAME_PATTERNS
) -> dict[str, list[tuple[str, Tensor]]]:
    """Route parameters by the convention both optimizer paths follow:
      "hidden"  the 2-D weight matrices of the hidden layers (name matches no AdamW pattern, not flagged
                `_no_weight_decay`): Muon's matrices, and the only parameters that get weight decay;
      "other"   everything else: embeddings and output head (name patterns), norms, biases, conv filters,
                decay parameters (A_log, dt_bias, D) and any parameter flagged `_no_weight_decay`: AdamW,
                never decayed.

    Frozen parameters (requires_grad False) are left out. Matching is case-insensitive on the full name.
    """
    routes: dict[str, list[tuple[str, Tensor]]] = {"hidden": [], "other": []}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        lowered = name.lower()
        hidden = (p.ndim == 2 and not any(pattern in lowered for pattern in adamw_patterns)
                  and not getattr(p, "_no_weight_decay", False))
        routes["hidden" if hidden else "other"].append((name, p))
    return routes


def adamw_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups by `split_params`: "decay" (the hidden matrices, `weight_decay`) and "no_decay"
    (everything else, 0); empty groups are omitted."""
    routes = split_params(model.named_parameters())
    groups = [{"name": "decay", "params": [p for _, p in routes["hidden"]], "weight_decay": weight_decay},
              {"name": "no_decay", "params": [p for _, p in routes["other"]], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizers(
    model: nn.Module,
    *,
    lr: float,
    muon_lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    momentum: float = 0.95,
    nesterov: bool = True,
    adjust_lr_fn: str = "original",
    ns_dtype: str = "auto",
    adamw_patterns: Sequence[str] = ADAMW_NAME_PATTERNS,
) -> MuonAdamW:
    """One `MuonAdamW` for `model`: Muon (lr `muon_lr`, `weight_decay`) on the hidden matrices, AdamW (lr `lr`,
    no weight decay) on the rest (`split_params`). Each group has a "name" key ("muon", "adamw") for logging;
    empty groups are omitted.
    """
    routes = split_params(model.named_parameters(), adamw_patterns)
    settings = {
        "muon": ("hidden", {"use_muon": True, "lr": muon_lr, "weight_decay": weight_decay}),
        "adamw": ("other", {"use_muon": False, "lr": lr, "weight_decay": 0.0}),
    }
    groups = [
        {"name": name, "params": [p for _, p in routes[route]], **extra}
        for name, (route, extra) in settings.items()
        if routes[route]
    ]
    if not groups:
        raise ValueError("build_optimizers: the model has no trainable parameters")
    return MuonAdamW(
        groups,
        lr=lr,
        weight_decay=weight_decay,
        betas=betas,
        eps=eps,
        momentum=momentum,
        nesterov=nesterov,
        ns_dtype=ns_dtype,
        adjust_lr_fn=adjust_lr_fn,
    )
