"""Pure-PyTorch math of the recurrent mixers: scalar-gated linear attention and the gated delta rule.

Layout: q, k [B, H, T, Dk]; v [B, H, T, Dv]; log-decay g [B, H, T] (<= 0, one scalar per head and step);
write strength beta [B, H, T]; state [B, H, Dk, Dv]. Rows are vectors: o_t = scale * q_t S_t.

Each op has a step-by-step recurrent form (the definition) and a chunkwise-parallel form (what trains), which
agree to rounding. The chunked forms are batched over chunks except for the state passed from one chunk to the
next, which runs in hybridlab_kernels.chunk_state (one Triton kernel on CUDA, forward and backward; a PyTorch
loop elsewhere). All arithmetic is fp32 (fp64 inputs stay fp64); outputs come back in v's dtype, final
states in the compute dtype. The chunked forms also take `window`, the evaluation-only receptive-field limit:
output t then sees only tokens in (t - window, t].
"""

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK = 64


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _prepare(tensors: list[Tensor | None], initial_state: Tensor | None) -> tuple[list, Tensor]:
    dt = _compute_dtype(tensors[2])
    out = [None if t is None else t.to(dt) for t in tensors]
    B, H, _, Dk = out[0].shape
    Dv = out[2].shape[-1]
    state = out[0].new_zeros(B, H, Dk, Dv) if initial_state is None else initial_state.to(dt)
    return out, state


def _pad_time(x: Tensor, n: int) -> Tensor:
    """Right-pad dim 2 (time) with n zeros; zero k, v, q, g and beta leave the state untouched."""
    if n == 0:
        return x
    pad = [0, 0] * (x.dim() - 3) + [0, n]
    return F.pad(x, pad)


def _decay_matrix(gc: Tensor) -> Tensor:
    """exp(G_i - G_j) for j <= i, else 0, from within-block cumulative log-decays gc [..., C].

    The exponent is masked to -inf before exp, so the upper triangle never overflows."""
    C = gc.shape[-1]
    causal = torch.ones(C, C, dtype=torch.bool, device=gc.device).tril()
    diff = (gc[..., :, None] - gc[..., None, :]).masked_fill(~causal, float("-inf"))
    return diff.exp()


def _check_window(window: int | None, initial_state: Tensor | None) -> None:
    if window is None:
        return
    if window < 1:
        raise ValueError(f"window must be a positive int or None, got {window}")
    if initial_state is not None:
        raise ValueError("window restricts whole sequences at evaluation; it takes no initial_state")


# ---------------------------------------------------------------- scalar-gated linear attention (simple GLA)


