"""Any Hugging Face causal LM where the evaluation and the analyses take a HybridLM: what they need of a model,
provided for a `transformers` model loaded from a local folder.

`load_hf(path)` loads a folder with `AutoModelForCausalLM.from_pretrained(local_files_only=True,
trust_remote_code=True)`. A folder exported by `hybridlab export-hf` holds a HybridLabForCausalLM: its HybridLM is
returned as it is, so every analysis runs the project's own code on it. Any other model is wrapped in
`HFCausalLM`, which offers HybridLM's interface:
  forward(idx, receptive=, pos_offset=, cache=, capture=, return_hidden=)
      logits [B, T, V]; `capture` {layer: {}} is filled with that attention layer's queries (post-RoPE, scaled
      so that q.k / sqrt(head_dim) is the model's score) and keys (post-RoPE, key-value heads repeated to the
      query heads), with their positions; `return_hidden` also returns the model's hidden states
      (output_hidden_states: the embeddings, then each layer's output; the last is after the final norm, as in
      the authors' scripts); `cache` (from new_cache) decodes incrementally with the model's own KV cache
  embed            the input embedding module (the gradient influence hooks its output, as inputs_embeds does)
  blocks[i].spec   .is_attention and .role (full: no window; efficient: a sliding-window layer; layers that do
                   not call the attention interface, e.g. linear-attention mixers, are not attention)
  blocks[i].mixer  .windows per head, .sinks (0), .n_heads, .head_dim, .proj (o_proj: head masking hooks it),
                   .qkv.weight (q_proj, k_proj, v_proj stacked per query head, key-value heads repeated: the
                   trajectories slice Q and K per head as the authors' weight-distance script does)
The attention itself runs through a registered attention implementation (`hybridlab_capture`): scaled
dot-product attention under the model's causal mask, its sliding window and a receptive-field constraint
(hybridlab.models.Receptive: full heads limited to W keys, windowed heads to min(w, W)); inputs are never
padded. Layers outside the attention interface cannot be constrained: a constraint of the efficient layers on
such a model gives NaN logits (the receptive table then says NaN: not measurable on this architecture).
Models that soft-cap attention logits or use attention sinks of their own are not supported.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridlab.models import HybridLM, Receptive
from hybridlab.models.attention import allowed

log = logging.getLogger("hybridlab")
CAPTURE_IMPL = "hybridlab_capture"
_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("hybridlab_hf_call", default=None)


@dataclass
class _Call:
    """What one forward pass asks of the attention layers."""

    receptive: Receptive = field(default_factory=Receptive)
    capture: dict[int, dict] | None = None
    seen: dict[int, dict] | None = None  # discovery: layer -> what its attention looks like


def _attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
               scaling: float | None = None, dropout: float = 0.0, **kwargs) -> tuple[Tensor, None]:
    """The registered attention implementation (see the module docstring); returns [B, T, H, D] like sdpa's."""
    call = _CALL.get() or _Call()
    layer = int(module.layer_idx)
    b, h, t_q, d = query.shape
    if key.shape[1] != h:  # grouped-query attention: each key-value head serves h / h_kv query heads
        key = key.repeat_interleave(h // key.shape[1], dim=1)
        value = value.repeat_interleave(h // value.shape[1], dim=1)
    t_k = key.shape[2]
    scale = d ** -0.5 if scaling is None else float(scaling)
    own = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    if call.seen is not None:
        call.seen[layer] = {"module": module, "n_heads": h, "head_dim": d, "window": own}
    limit = call.receptive.full if own is None else call.receptive.efficient
    window = own if limit is None else (limit if own is None else min(int(own), int(limit)))
    k_pos = torch.arange(t_k, device=query.device)
    q_pos = k_pos[t_k - t_q:]
    mask = allowed(q_pos, k_pos, torch.full((h,), 0 if window is None else int(window)), 0)
    if call.capture is not None and layer in call.capture:
        call.capture[layer].update(q=(query * (scale * math.sqrt(d))).detach(), k=key.detach(), q_pos=q_pos,
                                   k_pos=k_pos)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[None], scale=scale)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(CAPTURE_IMPL, _attention)


@dataclass(frozen=True)
class _Spec:
    kind: str
    role: str

    @property
    def is_attention(self) -> bool:
        return self.kind == "attn"


class _QKV:
    """q_proj, k_proj and v_proj as one [3 * H * D, d_model] weight, key-value heads repeated per query head."""

    def __init__(self, attn: nn.Module, n_heads: int, head_dim: int):
        self.attn, self.n_heads, self.head_dim = attn, n_heads, head_dim

    @property
    def weight(self) -> Tensor:
        parts = []
        for name in ("q_proj", "k_proj", "v_proj"):
            proj = getattr(self.attn, name, None)
            if proj is None:
                raise ValueError(f"{type(self.attn).__name__} has no {name}: its Q/K weights cannot be sliced per head")
            w = proj.weight.detach()
            heads = w.shape[0] // self.head_dim
            parts.append(w.view(heads, self.head_dim, -1).repeat_interleave(self.n_heads // heads, 0).flatten(0, 1))
        return torch.cat(parts)


class _Mixer:
    def __init__(self, seen: dict):
        attn = seen["module"]
        self.n_heads, self.head_dim, self.sinks = seen["n_heads"], seen["head_dim"], 0
        self.windows = (seen["window"],) * self.n_heads
        self.proj = getattr(attn, "o_proj", None)
        self.qkv = _QKV(attn, self.n_heads, self.head_dim)


@dataclass
class _Block:
    spec: _Spec
    mixer: _Mixer | None = None


@dataclass
class _Shape:
    vocab_size: int
    n_layers: int
    n_heads: int
    head_dim: int


class HFCausalLM(nn.Module):
    """A transformers causal LM behind HybridLM's interface (see the module docstring)."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        _register()
        self.hf = hf
        hf.config._attn_implementation = CAPTURE_IMPL
        self.embed = hf.get_input_embeddings()
        n_layers = int(getattr(hf.config, "num_hidden_layers", 0))
        seen: dict[int, dict] = {}
        with torch.no_grad(), self._call(_Call(seen=seen)):
            probe = self.hf(torch.zeros(1, 2, dtype=torch.long, device=self.embed.weight.device),
                            output_hidden_states=True, use_cache=False)
        n_layers = max(n_layers, len(probe.hidden_states) - 1, *(i + 1 for i in seen))
        self.blocks = [_Block(_Spec("attn", "full" if seen[i]["window"] is None else "efficient"), _Mixer(seen[i]))
                       if i in seen else _Block(_Spec("other", "efficient")) for i in range(n_layers)]
        heads = {s["n_heads"] for s in seen.values()} or {0}
        self.shape = _Shape(int(probe.logits.shape[-1]), n_layers, max(heads), max(s["head_dim"] for s in
                                                                                  seen.values()) if seen else 0)
        self.recurrent = any(not b.spec.is_attention for b in self.blocks)
        if not seen:
            log.warning("%s: no layer calls transformers' attention interface; the head analyses and the "
                        "receptive-field constraint see no attention layer", type(hf).__name__)

    @staticmethod
    @contextlib.contextmanager
    def _call(call: _Call):
        token = _CALL.set(call)
        try:
            yield
        finally:
            _CALL.reset(token)

    def new_cache(self) -> list[dict]:
        return [{}]

    def forward(self, idx: Tensor, *, receptive: Receptive | None = None, pos_offset: int = 0,
                cache: list[dict] | None = None, capture: dict[int, dict] | None = None,
                return_hidden: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        receptive = receptive or Receptive()
        kwargs = {"use_cache": cache is not None}
        if cache is not None:
            kwargs["past_key_values"] = cache[0].get("past")
            kwargs["position_ids"] = torch.arange(pos_offset, pos_offset + idx.shape[1], device=idx.device)[None]
        with self._call(_Call(receptive=receptive, capture=capture)):
            out = self.hf(idx, output_hidden_states=return_hidden, **kwargs)
        if cache is not None:
            cache[0]["past"] = out.past_key_values
        logits = out.logits
        if receptive.efficient is not None and self.recurrent:
            log.warning("%s: its non-attention layers cannot be constrained to a receptive field; NaN logits",
                        type(self.hf).__name__)
            logits = torch.full_like(logits, float("nan"))
        return (logits, list(out.hidden_states)) if return_hidden else logits


def hf_model_dirs(run_dir: str | Path) -> list[Path] | None:
    """The Hugging Face model folders a `--run` folder names, oldest first: the folder itself when it holds a
    config.json, else its subfolders holding one (ordered by the tokens they were trained on); None when it is
    a training run folder (ckpt/ or train_done.json) or holds no model."""
    run = Path(run_dir)
    if (run / "config.json").is_file():
        return [run]
    if (run / "ckpt").is_dir() or (run / "train_done.json").exists():
        return None
    subs = [p.parent for p in run.glob("*/config.json")]
    return sorted(subs, key=lambda p: (checkpoint_info(p, 0)["tokens"], p.name)) or None


def checkpoint_info(path: Path, index: int) -> dict[str, int]:
    """step and tokens of an HF checkpoint: from an exported folder's config, else the last number in the
    folder's name as both (e.g. tokens_100000000, checkpoint-2000), else its index in the run."""
    config = json.loads((Path(path) / "config.json").read_text())
    ckpt = config.get("checkpoint") or {}
    if "tokens" in ckpt:
        return {"step": int(ckpt.get("step", index)), "tokens": int(ckpt["tokens"])}
    numbers = re.findall(r"\d+", Path(path).name)
    n = int(numbers[-1]) if numbers else index
    return {"step": n, "tokens": n}


def load_hf(path: str | Path, device: torch.device, vocab_size: int | None = None) -> HybridLM | HFCausalLM:
    """A local Hugging Face causal LM on `device` in eval mode (see the module docstring); `vocab_size` (the
    data folder's) must fit the model's vocabulary."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ImportError("Hugging Face models need `transformers`: pip install 'hybridlab[hf]'") from None
    exported = json.loads((Path(path) / "config.json").read_text()).get("model_type") == "hybridlab"
    # an export keeps fp32 weights, as the project's checkpoints (autocast does the rest); others load in bf16 on GPU
    dtype = torch.bfloat16 if device.type == "cuda" and not exported else torch.float32
    hf = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, trust_remote_code=True, dtype=dtype)
    hf = hf.to(device).eval()
    inner = getattr(hf, "model", None)
    model = inner if isinstance(inner, HybridLM) else HFCausalLM(hf).eval()
    n_vocab = model.shape.vocab_size
    if vocab_size is not None and vocab_size > n_vocab:
        from hybridlab.config import ConfigError

        raise ConfigError("--run", str(path), f"a model whose vocabulary ({n_vocab}) holds the data folder's "
                          f"{vocab_size} token ids: prepare the data with this model's tokenizer "
                          "(data.tokenizer.path=<the model folder>)")
    return model
