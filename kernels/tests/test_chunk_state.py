"""Tests of hybridlab_kernels.chunk_state: the Triton kernels (GPU, or the CPU interpreter) against the PyTorch
reference on random inputs, values and gradients, with and without the delta rule's w, value widths that are
not a power of two and that span several value blocks (partial sums), and the reference against a
step-by-step recurrence in float64.

Tolerances: float32 kernels against the float32 reference 1e-4 relative (full float32 products; TF32 on a GPU
gets 3e-3: its products keep 10 mantissa bits)."""

from __future__ import annotations

import pytest
import torch
from hybridlab_kernels.chunk_state import chunk_state, chunk_state_reference

torch.set_num_threads(1)


def make(N=3, n=5, C=16, Dk=16, Dv=24, with_w=True, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    u0 = rand(N, n, C, Dv)
    w = rand(N, n, C, Dk, scale=0.05) if with_w else None  # small w keeps the recurrence contractive
    k = rand(N, n, C, Dk, scale=0.2)
    d = torch.rand(N, n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    s0 = rand(N, Dk, Dv)
    return u0, w, k, d, s0


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def test_reference_is_the_recurrence():
    u0, w, k, d, s0 = make(dtype=torch.float64)
    S, u = chunk_state_reference(u0, w, k, d, s0)
    state = s0
    for i in range(u0.shape[1]):
        torch.testing.assert_close(S[:, i], state, rtol=1e-12, atol=1e-12)
        ui = u0[:, i] - torch.einsum("ncd,ndv->ncv", w[:, i], state)
        torch.testing.assert_close(u[:, i], ui, rtol=1e-12, atol=1e-12)
        state = d[:, i, None, None] * state + torch.einsum("ncd,ncv->ndv", k[:, i], ui)
    torch.testing.assert_close(S[:, -1], state, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_w", [True, False])
@pytest.mark.parametrize("Dv", [24, 80])  # 80: two value blocks of 64, the second one partly masked
def test_triton_matches_reference_values_and_gradients(triton_device, with_w, Dv):
    tf32 = triton_device == "cuda"
    tol = 3e-3 if tf32 else 1e-4
    ins = [None if x is None else x.requires_grad_() for x in make(Dv=Dv, with_w=with_w, device=triton_device)]
    leaves = [x for x in ins if x is not None]
    gen = torch.Generator().manual_seed(7)
    outs = {}
    for backend in ("reference", "triton"):
        S, u = chunk_state(*ins, backend=backend, tf32=tf32)
        dS = torch.randn(S.shape, generator=gen).to(S.device) if backend == "reference" else outs["dS"]
        dU = torch.randn(u.shape, generator=gen).to(u.device) if backend == "reference" else outs["dU"]
        grads = torch.autograd.grad((S * dS).sum() + (u * dU).sum(), leaves)
        outs.update({"dS": dS, "dU": dU, backend: (S.detach(), u.detach(), grads)})
    (S_r, u_r, g_r), (S_t, u_t, g_t) = outs["reference"], outs["triton"]
    assert torch.isfinite(S_t).all() and rel(S_t, S_r) < tol and rel(u_t, u_r) < tol
    names = ["u0", "w", "k", "d", "s0"] if with_w else ["u0", "k", "d", "s0"]
    for name, a, b in zip(names, g_t, g_r, strict=True):
        assert torch.isfinite(a).all() and rel(a, b) < tol, (name, rel(a, b))


def test_triton_handles_a_single_chunk_and_zero_decay(triton_device):
    u0, w, k, d, s0 = make(n=1, device=triton_device)
    d.zero_()
    S_t, u_t = chunk_state(u0, w, k, d, s0, backend="triton", tf32=False)
    S_r, u_r = chunk_state_reference(u0, w, k, d, s0)
    assert rel(S_t, S_r) < 1e-4 and rel(u_t, u_r) < 1e-4


def test_bad_inputs_name_what_is_wrong():
    u0, w, k, d, s0 = make()
    with pytest.raises(ValueError, match=r"d must be \[N, n\]"):
        chunk_state(u0, w, k, d[:, :2], s0)
    with pytest.raises(ValueError, match="backend"):
        chunk_state(u0, w, k, d, s0, backend="cuda")
    with pytest.raises(TypeError, match="one dtype"):
        chunk_state(u0.double(), w, k, d, s0)
    if torch.cuda.is_available():
        return
    with pytest.raises(RuntimeError, match="float32"):
        chunk_state(u0.double(), w.double(), k.double(), d.double(), s0.double(), backend="triton")
