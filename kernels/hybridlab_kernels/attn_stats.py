"""Statistics of causal softmax attention at chosen query positions, without the T x T matrix.

For each (batch, head, chosen query) this module returns the attention mass on a set of "needle" keys, the
Shannon entropy of the attention distribution and the index of the most attended key. It owns the result
type, the input checks shared by both backends, the pure-PyTorch streaming reference and the backend choice.
The Triton kernels live in `_attn_stats_triton` and are imported on first use only: Triton decides at
decoration time whether a kernel runs compiled or under the CPU interpreter (TRITON_INTERPRET=1).

Both backends keep, per query, the same running state over blocks of keys and merge blocks with one rule:
    m   running max of the scaled scores s_j over the keys seen so far
    z   sum_j exp(s_j - m)
    u   sum_j exp(s_j - m) * (s_j - m)
    t   sum_j exp(s_j - m) * target_j
    i   index of the first key that reached m
Then mass = t / z and entropy = log Z - E[s] = (m + log z) - (m + u / z) = log z - u / z; m cancels, so the
entropy never subtracts two large numbers. README.md gives the derivation of the merge rule.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

# A finite stand-in for minus infinity: masked scores take this value, so exp(m_a - m) and z * (m_a - m)
# stay exact zeros instead of NaN (inf - inf, 0 * inf) while no allowed key has been seen yet.
NEG = -1.0e30
MAX_HEAD_DIM = 256
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class AttnStats:
    """Per-query statistics, each [B, H, Q]. mass and entropy are float32 (float64 when the reference runs
    on float64 inputs); top1 is int64, the absolute key position."""

    mass: Tensor
    entropy: Tensor
    top1: Tensor


@dataclass
class AttnInputs:
    """Inputs checked and brought to one layout, shared by both backends."""

    q: Tensor  # [B, H, Q, D]
    k: Tensor  # [B, H, T, D]
    q_pos: Tensor  # [B, Q] int64
    target: Tensor  # [B, H, T] bool, possibly an expanded view
    window: Tensor  # [H] int64 in [1, T]; T means the head sees the full causal prefix
    sink: int
    scale: float
    pos_min: int
    pos_max: int
    window_max: int


def prepare_inputs(
    q: Tensor,
    k: Tensor,
    q_pos: Tensor,
    target: Tensor,
    *,
    scale: float | None,
    window: int | Tensor | None,
    sink: int,
) -> AttnInputs:
    """Check shapes, dtypes and ranges; broadcast q_pos, target and window to their per-batch/head forms."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q must be [B, H, Q, D] and k [B, H, T, D]; got {list(q.shape)}, {list(k.shape)}")
    B, H, Q, D = q.shape
    T = k.shape[2]
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != D:
        raise ValueError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)} in B, H or D")
    if q.dtype != k.dtype or not q.dtype.is_floating_point:
        raise TypeError(f"q and k must share one floating dtype; got q {q.dtype}, k {k.dtype}")
    if q.device != k.device:
        raise ValueError(f"q is on {q.device} but k on {k.device}")
    if Q == 0 or T == 0 or D == 0:
        raise ValueError(f"empty input: Q={Q}, T={T}, D={D}")

    if q_pos.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"q_pos must be an integer tensor; got {q_pos.dtype}")
    if q_pos.dim() == 1 and q_pos.shape[0] == Q:
        q_pos = q_pos.unsqueeze(0).expand(B, Q)
    elif q_pos.dim() != 2 or tuple(q_pos.shape) != (B, Q):
        raise ValueError(f"q_pos must be [Q]={[Q]} or [B, Q]={[B, Q]}; got {list(q_pos.shape)}")
    q_pos = q_pos.to(device=q.device, dtype=torch.int64)

    if target.dtype != torch.bool:
        raise TypeError(f"target must be a bool mask; got {target.dtype}")
    if target.dim() == 2 and tuple(target.shape) == (B, T):
        target = target.unsqueeze(1).expand(B, H, T)
    elif target.dim() != 3 or tuple(target.shape) != (B, H, T):
        raise ValueError(f"target must be [B, T]={[B, T]} or [B, H, T]={[B, H, T]}; got {list(target.shape)}")
    target = target.to(q.device)

    if window is None:
        window_t = torch.full((H,), T, dtype=torch.int64, device=q.device)
    elif isinstance(window, Tensor):
        if window.dim() != 1 or window.shape[0] != H or window.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"a per-head window must be an integer tensor of shape [H]={[H]}; got "
                             f"{window.dtype} {list(window.shape)}")
        window_t = window.to(device=q.device, dtype=torch.int64)
    elif isinstance(window, int) and not isinstance(window, bool):
        window_t = torch.full((H,), window, dtype=torch.int64, device=q.device)
    else:
        raise TypeError(f"window must be None, an int or a LongTensor [H]; got {type(window).__name__}")
    # One device-to-host copy for all the range checks: each separate one would stall a GPU caller.
    pos_min, pos_max, window_min, window_max = torch.stack(
        [q_pos.min(), q_pos.max(), window_t.min(), window_t.max()]).tolist()
    if pos_min < 0 or pos_max >= T:
        raise ValueError(f"q_pos must lie in [0, T={T}); got values in [{pos_min}, {pos_max}]")
    if window_min < 1:
        raise ValueError(f"window sizes must be >= 1 (>= T={T} means a full head); got {window_t.tolist()}")
    window_t = window_t.clamp(max=T)

    if not isinstance(sink, int) or sink < 0:
        raise ValueError(f"sink must be an int >= 0; got {sink!r}")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    return AttnInputs(q, k, q_pos, target, window_t, sink, float(scale), pos_min, pos_max, min(window_max, T))


