"""Backend choice for the recurrent ops: fla's Triton kernels on CUDA where they work, else the PyTorch forms.

`simple_gla` and `gated_delta` take the layout of `ops` ([B, H, T, D]) and pick, by `backend`:
  "torch"     the chunked PyTorch form (`ops.*_chunked`);
  "recurrent" the step-by-step PyTorch form (slow; a reference);
  "fla"       fla 0.6.0's chunk kernels, or an error saying why they can't run;
  "auto"      fla where it is importable, the tensors are on CUDA and a probe passed, else "torch".
A `window` always runs the PyTorch chunked form (fla has no windowed kernel). Calls of fewer than
SHORT_CALL steps (decoding) run the recurrent form under "auto", where a chunk kernel buys nothing.

The probe runs once per (op, device, dtype, H, Dk, Dv): a tiny forward, then forward+backward, each checked
against the PyTorch form. fla 0.6.0 refuses the backward of both ops on Hopper with Triton < 3.7.1; then
training falls back to PyTorch while no-grad evaluation still uses fla's forward. Each failure is logged once
to the "hybridlab" logger. `which_backend(op)` names the backend of the op's most recent call.
"""

import importlib.util
import logging

import torch
from torch import Tensor

from hybridlab.models.recurrent import ops

log = logging.getLogger("hybridlab")

BACKENDS = ("auto", "torch", "recurrent", "fla")
OPS = ("simple_gla", "gated_delta")
SHORT_CALL = 16

_probes: dict[tuple, tuple[str | None, str | None]] = {}  # key -> (forward failure, backward failure)
_last_used: dict[str, str] = {}
_warned: set[tuple] = set()


