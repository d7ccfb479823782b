"""Training-throughput benchmark for any (variant, size, context) on the current device.

Times optimizer steps (forward, backward, AdamW update) in bf16 autocast on CUDA (fp32 on CPU) after warm-up,
and reports tokens/s, MFU from the model's own per-module FLOP count (not 6N: SWA and recurrent mixers count
what they compute), peak memory and the attention / recurrent backends that ran. Speed only: the tests check
correctness elsewhere.
"""

from __future__ import annotations

import time

import torch

from hybridlab.config import load_config
from hybridlab.models import build_model
from hybridlab.models.attention import select_backend
from hybridlab.train.run import peak_flops

COLUMNS = ("variant", "size", "context", "batch", "compile", "overrides", "device", "attn_backend", "mixer_backend",
           "tokens_per_s", "step_ms", "mfu", "peak_mem_gb", "non_embedding_params", "status")


def backends(model) -> tuple[str, str]:
    attn, mixers = set(), set()
    for block in model.blocks:
        if block.spec.is_attention:
            attn.add(select_backend(block.mixer.backend, next(model.parameters()).device, block.mixer.windows,
                                     block.mixer.sinks))
        else:
            from hybridlab.models.recurrent import which_backend

            op = "gated_delta" if block.spec.kind == "gdn" else "simple_gla"
            mixers.add(f"{block.spec.kind}:{which_backend(op)}")
    return ",".join(sorted(attn)) or "-", ",".join(sorted(mixers)) or "-"


def benchmark(variant: str, size: str, context: int, batch: int = 1, steps: int = 5, warmup: int = 3,
              vocab: int = 32000, scale: str = "paper", compile: bool = False,
              overrides: tuple[str, ...] = ()) -> dict:
    """One row of COLUMNS; `overrides` are Hydra overrides applied after the context (e.g.
    model.mixer_backend=torch to skip fla's probe, model.d_ff=4416 to try another shape)."""
    cfg = load_config(scale, variant, 0, [f"scale.context={context}", *overrides], size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    row = {"variant": variant, "size": size, "context": context, "batch": batch, "compile": compile,
           "overrides": " ".join(overrides),
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    torch.manual_seed(0)
    model = build_model(cfg, vocab).to(device)
    row["non_embedding_params"] = model.non_embedding_params()
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randint(0, vocab, (batch, context + 1), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)

    def step():
        with amp:
            logits = step_model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / steps
    except torch.OutOfMemoryError:
        return {**row, "status": "out of memory"}
    flops = 3 * model.flops_per_sequence(context) * batch
    peak = peak_flops()
    row["attn_backend"], row["mixer_backend"] = backends(model)
    return {**row, "tokens_per_s": batch * context / dt, "step_ms": dt * 1e3,
            "mfu": flops / dt / peak if peak else float("nan"),
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
            "status": "ok"}
