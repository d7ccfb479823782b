"""Greedy generation with the model's own caches, and RULER's scoring of generated answers.

`greedy_continue` decodes `n_new` tokens after each prompt with one prefill pass and one cached step per token
(KV cache, rolling SWA cache, recurrent state: HybridLM.new_cache), batching prompts of equal length (the
model takes no padding). `string_match_all` is RULER's metric: the fraction of reference strings found, case
folded, anywhere in the prediction (for one reference, whether the whole answer string was generated).

`generated_scores` scores an eval set of real text this way: per sample, the prompt is tokens[:query_pos + 1],
the references are the answer's values (its decoded tokens split on whitespace: 7-digit numbers in the text
language), and `n_new` is the longest answer in tokens plus `extra` tokens of room for the model to say more.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from hybridlab.models import HybridLM


def autocast(device: torch.device):
    """bf16 autocast on CUDA, none on CPU: how every evaluation and analysis runs a model."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)


@torch.no_grad()
def greedy_continue(model: HybridLM, prompts: Sequence[Sequence[int]], n_new: int, batch: int,
                    device: torch.device, stop: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
    """The greedy continuation of each prompt, `n_new` tokens at most (in the order of `prompts`). Prompts of
    equal length share a batch; `stop(tokens_so_far)` ends one row early (its tokens up to there are kept)."""
    out: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError("greedy_continue: an empty prompt (give at least a BOS token)")
        by_length[len(p)].append(i)
    for length, rows in by_length.items():
        for s in range(0, len(rows), batch):
            idx = rows[s:s + batch]
            x = torch.tensor([list(prompts[i]) for i in idx], dtype=torch.long, device=device)
            cache = model.new_cache()
            done = torch.zeros(len(idx), dtype=torch.bool)
            with autocast(device):
                logits = model(x, cache=cache)
            for step in range(n_new):
                nxt = logits[:, -1].argmax(-1)
                for j, i in enumerate(idx):
                    if not done[j]:
                        out[i].append(int(nxt[j]))
                        done[j] = stop is not None and stop(out[i])
                if bool(done.all()) or step == n_new - 1:
                    break
                with autocast(device):
                    logits = model(nxt[:, None], cache=cache, pos_offset=length + step)
    return out


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER's string_match_all: the share of references that occur (case folded) in the prediction."""
    pred = prediction.lower()
    return sum(r.lower() in pred for r in references) / len(references)


def references(answer_ids: np.ndarray, decode: Callable[[list[int]], str]) -> list[str]:
    """An eval sample's reference strings: its answer tokens (-1 padded) decoded and split on whitespace."""
    return decode([int(t) for t in answer_ids if t >= 0]).split()


def generated_scores(model: HybridLM, tokens: np.ndarray, query_pos: np.ndarray, answers: np.ndarray,
                     decode: Callable[[list[int]], str], batch: int, device: torch.device,
                     extra: int = 16) -> np.ndarray:
    """Per sample, string_match_all of the greedy continuation of tokens[:query_pos + 1] against its answer's
    values (see the module docstring). float64 [n]."""
    n_new = int((np.asarray(answers) >= 0).sum(1).max()) + int(extra)
    prompts = [np.asarray(t[:int(q) + 1]).tolist() for t, q in zip(tokens, query_pos, strict=True)]
    generated = greedy_continue(model, prompts, n_new, batch, device)
    return np.array([string_match_all(decode(g), references(a, decode))
                     for g, a in zip(generated, answers, strict=True)])