BlockState = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # (m, z, u, t, i), see the module docstring


def merge_states(a: BlockState, b: BlockState) -> BlockState:
    """Combine the states of two disjoint key sets; on equal maxima the first (earlier keys) wins top1."""
    m_a, z_a, u_a, t_a, i_a = a
    m_b, z_b, u_b, t_b, i_b = b
    m = torch.maximum(m_a, m_b)
    c_a, c_b = torch.exp(m_a - m), torch.exp(m_b - m)
    z = c_a * z_a + c_b * z_b
    u = c_a * (u_a + z_a * (m_a - m)) + c_b * (u_b + z_b * (m_b - m))
    t = c_a * t_a + c_b * t_b
    i = torch.where(m_b > m_a, i_b, i_a)
    return m, z, u, t, i


def _block_state(s: Tensor, allowed: Tensor, tgt: Tensor, start: int) -> BlockState:
    s = s.masked_fill(~allowed, NEG)
    m, i = s.max(dim=-1)
    d = torch.where(allowed, s - m.unsqueeze(-1), 0.0)
    e = torch.where(allowed, torch.exp(d), 0.0)
    return m, e.sum(-1), (e * d).sum(-1), (e * tgt).sum(-1), i + start


def _finalize(state: BlockState) -> AttnStats:
    _, z, u, t, i = state
    return AttnStats(mass=t / z, entropy=(torch.log(z) - u / z).clamp_min(0.0), top1=i.to(torch.int64))


def attention_stats_reference(
    q: Tensor,
    k: Tensor,
    q_pos: Tensor,
    target: Tensor,
    *,
    scale: float | None = None,
    window: int | Tensor | None = None,
    sink: int = 0,
    chunk_size: int = 2048,
) -> AttnStats:
    """Pure-PyTorch streaming reference: keys in chunks of `chunk_size`, memory O(B * H * Q * chunk_size).

    Computes in float32, or float64 for float64 inputs. Chunks that no query may attend to are skipped.
    """
    x = prepare_inputs(q, k, q_pos, target, scale=scale, window=window, sink=sink)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, H, Q, _ = x.q.shape
    qf = x.q.to(acc)
    p = x.q_pos[:, None, :, None]  # [B, 1, Q, 1]
    w = x.window[None, :, None, None]  # [1, H, 1, 1]
    zeros = qf.new_zeros(B, H, Q)
    state: BlockState = (zeros + NEG, zeros, zeros, zeros, zeros.long())
    first_needed = max(0, x.pos_min - x.window_max + 1)  # no query looks further back, sinks aside
    for start in range(0, x.pos_max + 1, chunk_size):
        end = min(start + chunk_size, x.pos_max + 1)
        if end <= first_needed and start >= x.sink:
            continue
        j = torch.arange(start, end, device=q.device)
        s = torch.matmul(qf, x.k[:, :, start:end].to(acc).transpose(-1, -2)) * x.scale
        allowed = (j <= p) & ((p - j < w) | (j < x.sink))
        tgt = x.target[:, :, None, start:end].to(acc)
        state = merge_states(state, _block_state(s, allowed, tgt, start))
    return _finalize(state)


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def attention_stats_triton(
    q: Tensor,
    k: Tensor,
    q_pos: Tensor,
    target: Tensor,
    *,
    scale: float | None = None,
    window: int | Tensor | None = None,
    sink: int = 0,
    num_splits: int | None = None,
) -> AttnStats:
    """Triton kernel: one program per (batch * head, block of queries, split of the keys).

    `num_splits` (default: chosen to fill the GPU) cuts the causal key range into that many parts run in
    parallel, merged by a second small kernel; it pays when B * H * ceil(Q / BLOCK_Q) is below the SM count.
    Inputs must be float32, float16 or bfloat16 CUDA tensors (CPU tensors only under TRITON_INTERPRET=1).
    """
    x = prepare_inputs(q, k, q_pos, target, scale=scale, window=window, sink=sink)
    if q.dtype not in TRITON_DTYPES:
        raise TypeError(f"the Triton backend takes {[str(d) for d in TRITON_DTYPES]}; got {q.dtype} "
                        "(use backend='reference' for float64)")
    if x.q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head dim D={x.q.shape[-1]} exceeds the kernel's maximum {MAX_HEAD_DIM}")
    if not q.is_cuda and not interpreting():
        raise RuntimeError(f"the Triton backend needs CUDA tensors (got {q.device}); on CPU set "
                           "TRITON_INTERPRET=1 before the first call, or use backend='reference'")
    if num_splits is not None and num_splits < 1:
        raise ValueError(f"num_splits must be >= 1 or None; got {num_splits}")
    try:
        from . import _attn_stats_triton
    except ImportError as err:
        raise RuntimeError("the Triton backend needs the `triton` package (pip install triton)") from err
    mass, entropy, top1 = _attn_stats_triton.launch(x, num_splits)
    return AttnStats(mass=mass, entropy=entropy, top1=top1)


