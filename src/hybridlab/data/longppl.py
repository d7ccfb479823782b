"""LongPPL key-token selection on real text with a reference causal LM (Fang et al., "What is Wrong with
Perplexity for Long-context Language Modeling?").

A token x_t is a key token when the reference model predicts it much better with the long context than with only
the last `short_window` tokens, and predicts it well with the long context:
    log p(x_t | x_<t) - log p(x_t | x_{t-w..t-1}) > gain_threshold   and   log p(x_t | x_<t) > logprob_floor
(the paper's defaults: gain 2, floor -2). On the synthetic corpus key tokens are known exactly (`dist`) and
no reference model is needed.

The reference is any callable `logprobs(tokens [B, T] int64, window: int | None) -> [B, T] float`, entry t being
log p(x_t | the last `window` tokens before t, or all of them for None); entry 0 is ignored. `CausalLMScorer`
makes one from any causal LM module (`model(ids)` returning logits or an object with `.logits`), and
`load_reference` loads a Hugging Face model from a local path (transformers is imported only then).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

LogProbFn = Callable[[torch.Tensor, int | None], torch.Tensor]


def key_token_mask(logprobs: LogProbFn, tokens, short_window: int, gain_threshold: float = 2.0,
                   logprob_floor: float | None = -2.0, batch: int = 4) -> np.ndarray:
    """Bool [N, T]: which tokens are LongPPL key tokens (position 0 and the first `short_window` positions,
    whose short and long contexts are the same, never are)."""
    tokens = np.asarray(tokens)
    out = np.zeros(tokens.shape, dtype=bool)
    for i in range(0, len(tokens), batch):
        x = torch.from_numpy(np.asarray(tokens[i:i + batch], dtype=np.int64))
        with torch.no_grad():
            long = logprobs(x, None).float()
            short = logprobs(x, short_window).float()
        key = (long - short) > gain_threshold
        if logprob_floor is not None:
            key &= long > logprob_floor
        key[:, :short_window + 1] = False
        out[i:i + batch] = key.numpy()
    return out


class CausalLMScorer:
    """Per-token log-probabilities from a causal LM, with the context optionally limited to the last `window`
    tokens. Windowed scores are computed in blocks of `block` positions that share one forward pass over the
    `window` tokens before the block, so position t sees between `window` and `window + block - 1` tokens
    (block=1 is exact; larger blocks trade exactness for T / block passes instead of T)."""

    def __init__(self, model: Callable, block: int | None = None, device: str | torch.device = "cpu"):
        self.model, self.block, self.device = model, block, torch.device(device)

    def _logp(self, ids: torch.Tensor) -> torch.Tensor:
        """log p of ids[:, 1:] given their prefixes within ids: [B, len - 1]."""
        out = self.model(ids.to(self.device))
        logits = out.logits if hasattr(out, "logits") else out
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return lp.gather(-1, ids[:, 1:, None].to(self.device))[..., 0].cpu()

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, window: int | None) -> torch.Tensor:
        b, t = tokens.shape
        out = torch.zeros(b, t)
        if window is None or window >= t - 1:
            out[:, 1:] = self._logp(tokens)
            return out
        block = self.block or max(1, window // 8)
        out[:, 1:window + 1] = self._logp(tokens[:, :window + 1])
        for s in range(window + 1, t, block):
            e = min(s + block, t)
            out[:, s:e] = self._logp(tokens[:, s - window:e])[:, window - 1:]
        return out


def load_reference(path: str | Path, device: str = "cpu", block: int | None = None) -> CausalLMScorer:
    """A Hugging Face causal LM from a local folder (`AutoModelForCausalLM.from_pretrained`), in eval mode."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ImportError("a LongPPL reference model needs `transformers`: pip install transformers") from None
    path = Path(path)
    if not path.is_dir():
        from hybridlab.config import ConfigError

        raise ConfigError("data.longppl.reference", str(path), "a local folder holding a causal LM")
    model = AutoModelForCausalLM.from_pretrained(str(path)).to(device).eval()
    return CausalLMScorer(model, block=block, device=device)
