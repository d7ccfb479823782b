"""Triton kernels behind `chunk_state` (imported on first use, see attn_stats.py on the interpreter).

One program per (sequence x head, block of BV value columns) runs the whole loop over chunks with the state
tile [Dk, BV] in registers: the forward writes every entry state and u, the backward walks the chunks in
reverse with the gradient tile G. Value columns never mix in the recurrence, so each program owns its columns
of u, S, du0 and dS_0 outright; dk, dw and dd sum over value columns, so each program writes its own partial
(one slice per value block) and the wrapper adds the slices. All arithmetic is float32; the products run on
TF32 tensor cores when TF32 is set, in full float32 otherwise (always under the interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _dot(a, b, TF32: tl.constexpr):
    if TF32:
        return tl.dot(a, b, input_precision="tf32")
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _tiles(C, DK, DV, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Offsets and masks of this program's tiles: a chunk x value block [C, BV], a chunk x key [C, DK] and the
    state's key x value block [DK, BV]."""
    oc = tl.arange(0, BC)
    ok = tl.arange(0, BK)
    ov = tl.program_id(1) * BV + tl.arange(0, BV)
    m_cv = (oc[:, None] < C) & (ov[None, :] < DV)
    m_ck = (oc[:, None] < C) & (ok[None, :] < DK)
    m_kv = (ok[:, None] < DK) & (ov[None, :] < DV)
    cv, ck, kv = oc[:, None] * DV + ov[None, :], oc[:, None] * DK + ok[None, :], ok[:, None] * DV + ov[None, :]
    return cv, m_cv, ck, m_ck, kv, m_kv