def which_backend(op: str) -> str:
    """'fla', 'torch' or 'recurrent' for the op's most recent call in this process; 'none' before any."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    return _last_used.get(op, "none")


def fla_importable() -> bool:
    return importlib.util.find_spec("fla") is not None


def _warn_once(key: tuple, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg)


def _torch_op(op: str, recurrent: bool):
    if op == "simple_gla":
        return ops.simple_gla_recurrent if recurrent else ops.simple_gla_chunked
    return ops.gated_delta_recurrent if recurrent else ops.gated_delta_chunked


def _run_fla(op: str, q, k, v, g, beta, initial_state, scale: float) -> tuple[Tensor, Tensor]:
    # fla wants [B, T, H, D], one dtype for q/k/v (and beta), fp32 log-decays and states.
    dtype = v.dtype
    q, k, v = (x.to(dtype).transpose(1, 2) for x in (q, k, v))
    g = g.float().transpose(1, 2)
    h0 = None if initial_state is None else initial_state.float()
    if op == "simple_gla":
        from fla.ops.simple_gla import chunk_simple_gla

        o, state = chunk_simple_gla(q, k, v, g=g, scale=scale, initial_state=h0, output_final_state=True)
    else:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        beta = beta.to(dtype).transpose(1, 2)
        o, state = chunk_gated_delta_rule(
            q, k, v, g=g, beta=beta, scale=scale, initial_state=h0, output_final_state=True
        )
    return o.transpose(1, 2).to(dtype), state


def _probe_inputs(op: str, device, dtype, H: int, Dk: int, Dv: int) -> list[Tensor | None]:
    gen = torch.Generator(device=device).manual_seed(0)
    T = ops.CHUNK + 16

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32)

    q, k, v = rand(1, H, T, Dk), rand(1, H, T, Dk), rand(1, H, T, Dv)
    k = torch.nn.functional.normalize(k, dim=-1)
    g = torch.nn.functional.logsigmoid(rand(1, H, T) + 3.0)
    beta = torch.sigmoid(rand(1, H, T)) if op == "gated_delta" else None
    h0 = rand(1, H, Dk, Dv) * 0.1
    return [q.to(dtype), k.to(dtype), v.to(dtype), g, beta, h0]


def _rel_err(a: Tensor, b: Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def _probe(op: str, device, dtype, H: int, Dk: int, Dv: int) -> tuple[str | None, str | None]:
    key = (op, str(device), dtype, H, Dk, Dv)  # fla autotunes per (H, Dk, Dv): the probe shares its tuning
    if key not in _probes:
        # The probe differentiates even when called under no_grad / inference_mode, and ignores autocast.
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cuda", enabled=False):
            _probes[key] = _run_probe(op, device, dtype, H, Dk, Dv)
    return _probes[key]


def _run_probe(op: str, device, dtype, H: int, Dk: int, Dv: int) -> tuple[str | None, str | None]:
    inputs = _probe_inputs(op, device, dtype, H, Dk, Dv)
    scale = Dk**-0.5
    ref_in = [None if x is None else x.float().requires_grad_() for x in inputs]
    ref_o, _ = _torch_op(op, recurrent=False)(
        *[x for x in ref_in[:5] if x is not None], initial_state=ref_in[5], scale=scale
    )
    ref_o.square().sum().backward()
    tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 2e-3
    try:
        with torch.no_grad():
            o, _ = _run_fla(op, *inputs, scale)
    except Exception as e:  # fla raises many kinds (RuntimeError, AssertionError, Triton compile errors)
        return f"{type(e).__name__}: {e}", "forward failed"
    if _rel_err(o, ref_o) > tol:
        return f"forward differs from PyTorch's (relative error {_rel_err(o, ref_o):.1e})", "forward failed"
    try:
        leaves = [None if x is None else x.requires_grad_() for x in inputs]
        o, _ = _run_fla(op, *leaves, scale)
        o.float().square().sum().backward()
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"
    for name, x, r in zip(("q", "k", "v", "g", "beta", "h0"), leaves, ref_in, strict=True):
        if x is not None and _rel_err(x.grad, r.grad) > 5 * tol:
            err = _rel_err(x.grad, r.grad)
            return None, f"gradient of {name} differs from PyTorch's (relative error {err:.1e})"
    return None, None


def _fla_refusal(op: str, tensors: list[Tensor | None], need_grad: bool) -> str | None:
    """Why fla can't run this call, or None when it can."""
    q, v = tensors[0], tensors[2]
    if not q.is_cuda:
        return "inputs are not on CUDA"
    if not fla_importable():
        return "fla is not importable"
    fwd_fail, bwd_fail = _probe(op, q.device, v.dtype, q.shape[1], q.shape[-1], v.shape[-1])
    if fwd_fail is not None:
        return f"fla forward failed its probe: {fwd_fail}"
    if need_grad and bwd_fail is not None:
        return f"fla backward failed its probe: {bwd_fail}"
    return None


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _dispatch(op, tensors, initial_state, scale, backend, window, chunk) -> tuple[Tensor, Tensor | None]:
    check_backend(backend)
    if window is not None:
        choice = "torch"
    elif backend in ("torch", "recurrent"):
        choice = backend
    elif backend == "auto" and tensors[0].shape[2] < SHORT_CALL:
        choice = "recurrent"
    else:
        need_grad = torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in [*tensors, initial_state]
        )
        refusal = _fla_refusal(op, tensors, need_grad)
        if refusal is not None and backend == "fla":
            raise RuntimeError(f"backend='fla' cannot run {op}: {refusal}")
        if refusal is not None and tensors[0].is_cuda:
            _warn_once((op, str(tensors[0].device), refusal), f"{op}: using PyTorch, {refusal}")
        choice = "torch" if refusal is not None else "fla"
    _last_used[op] = choice
    args = [x for x in tensors if x is not None]
    if choice == "fla":
        return _run_fla(op, *tensors, initial_state, scale)
    if choice == "recurrent":
        return _torch_op(op, recurrent=True)(*args, initial_state, scale=scale)
    return _torch_op(op, recurrent=False)(*args, chunk, initial_state, window=window, scale=scale)


def simple_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float = 1.0,
    backend: str = "auto",
    window: int | None = None,
    chunk: int = ops.CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """`ops.simple_gla_*` on the chosen backend. Returns (o [B,H,T,Dv], final state [B,H,Dk,Dv] fp32)."""
    return _dispatch("simple_gla", [q, k, v, g, None], initial_state, scale, backend, window, chunk)


def gated_delta(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float = 1.0,
    backend: str = "auto",
    window: int | None = None,
    chunk: int = ops.CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """`ops.gated_delta_*` on the chosen backend. Returns (o [B,H,T,Dv], final state [B,H,Dk,Dv] fp32)."""
    return _dispatch("gated_delta", [q, k, v, g, beta], initial_state, scale, backend, window, chunk)
