"""The sequential part of the chunked linear recurrences: passing the state from chunk to chunk.

The chunked forms of the recurrent mixers (hybridlab.models.recurrent.ops: scalar-decay linear attention for
Lightning and Mamba-2, the gated delta rule for Gated DeltaNet) are parallel over chunks except for one
recurrence. For chunks i = 0 .. n-1 with entry state S_i [Dk, Dv]:

    u_i     = u0_i - w_i S_i            (the gated delta rule; without w, u_i = u0_i)
    S_{i+1} = d_i S_i + k_i^T u_i

with u0_i [C, Dv], w_i and k_i [C, Dk] and the chunk's decay d_i (a scalar in [0, 1]). `chunk_state` returns
every entry state S [n + 1, Dk, Dv] (S_n is the final state) and u [n, C, Dv]; the caller forms the outputs
q_i S_i + (masked q k^T)_i u_i batched over chunks. Written as a PyTorch loop this launches a few tiny kernels
per chunk and is latency-bound on a GPU; the Triton kernel runs the whole loop in one program per (sequence and
head, block of value columns), the state in registers: value columns never mix, so they split freely.

Backward, given dU and dS (the gradients that reach u_i and S_i from the rest of the op), in reverse order from
G = dS_n:

    du_i = dU_i + k_i G          dk_i = u_i G^T          dd_i = <S_i, G>
    du0_i = du_i                 dw_i = -du_i S_i^T
    G <- d_i G + dS_i - w_i^T du_i                        and finally dS_0 = G.

Layout: a leading batch dimension N (sequences x heads): u0 [N, n, C, Dv], w and k [N, n, C, Dk], d [N, n],
s0 [N, Dk, Dv]. Backends: "triton" (CUDA float32, or the CPU interpreter under TRITON_INTERPRET=1),
"reference" (PyTorch, any device and float dtype, differentiated by autograd) and "auto" (Triton for float32
CUDA tensors when Triton imports, else the reference; never the interpreter).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .attn_stats import interpreting, triton_available

Backend = Literal["auto", "triton", "reference"]


def _check(u0: Tensor, w: Tensor | None, k: Tensor, d: Tensor, s0: Tensor) -> None:
    if u0.dim() != 4 or k.dim() != 4:
        raise ValueError(f"u0 and k must be [N, n, C, D], got {tuple(u0.shape)} and {tuple(k.shape)}")
    N, n, C, Dv = u0.shape
    Dk = k.shape[-1]
    if k.shape[:3] != (N, n, C) or (w is not None and w.shape != k.shape):
        raise ValueError(f"k {tuple(k.shape)} and w {None if w is None else tuple(w.shape)} must be [N, n, C, Dk] "
                         f"with N, n, C of u0 {tuple(u0.shape)}")
    if d.shape != (N, n) or s0.shape != (N, Dk, Dv):
        raise ValueError(f"d must be [N, n] = {(N, n)} and s0 [N, Dk, Dv] = {(N, Dk, Dv)}, got {tuple(d.shape)} "
                         f"and {tuple(s0.shape)}")
    tensors = [t for t in (u0, w, k, d, s0) if t is not None]
    if len({t.dtype for t in tensors}) != 1 or len({t.device for t in tensors}) != 1:
        raise TypeError("u0, w, k, d and s0 must share one dtype and one device")


def chunk_state_reference(u0: Tensor, w: Tensor | None, k: Tensor, d: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
    """(S [N, n+1, Dk, Dv], u [N, n, C, Dv]) by the definition, one chunk at a time (autograd differentiates it)."""
    _check(u0, w, k, d, s0)
    S, states, us = s0, [s0], []
    # unbind, not indexing: the backward of x[:, i] writes a zero tensor of x's whole size per chunk (quadratic
    # in the number of chunks); unbind's backward stacks the n gradients once.
    ws = [None] * u0.shape[1] if w is None else w.unbind(1)
    for u0_i, w_i, k_i, d_i in zip(u0.unbind(1), ws, k.unbind(1), d.unbind(1), strict=True):
        u = u0_i if w_i is None else u0_i - w_i @ S
        S = d_i[:, None, None] * S + k_i.transpose(-1, -2) @ u
        states.append(S)
        us.append(u)
    return torch.stack(states, dim=1), torch.stack(us, dim=1)


def _use_triton(backend: Backend, x: Tensor) -> bool:
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    if backend == "reference":
        return False
    if backend == "auto":  # the interpreter is for tests that ask for it: on the CPU "auto" means PyTorch
        return triton_available() and x.dtype == torch.float32 and x.is_cuda
    ok = triton_available() and x.dtype == torch.float32 and (x.is_cuda or interpreting())
    if not ok:
        raise RuntimeError("backend='triton' needs float32 tensors on CUDA (or TRITON_INTERPRET=1) and triton; "
                           f"got {x.dtype} on {x.device}")
    return ok


class _ChunkState(torch.autograd.Function):
    """The Triton kernels with their own backward. Without w, u is u0 itself: the second output is then an
    empty placeholder (the caller returns u0), and u0's own uses reach it through autograd as usual."""

    @staticmethod
    def forward(ctx, u0: Tensor, w: Tensor | None, k: Tensor, d: Tensor, s0: Tensor, tf32: bool):
        from ._chunk_state_triton import state_backward, state_forward

        S, u = state_forward(u0, w, k, d, s0, tf32)
        ctx.save_for_backward(w, k, d, S, u0 if w is None else u)
        ctx.tf32, ctx.backward_fn = tf32, state_backward
        return S, (u if w is not None else u0.new_empty(0))

    @staticmethod
    def backward(ctx, dS: Tensor, dU: Tensor | None):
        w, k, d, S, u = ctx.saved_tensors
        du0, dw, dk, dd, ds0 = ctx.backward_fn(w, k, d, S, u, dS, None if w is None else dU, ctx.tf32)
        return du0, dw, dk, dd, ds0, None


@torch.compiler.disable  # a graph break, not a trace: Dynamo need not know the kernel's launch
def chunk_state(u0: Tensor, w: Tensor | None, k: Tensor, d: Tensor, s0: Tensor, *, backend: Backend = "auto",
                tf32: bool = True) -> tuple[Tensor, Tensor]:
    """(S [N, n+1, Dk, Dv], u [N, n, C, Dv]); see the module docstring. `tf32`: the Triton kernel's float32
    products run on TF32 tensor cores (products rounded to 10 mantissa bits, sums in float32); False keeps
    full float32 products. Without w, u is u0."""
    _check(u0, w, k, d, s0)
    if not _use_triton(backend, u0):
        return chunk_state_reference(u0, w, k, d, s0)
    args = [x.contiguous() for x in (u0, k, d, s0)]
    w = None if w is None else w.contiguous()
    S, u = _ChunkState.apply(args[0], w, args[1], args[2], args[3], bool(tf32) and not interpreting())
    return S, (u0 if w is None else u)