@triton.jit
def _forward_kernel(u0_ptr, w_ptr, k_ptr, d_ptr, s0_ptr, s_ptr, u_ptr, n, C, DK, DV,
                    BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_W: tl.constexpr, TF32: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    cv, m_cv, ck, m_ck, kv, m_kv = _tiles(C, DK, DV, BC, BK, BV)
    S = tl.load(s0_ptr + bh * DK * DV + kv, mask=m_kv, other=0.0)
    s_base = s_ptr + bh * (n + 1) * DK * DV
    for i in range(n):
        tl.store(s_base + i * DK * DV + kv, S, mask=m_kv)
        chunk = bh * n + i
        u = tl.load(u0_ptr + chunk * C * DV + cv, mask=m_cv, other=0.0)
        kt = tl.load(k_ptr + chunk * C * DK + ck, mask=m_ck, other=0.0)
        if HAS_W:
            wt = tl.load(w_ptr + chunk * C * DK + ck, mask=m_ck, other=0.0)
            u = u - _dot(wt, S, TF32)
            tl.store(u_ptr + chunk * C * DV + cv, u, mask=m_cv)
        S = tl.load(d_ptr + chunk) * S + _dot(tl.trans(kt), u, TF32)
    tl.store(s_base + n * DK * DV + kv, S, mask=m_kv)


@triton.jit
def _backward_kernel(w_ptr, k_ptr, d_ptr, s_ptr, u_ptr, ds_ptr, dux_ptr, du_ptr, dk_ptr, dw_ptr, dd_ptr, ds0_ptr,
                     n, C, DK, DV, N, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_W: tl.constexpr,
                     HAS_DU: tl.constexpr, TF32: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    vb = tl.program_id(1)
    cv, m_cv, ck, m_ck, kv, m_kv = _tiles(C, DK, DV, BC, BK, BV)
    s_base = s_ptr + bh * (n + 1) * DK * DV
    ds_base = ds_ptr + bh * (n + 1) * DK * DV
    G = tl.load(ds_base + n * DK * DV + kv, mask=m_kv, other=0.0)
    for j in range(n):
        i = n - 1 - j
        chunk = bh * n + i
        part = (vb * N + bh) * n + i  # this value block's slice of the partial sums
        kt = tl.load(k_ptr + chunk * C * DK + ck, mask=m_ck, other=0.0)
        ui = tl.load(u_ptr + chunk * C * DV + cv, mask=m_cv, other=0.0)
        Si = tl.load(s_base + i * DK * DV + kv, mask=m_kv, other=0.0)
        du = _dot(kt, G, TF32)
        if HAS_DU:
            du += tl.load(dux_ptr + chunk * C * DV + cv, mask=m_cv, other=0.0)
        tl.store(du_ptr + chunk * C * DV + cv, du, mask=m_cv)
        tl.store(dk_ptr + part * C * DK + ck, _dot(ui, tl.trans(G), TF32), mask=m_ck)
        tl.store(dd_ptr + part, tl.sum(tl.sum(Si * G, axis=1), axis=0))
        G = tl.load(d_ptr + chunk) * G + tl.load(ds_base + i * DK * DV + kv, mask=m_kv, other=0.0)
        if HAS_W:
            wt = tl.load(w_ptr + chunk * C * DK + ck, mask=m_ck, other=0.0)
            tl.store(dw_ptr + part * C * DK + ck, -_dot(du, tl.trans(Si), TF32), mask=m_ck)
            G = G - _dot(tl.trans(wt), du, TF32)
    tl.store(ds0_ptr + bh * DK * DV + kv, G, mask=m_kv)


def _blocks(C: int, Dk: int, Dv: int) -> dict[str, int]:
    """Tile sizes: whole chunks and key widths (tl.dot needs every dimension >= 16), value blocks of <= 64."""
    def p2(x: int) -> int:
        return max(16, triton.next_power_of_2(x))

    return {"BC": p2(C), "BK": p2(Dk), "BV": min(64, p2(Dv))}


def state_forward(u0: Tensor, w: Tensor | None, k: Tensor, d: Tensor, s0: Tensor, tf32: bool) -> tuple[Tensor, Tensor]:
    """Contiguous float32 inputs of `chunk_state`'s layout -> (S [N, n+1, Dk, Dv], u [N, n, C, Dv] or a
    placeholder when w is None)."""
    N, n, C, Dv = u0.shape
    Dk = k.shape[-1]
    blocks = _blocks(C, Dk, Dv)
    S = torch.empty(N, n + 1, Dk, Dv, device=u0.device, dtype=torch.float32)
    u = torch.empty_like(u0) if w is not None else u0.new_empty(1)
    grid = (N, triton.cdiv(Dv, blocks["BV"]))
    _forward_kernel[grid](u0, u0 if w is None else w, k, d, s0, S, u, n, C, Dk, Dv, **blocks, HAS_W=w is not None,
                          TF32=tf32, num_warps=4)
    return S, u


def state_backward(w: Tensor | None, k: Tensor, d: Tensor, S: Tensor, u: Tensor, dS: Tensor | None,
                   dU: Tensor | None, tf32: bool) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
    """Gradients (du0, dw, dk, dd, ds0) of `state_forward` given dS [N, n+1, Dk, Dv] and dU (None: zero)."""
    N, n, C, Dv = u.shape
    Dk = k.shape[-1]
    blocks = _blocks(C, Dk, Dv)
    n_vb = triton.cdiv(Dv, blocks["BV"])
    dS = torch.zeros_like(S) if dS is None else dS.contiguous()
    du0 = torch.empty_like(u)
    dk = torch.empty(n_vb, N, n, C, Dk, device=u.device, dtype=torch.float32)
    dw = torch.empty_like(dk) if w is not None else dk
    dd = torch.empty(n_vb, N, n, device=u.device, dtype=torch.float32)
    ds0 = torch.empty(N, Dk, Dv, device=u.device, dtype=torch.float32)
    _backward_kernel[(N, n_vb)](k if w is None else w, k, d, S, u, dS, du0 if dU is None else dU.contiguous(), du0,
                                dk, dw, dd, ds0, n, C, Dk, Dv, N, **blocks, HAS_W=w is not None,
                                HAS_DU=dU is not None, TF32=tf32, num_warps=4)
    return du0, (dw.sum(0) if w is not None else None), dk.sum(0), dd.sum(0), ds0
