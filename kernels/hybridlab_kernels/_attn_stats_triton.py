"""Triton kernels behind `attention_stats_triton`; imported lazily by `attn_stats` (see its docstring).

`_stats_kernel` runs one program per (batch * head, block of BLOCK_Q queries, split of the keys). Each
program walks its key blocks in increasing order, first the sink blocks [0, sink) that lie before the
window, then the blocks from the earliest window start of its queries up to its latest query; blocks that
no query of the program may see are never loaded. Per key block it computes the block's (m, z, u, t, i)
state and merges it into the running one with `_merge`, the same rule as `attn_stats.merge_states`.
With one split the program writes the final statistics; with several, `_combine_kernel` merges the
per-split states. All accumulation is float32.

Under TRITON_INTERPRET=1 the q and K tiles are cast to float32 before `tl.dot` (UPCAST): the interpreter
stores bfloat16 as raw uint16 and its dot multiplies the bit patterns. Products of two 16-bit floats are
exact in float32, so the upcast computes what the compiled tensor-core dot computes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attn_stats import NEG, AttnInputs, interpreting

_NEG = tl.constexpr(NEG)
_MIN_KEY_BLOCKS_PER_SPLIT = 8  # below this a split's fixed cost outweighs the parallelism it buys


@triton.jit
def _merge(m_a, z_a, u_a, t_a, i_a, m_b, z_b, u_b, t_b, i_b):
    m = tl.maximum(m_a, m_b)
    c_a = tl.exp(m_a - m)
    c_b = tl.exp(m_b - m)
    z = c_a * z_a + c_b * z_b
    u = c_a * (u_a + z_a * (m_a - m)) + c_b * (u_b + z_b * (m_b - m))
    t = c_a * t_a + c_b * t_b
    i = tl.where(m_b > m_a, i_b, i_a)
    return m, z, u, t, i


@triton.jit
def _finalize(z, u, t):
    z = tl.where(z > 0, z, 1.0)  # only rows past Q (never stored) are empty; keeps them free of 0/0
    return t / z, tl.maximum(tl.log(z) - u / z, 0.0)


@triton.jit
def _key_block(q, k_base, t_base, start, pos, win, sink, T, D, scale, stride_kt, stride_kd, stride_tt,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    offs_n = start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    in_t = offs_n < T
    kt = tl.load(k_base + offs_n[None, :] * stride_kt + offs_d[:, None] * stride_kd,
                 mask=in_t[None, :] & (offs_d[:, None] < D), other=0.0)
    if UPCAST:
        kt = kt.to(tl.float32)
    if IEEE:  # float32 inputs: full-precision products, not TF32
        s = tl.dot(q, kt, input_precision="ieee") * scale
    else:  # 16-bit inputs: tensor-core products are exact in the float32 accumulator
        s = tl.dot(q, kt) * scale
    tgt = tl.load(t_base + offs_n * stride_tt, mask=in_t, other=0).to(tl.float32)
    rel = pos[:, None] - offs_n[None, :]
    allowed = (rel >= 0) & ((rel < win) | (offs_n[None, :] < sink)) & in_t[None, :]
    s = tl.where(allowed, s, _NEG)
    m = tl.max(s, axis=1)
    i = tl.argmax(s, axis=1) + start
    d = tl.where(allowed, s - m[:, None], 0.0)
    e = tl.where(allowed, tl.exp(d), 0.0)
    return m, tl.sum(e, axis=1), tl.sum(e * d, axis=1), tl.sum(e * tgt[None, :], axis=1), i


@triton.jit
def _stats_kernel(
    q_ptr, k_ptr, pos_ptr, tgt_ptr, win_ptr,
    mass_ptr, ent_ptr, top_ptr,
    pm_ptr, pz_ptr, pu_ptr, pt_ptr, pi_ptr,
    H, Q, T, D, sink, scale, split_len,
    stride_qb, stride_qh, stride_qq, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_pb, stride_pq,
    stride_tb, stride_th, stride_tt,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    bh = tl.program_id(0)
    qb = tl.program_id(1)
    sp = tl.program_id(2)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)

    offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    in_q = offs_q < Q
    offs_d = tl.arange(0, BLOCK_D)
    q_base = q_ptr + b * stride_qb + h * stride_qh
    q = tl.load(q_base + offs_q[:, None] * stride_qq + offs_d[None, :] * stride_qd,
                mask=in_q[:, None] & (offs_d[None, :] < D), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    # Rows past Q get position -1: no key satisfies j <= -1, so they stay empty and are never stored.
    pos = tl.load(pos_ptr + b * stride_pb + offs_q * stride_pq, mask=in_q, other=-1).to(tl.int32)
    win = tl.load(win_ptr + h).to(tl.int32)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    t_base = tgt_ptr + b * stride_tb + h * stride_th

    hi = tl.max(tl.where(in_q, pos, 0), axis=0) + 1
    lo = tl.maximum(tl.min(tl.where(in_q, pos, T), axis=0) - win + 1, 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    sink_end = tl.minimum(lo, sink)  # ends at or before `lo`, a block boundary: the two loops never overlap
    first = sp * split_len
    last = first + split_len

    m = tl.full([BLOCK_Q], _NEG, tl.float32)
    z = tl.zeros([BLOCK_Q], tl.float32)
    u = tl.zeros([BLOCK_Q], tl.float32)
    t = tl.zeros([BLOCK_Q], tl.float32)
    i = tl.zeros([BLOCK_Q], tl.int32)
    for start in range(first, tl.minimum(sink_end, last), BLOCK_N):
        m_b, z_b, u_b, t_b, i_b = _key_block(q, k_base, t_base, start, pos, win, sink, T, D, scale,
                                             stride_kt, stride_kd, stride_tt, BLOCK_N, BLOCK_D, UPCAST, IEEE)
        m, z, u, t, i = _merge(m, z, u, t, i, m_b, z_b, u_b, t_b, i_b)
    for start in range(tl.maximum(lo, first), tl.minimum(hi, last), BLOCK_N):
        m_b, z_b, u_b, t_b, i_b = _key_block(q, k_base, t_base, start, pos, win, sink, T, D, scale,
                                             stride_kt, stride_kd, stride_tt, BLOCK_N, BLOCK_D, UPCAST, IEEE)
        m, z, u, t, i = _merge(m, z, u, t, i, m_b, z_b, u_b, t_b, i_b)

    out = bh.to(tl.int64) * Q + offs_q
    if SPLIT:
        part = sp.to(tl.int64) * tl.num_programs(0) * Q + out
        tl.store(pm_ptr + part, m, mask=in_q)
        tl.store(pz_ptr + part, z, mask=in_q)
        tl.store(pu_ptr + part, u, mask=in_q)
        tl.store(pt_ptr + part, t, mask=in_q)
        tl.store(pi_ptr + part, i, mask=in_q)
    else:
        mass, ent = _finalize(z, u, t)
        tl.store(mass_ptr + out, mass, mask=in_q)
        tl.store(ent_ptr + out, ent, mask=in_q)
        tl.store(top_ptr + out, i.to(tl.int64), mask=in_q)


@triton.jit
def _combine_kernel(pm_ptr, pz_ptr, pu_ptr, pt_ptr, pi_ptr, mass_ptr, ent_ptr, top_ptr, N, n_splits,
                    BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    m = tl.full([BLOCK], _NEG, tl.float32)
    z = tl.zeros([BLOCK], tl.float32)
    u = tl.zeros([BLOCK], tl.float32)
    t = tl.zeros([BLOCK], tl.float32)
    i = tl.zeros([BLOCK], tl.int32)
    for sp in range(0, n_splits):  # in key order, so ties keep the earliest key as in one pass
        part = sp * N + offs
        m_s = tl.load(pm_ptr + part, mask=ok, other=_NEG)
        z_s = tl.load(pz_ptr + part, mask=ok, other=0.0)
        u_s = tl.load(pu_ptr + part, mask=ok, other=0.0)
        t_s = tl.load(pt_ptr + part, mask=ok, other=0.0)
        i_s = tl.load(pi_ptr + part, mask=ok, other=0)
        m, z, u, t, i = _merge(m, z, u, t, i, m_s, z_s, u_s, t_s, i_s)
    mass, ent = _finalize(z, u, t)
    tl.store(mass_ptr + offs, mass, mask=ok)
    tl.store(ent_ptr + offs, ent, mask=ok)
    tl.store(top_ptr + offs, i.to(tl.int64), mask=ok)


def _block_sizes(Q: int, D: int) -> tuple[int, int, int]:
    block_d = max(16, triton.next_power_of_2(D))  # tl.dot needs every dimension >= 16
    block_q = min(64, max(16, triton.next_power_of_2(Q)))
    block_n = 64
    if block_d > 128:  # keep the q tile and the K tile within registers / shared memory
        block_q, block_n = min(block_q, 32), 32
    return block_q, block_n, block_d


def _auto_splits(programs: int, key_blocks: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if programs >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, programs), key_blocks // _MIN_KEY_BLOCKS_PER_SPLIT))


def launch(x: AttnInputs, num_splits: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the kernels on checked inputs; returns (mass, entropy, top1), each [B, H, Q]."""
    q, k = x.q, x.k
    B, H, Q, D = q.shape
    T = k.shape[2]
    block_q, block_n, block_d = _block_sizes(Q, D)
    q_blocks = triton.cdiv(Q, block_q)
    key_blocks = triton.cdiv(x.pos_max + 1, block_n)
    splits = num_splits or _auto_splits(B * H * q_blocks, key_blocks, q.device)
    blocks_per_split = triton.cdiv(key_blocks, min(splits, key_blocks))
    splits = triton.cdiv(key_blocks, blocks_per_split)

    target = x.target.view(torch.uint8)  # same storage and strides as the bool mask, a dtype Triton loads
    window = x.window.to(torch.int32)
    mass = torch.empty(B, H, Q, device=q.device, dtype=torch.float32)
    entropy = torch.empty_like(mass)
    top1 = torch.empty(B, H, Q, device=q.device, dtype=torch.int64)
    if splits > 1:
        parts = [torch.empty(splits, B * H * Q, device=q.device, dtype=torch.float32) for _ in range(4)]
        parts.append(torch.empty(splits, B * H * Q, device=q.device, dtype=torch.int32))
    else:
        parts = [mass] * 5  # placeholders, never touched: SPLIT=False compiles the partial stores away

    _stats_kernel[(B * H, q_blocks, splits)](
        q, k, x.q_pos, target, window,
        mass, entropy, top1,
        *parts,
        H, Q, T, D, x.sink, x.scale, blocks_per_split * block_n,
        *q.stride(), *k.stride(), *x.q_pos.stride(), *target.stride(),
        BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=block_d, SPLIT=splits > 1,
        UPCAST=interpreting(), IEEE=q.dtype == torch.float32,
        num_warps=4,
    )
    if splits > 1:
        n = B * H * Q
        block = 256
        _combine_kernel[(triton.cdiv(n, block),)](*parts, mass, entropy, top1, n, splits, BLOCK=block)
    return mass, entropy, top1
