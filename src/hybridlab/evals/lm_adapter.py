"""lm-evaluation-harness model adapter for the project's checkpoints (registered as lm-eval model "hybridlab").

`HybridLabLM(model, tokenizer, max_length)` scores any lm-eval task with a HybridLM (or evals/hf_model.py's
HFCausalLM) and a transformers tokenizer:
  loglikelihood          sum of log p(continuation | context) over the continuation's tokens, and whether
                         greedy decoding gives exactly those tokens; context and continuation are encoded
                         together (lm-eval's TemplateLM), a BOS starts every input (training documents start with
                         one), inputs longer than max_length + 1 lose their oldest tokens
  loglikelihood_rolling  the log-likelihood of a whole text in disjoint windows of max_length tokens, each window
                         seeing up to max_length tokens of context (lm-eval's rolling windows, BOS as prefix)
  generate_until         greedy decoding with the model's own caches (evals/generation.py), stopped at the first
                         `until` string or the end-of-text token, at most max_gen_toks tokens; the prompt keeps
                         its last max_length - max_gen_toks tokens. Sampling is refused (greedy only).
Batches of equal-length inputs run together (the model takes no padding; right padding is harmless for scoring
since the model is causal). With `pretrained=FOLDER` (lm-eval's model_args) it loads a Hugging Face folder,
e.g. an `hybridlab export-hf` output.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from hybridlab.evals.generation import autocast, greedy_continue

log = logging.getLogger("hybridlab")


@register_model("hybridlab")
class HybridLabLM(TemplateLM):
    def __init__(self, model=None, tokenizer=None, max_length: int | None = None, batch_size: int | str = 8,
                 max_gen_toks: int = 256, device: str | torch.device | None = None, pretrained: str | None = None,
                 **kwargs):
        super().__init__()
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if pretrained is not None:
            from transformers import AutoTokenizer

            from hybridlab.evals.hf_model import load_hf

            model = load_hf(pretrained, device)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(pretrained, local_files_only=True)
            if max_length is None:
                import json

                max_length = json.loads((Path(pretrained) / "config.json").read_text()).get("max_position_embeddings")
        if model is None or tokenizer is None:
            raise ValueError("HybridLabLM: give a model and a tokenizer, or pretrained=<a Hugging Face folder>")
        if max_length is None:
            raise ValueError("HybridLabLM: give max_length (the context the model is evaluated at)")
        self.model, self.tokenizer, self._device = model.eval(), tokenizer, device
        self._max_length, self.batch_size = int(max_length), int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.bos = tokenizer.bos_token_id
        if self.bos is None:
            raise ValueError("HybridLabLM: the tokenizer has no BOS token (the models' documents start with one)")

    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        return self.bos if eos is None else eos

    @property
    def prefix_token_id(self) -> int:
        return self.bos

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        return ids if add_special_tokens is False else [self.bos, *ids]

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(sum log p, greedy) of each continuation after its context; the input is cut on the left to fit."""
        inputs = []
        for context, continuation in pairs:
            if not continuation:
                raise ValueError("loglikelihood: an empty continuation")
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            inputs.append((whole[:-1], min(len(continuation), len(whole) - 1)))
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i][0]))
        out: list[tuple[float, bool] | None] = [None] * len(inputs)
        for s in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="loglikelihood"):
            idx = order[s:s + self.batch_size]
            width = len(inputs[idx[0]][0])
            x = torch.zeros(len(idx), width, dtype=torch.long)
            for j, i in enumerate(idx):
                x[j, :len(inputs[i][0])] = torch.tensor(inputs[i][0])
            with autocast(self._device):
                logits = self.model(x.to(self._device)).float()
            for j, i in enumerate(idx):
                tokens, n = inputs[i]
                target = torch.tensor(list(pairs[i][1])[-n:], device=self._device)
                lp = F.log_softmax(logits[j, len(tokens) - n:len(tokens)], dim=-1)
                out[i] = (float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = self._score([(ctx, cont) for _, ctx, cont in requests], disable_tqdm)
        for (key, _, _), res in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text, add_special_tokens=False), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            total = sum(lp for lp, _ in self._score(windows, disable_tqdm=True))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[int]] = {}  # requests with the same stop strings and budget decode together
        prompts = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = dict(gen_kwargs or {})
            if kwargs.get("do_sample") or (kwargs.get("temperature") or 0) > 0 and kwargs.get("do_sample") is None:
                raise ValueError(f"generate_until: sampling ({kwargs}) is not supported; the adapter decodes greedily "
                                 "(set do_sample: false, temperature: 0)")
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            n_new = int(kwargs.get("max_gen_toks") or self.max_gen_toks)
            prompts.append(self.tok_encode(context)[-max(1, self.max_length - n_new):])
            groups.setdefault((until, n_new), []).append(i)
        out: list[str] = [""] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until") as bar:
            for (until, n_new), idx in groups.items():
                tail = max((len(u) for u in until), default=0) + 8  # tokens decoded when looking for a stop string

                def stop(tokens: list[int], until=until, tail=tail) -> bool:
                    return tokens[-1] == self.eot_token_id or any(u in self.tok_decode(tokens[-tail:]) for u in until)

                generated = greedy_continue(self.model, [prompts[i] for i in idx], n_new, self.batch_size,
                                            self._device, stop=stop)
                for i, tokens in zip(idx, generated, strict=True):
                    if tokens and tokens[-1] == self.eot_token_id:
                        tokens = tokens[:-1]
                    text = self.tok_decode(tokens)
                    for u in until:
                        text = text.split(u)[0]
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    out[i] = text
                bar.update(len(idx))
        return out