def triton_available() -> bool:
    """True when the `triton` package can be imported (it says nothing about a GPU)."""
    return importlib.util.find_spec("triton") is not None


# "auto" checks its first Triton call against the reference on the same inputs; a failure or a mismatch
# switches this process to the reference, with one warning, so an analysis never stops on a kernel problem.
_AUTO_TRITON = {"checked": False, "ok": True}


def _first_auto_call(q: Tensor, k: Tensor, q_pos: Tensor, target: Tensor, kwargs: dict) -> AttnStats:
    import logging

    log = logging.getLogger("hybridlab")
    ref = attention_stats_reference(q, k, q_pos, target, **kwargs)
    _AUTO_TRITON["checked"] = True
    try:
        out = attention_stats_triton(q, k, q_pos, target, **kwargs)
        err = max(float((out.mass - ref.mass).abs().max()), float((out.entropy - ref.entropy).abs().max()))
    except Exception as e:  # noqa: BLE001 - any kernel failure means: use the reference
        _AUTO_TRITON["ok"] = False
        log.warning("attention_stats: Triton kernel failed (%s: %s); using the PyTorch reference", type(e).__name__, e)
        return ref
    if not err <= 1e-2:
        _AUTO_TRITON["ok"] = False
        log.warning("attention_stats: Triton differs from the reference by %.3g; using the reference", err)
        return ref
    log.info("attention_stats: Triton kernel agrees with the reference (max abs diff %.2g)", err)
    return out


def attention_stats(
    q: Tensor,
    k: Tensor,
    q_pos: Tensor,
    target: Tensor,
    *,
    scale: float | None = None,
    window: int | Tensor | None = None,
    sink: int = 0,
    backend: Literal["auto", "triton", "reference"] = "auto",
) -> AttnStats:
    """Attention mass on `target`, entropy and top-1 key for queries `q` at positions `q_pos` over keys `k`.

    q [B, H, Q, D]; k [B, H, T, D]; q_pos [Q] or [B, Q]; target bool [B, T] or [B, H, T]. Key j is visible
    from position p iff j <= p and (p - j < window or j < sink); window is None (full causal), an int, or a
    LongTensor [H] per head. backend="auto" takes Triton for CUDA tensors of a dtype it supports when Triton
    imports, otherwise the reference.
    """
    kwargs = {"scale": scale, "window": window, "sink": sink}
    if backend == "auto":
        use_triton = q.is_cuda and q.dtype in TRITON_DTYPES and triton_available() and _AUTO_TRITON["ok"]
        if use_triton and not _AUTO_TRITON["checked"]:
            return _first_auto_call(q, k, q_pos, target, kwargs)
        backend = "triton" if use_triton else "reference"
    if backend == "triton":
        return attention_stats_triton(q, k, q_pos, target, **kwargs)
    if backend == "reference":
        return attention_stats_reference(q, k, q_pos, target, **kwargs)
    raise ValueError(f"backend must be 'auto', 'triton' or 'reference'; got {backend!r}")