def simple_gla_recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, initial_state: Tensor | None = None, *, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t. Returns (o [B,H,T,Dv], S_T [B,H,Dk,Dv])."""
    out_dtype = v.dtype
    (q, k, v, g), S = _prepare([q, k, v, g], initial_state)
    outs = []
    for t in range(q.shape[2]):
        S = g[:, :, t, None, None].exp() * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return (torch.stack(outs, dim=2) * scale).to(out_dtype), S


def simple_gla_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    chunk: int = CHUNK,
    initial_state: Tensor | None = None,
    *,
    window: int | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise-parallel form of `simple_gla_recurrent`.

    Within a chunk of C steps with cumulative log-decay G_i: o_i = q_i (exp(G_i) S_0 + sum_{j<=i}
    exp(G_i - G_j) k_j^T v_j) (masked quadratic), and the state passes on as S_C = exp(G_C) S_0 +
    sum_j exp(G_C - G_j) k_j^T v_j. Every exponent is <= 0, so nothing overflows.

    With `window` W the output is exactly sum_{t-W < s <= t} exp(G_t - G_s) (q_t . k_s) v_s (a banded masked
    quadratic, O(T (W + C)) work), no initial state is allowed and the final state is None.
    """
    _check_window(window, initial_state)
    out_dtype = v.dtype
    if window is not None:
        return _simple_gla_windowed(q, k, v, g, chunk, window, scale).to(out_dtype), None
    (q, k, v, g), S = _prepare([q, k, v, g], initial_state)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    C = max(1, min(chunk, T))
    n = -(-T // C)
    q, k, v, g = (_pad_time(x, n * C - T) for x in (q, k, v, g))
    q, k = (x.view(B, H, n, C, Dk) for x in (q, k))
    v = v.view(B, H, n, C, Dv)
    gc = g.view(B, H, n, C).cumsum(-1)
    intra = (q @ k.transpose(-1, -2)) * _decay_matrix(gc)
    o = intra @ v
    q_dec = q * gc.exp()[..., None]
    k_dec = k * (gc[..., -1:] - gc).exp()[..., None]
    states = _pass_states(v, None, k_dec, gc[..., -1].exp(), S)  # [B, H, n + 1, Dk, Dv]
    o = o + q_dec @ states[:, :, :n]
    o = (o * scale).reshape(B, H, n * C, Dv)[:, :, :T]
    return o.to(out_dtype), states[:, :, n]


def _pass_states(u0: Tensor, w: Tensor | None, k: Tensor, decay: Tensor, S0: Tensor) -> Tensor | tuple:
    """The sequential part of a chunked form, S_{i+1} = d_i S_i + k_i^T u_i with u_i = u0_i - w_i S_i, by
    hybridlab_kernels.chunk_state (a Triton kernel on CUDA, a PyTorch loop elsewhere) over [B, H, n, ...]
    tensors. Returns the entry states [B, H, n + 1, Dk, Dv] (the last is the final state), and u with w."""
    from hybridlab_kernels.chunk_state import chunk_state

    B, H = u0.shape[:2]
    states, u = chunk_state(*(None if x is None else x.flatten(0, 1) for x in (u0, w, k, decay, S0)))
    states = states.unflatten(0, (B, H))
    return states if w is None else (states, u.unflatten(0, (B, H)))


def _simple_gla_windowed(q: Tensor, k: Tensor, v: Tensor, g: Tensor, chunk: int, window: int, scale: float):
    (q, k, v, g), _ = _prepare([q, k, v, g], None)
    T = q.shape[2]
    C = max(1, min(chunk, T))
    outs = []
    for s in range(0, T, C):
        e = min(s + C, T)
        lo = max(0, s - window + 1)
        gc = g[:, :, lo:e].cumsum(-1)  # local cumsum keeps exponents small over long sequences
        dec = _decay_matrix(gc)[:, :, s - lo:]  # query rows s..e-1, key columns lo..e-1
        qi = torch.arange(s, e, device=q.device)[:, None]
        ki = torch.arange(lo, e, device=q.device)[None, :]
        dec = dec * (qi - ki < window)
        scores = (q[:, :, s:e] @ k[:, :, lo:e].transpose(-1, -2)) * dec
        outs.append(scores @ v[:, :, lo:e])
    return torch.cat(outs, dim=2) * scale


# ---------------------------------------------------------------------------------------- gated delta rule


def gated_delta_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Gated delta rule, step by step, with S [Dk, Dv] and row vectors k_t [1, Dk], v_t [1, Dv]:

        S_t = (I - beta_t k_t^T k_t) exp(g_t) S_{t-1} + beta_t k_t^T v_t,   o_t = scale * q_t S_t.

    Equivalently: decay S by exp(g_t), then replace the value read at k_t by v_t with strength beta_t.
    In the column convention of the Gated DeltaNet paper (state S^T [Dv, Dk], o = S^T q) this reads
    S_t = exp(g_t) S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T. It is also fla's convention.
    """
    out_dtype = v.dtype
    (q, k, v, g, beta), S = _prepare([q, k, v, g, beta], initial_state)
    outs = []
    for t in range(q.shape[2]):
        kt, vt, bt = k[:, :, t], v[:, :, t], beta[:, :, t, None]
        S = g[:, :, t, None, None].exp() * S
        u = bt * (vt - torch.einsum("bhk,bhkv->bhv", kt, S))
        S = S + kt[..., :, None] * u[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return (torch.stack(outs, dim=2) * scale).to(out_dtype), S


def gated_delta_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    chunk: int = CHUNK,
    initial_state: Tensor | None = None,
    *,
    window: int | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise form of `gated_delta_recurrent` (WY / UT-transform representation).

    In a chunk with entry state S_0, decays gamma_i = exp(G_i) (G = within-chunk cumsum of g), the written
    rows u_i = beta_i (v_i - k_i exp(g_i) S_{i-1}) satisfy S_i = gamma_i S_0 + sum_{j<=i} gamma_i/gamma_j
    k_j^T u_j, hence the unit lower-triangular system (I + M) U = diag(beta) V - diag(beta gamma) K S_0 with
    M_ij = beta_i gamma_i/gamma_j (k_i . k_j) for j < i. Solving once per chunk (independent of S_0) gives
    U = U0 - W S_0; then O = diag(gamma) Q S_0 + (Q K^T o D) U and S_C = gamma_C S_0 + (K gamma_C/gamma)^T U,
    where D_ij = gamma_i/gamma_j for j <= i. Only the cheap state passing is sequential over chunks.

    With `window` W, output t is q_t applied to the state built from zero over tokens (t-W, t] alone. This is
    exact: every query position restarts the recurrence W tokens back, the queries of a block of `chunk`
    positions run as a batch of independent length-W sequences. Cost O(T W Dk Dv); evaluation only. No initial
    state is allowed and the final state is None.
    """
    _check_window(window, initial_state)
    if window is not None:
        return _gated_delta_windowed(q, k, v, g, beta, chunk, window, scale), None
    out_dtype = v.dtype
    (q, k, v, g, beta), S = _prepare([q, k, v, g, beta], initial_state)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    C = max(1, min(chunk, T))
    n = -(-T // C)
    q, k, v, g, beta = (_pad_time(x, n * C - T) for x in (q, k, v, g, beta))
    q, k = (x.view(B, H, n, C, Dk) for x in (q, k))
    v = v.view(B, H, n, C, Dv)
    beta = beta.view(B, H, n, C, 1)
    gc = g.view(B, H, n, C).cumsum(-1)
    decay = _decay_matrix(gc)
    gamma = gc.exp()[..., None]
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    lower = (beta * (k @ k.transpose(-1, -2)) * decay).tril(-1) + eye
    rhs = torch.cat([beta * gamma * k, beta * v], dim=-1)
    w, u0 = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True).split([Dk, Dv], -1)
    qk = (q @ k.transpose(-1, -2)) * decay
    q_dec = q * gamma
    k_dec = k * (gc[..., -1:] - gc).exp()[..., None]
    states, u = _pass_states(u0, w, k_dec, gc[..., -1].exp(), S)
    o = q_dec @ states[:, :, :n] + qk @ u
    o = (o * scale).reshape(B, H, n * C, Dv)[:, :, :T]
    return o.to(out_dtype), states[:, :, n]


def _gated_delta_windowed(q, k, v, g, beta, chunk: int, window: int, scale: float) -> Tensor:
    B, H, T, Dk = q.shape
    W = min(window, T)
    # Left-pad by W-1 steps of nothing (k = v = 0, g = 0), so every query has a full length-W history.
    k, v, g, beta = (F.pad(x, [0, 0] * (x.dim() - 3) + [W - 1, 0]) for x in (k, v, g, beta))
    outs = []
    for s in range(0, T, chunk):
        e = min(s + chunk, T)
        # Query t (padded index t + W - 1) sees padded positions t .. t + W - 1.
        seqs = [x[:, :, s:e + W - 1].unfold(2, W, 1) for x in (k, v, g, beta)]  # [B, H, n_q, ..., W]
        kb, vb = (x.movedim(-1, -2).flatten(0, 2).unsqueeze(1) for x in seqs[:2])  # [B*H*n_q, 1, W, D]
        gb, bb = (x.flatten(0, 2).unsqueeze(1) for x in seqs[2:])  # [B*H*n_q, 1, W]
        _, S = gated_delta_chunked(kb.new_zeros(kb.shape), kb, vb, gb, bb, chunk)
        qb = q[:, :, s:e].to(S.dtype).reshape(-1, 1, Dk)
        outs.append((qb @ S.squeeze(1)).view(B, H, e - s, -1))
    return (torch.cat(outs, dim=2) * scale).to(v.dtype)


# ---------------------------------------------------------------------------------- cost of the chunked forms


def simple_gla_flops(seq_len: int, d_k: int, d_v: int, chunk: int = CHUNK) -> int:
    """Forward FLOPs of `simple_gla_chunked` for one head and sequence (a multiply-add counts 2), C = chunk:
    2 T C (Dk + Dv) for the intra-chunk products Q K^T and (masked) A V over full C x C blocks, plus
    4 T Dk Dv for reading (Q S) and writing (K^T V) the state. Decays and masks are not counted."""
    T, C = seq_len, max(1, min(chunk, seq_len))
    return 2 * T * C * (d_k + d_v) + 4 * T * d_k * d_v


def gated_delta_flops(seq_len: int, d_k: int, d_v: int, chunk: int = CHUNK) -> int:
    """Forward FLOPs of `gated_delta_chunked` for one head and sequence (a multiply-add counts 2), C = chunk:
    T C (5 Dk + 3 Dv) inside chunks (K K^T 2TCDk, Q K^T 2TCDk, the triangular solve for [W | U0] TC(Dk+Dv),
    (Q K^T o D) U 2TCDv) plus 6 T Dk Dv against the state (W S, Q S, K^T U). Decays and masks not counted."""
    T, C = seq_len, max(1, min(chunk, seq_len))
    return T * C * (5 * d_k + 3 * d_v) + 6 * T * d_k * d_v
