"""LongPPL key-token selection: the rule on a known oracle, the windowed scorer against direct computation, and a
tiny reference model built in the test that needs long context for exactly the far copies."""

import math

import numpy as np
import pytest
import torch

from hybridlab.data.longppl import CausalLMScorer, key_token_mask

torch.set_num_threads(1)
V, W = 64, 8


def planted(far: list[int], near: list[int], t: int = 64, seed: int = 0) -> np.ndarray:
    """Distinct tokens, except position p in `far` copies p - 40 and p in `near` copies p - 3."""
    x = np.random.default_rng(seed).permutation(V)[:t].copy()
    for p in far:
        x[p] = x[p - 40]
    for p in near:
        x[p] = x[p - 3]
    return x


def oracle(p_seen: float):
    """log p(x_t | context) = log p_seen if x_t occurs in the context, else log 1e-3."""
    def logprobs(tokens: torch.Tensor, window: int | None) -> torch.Tensor:
        out = torch.zeros(tokens.shape)
        for b in range(tokens.shape[0]):
            for t in range(1, tokens.shape[1]):
                ctx = tokens[b, :t] if window is None else tokens[b, max(0, t - window):t]
                out[b, t] = math.log(p_seen if (ctx == tokens[b, t]).any() else 1e-3)
        return out
    return logprobs


def test_rule_selects_far_copies_only():
    far, near = [45, 50, 61], [44, 52, 58]
    x = planted(far, near)[None]
    mask = key_token_mask(oracle(0.9), x, W)
    assert sorted(np.flatnonzero(mask[0])) == far


def test_long_context_logprob_floor():
    far = [45, 50, 61]
    x = planted(far, [])[None]
    assert not key_token_mask(oracle(0.05), x, W, logprob_floor=-2.0).any()  # gain > 2 but log p(long) < -2
    assert sorted(np.flatnonzero(key_token_mask(oracle(0.05), x, W, logprob_floor=None)[0])) == far


class SeenModel(torch.nn.Module):
    """A tiny causal LM: the next token is likely one already seen in its input (a crude copier)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        seen = torch.nn.functional.one_hot(ids, V).cumsum(1).clamp(max=1).float()
        return 10.0 * seen + 0.01 * torch.arange(V, dtype=torch.float32)


class MeanModel(torch.nn.Module):
    """A tiny causal LM whose every prediction depends on its whole input (a causal running mean)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(V, 16, generator=g))
        self.out = torch.nn.Parameter(torch.randn(16, V, generator=g))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.emb[ids]
        mean = e.cumsum(1) / torch.arange(1, ids.shape[1] + 1)[None, :, None]
        return mean @ self.out


@pytest.mark.parametrize("block", [1, 5])
def test_windowed_scores_match_direct_computation(block):
    model = MeanModel()
    x = torch.randint(V, (2, 40), generator=torch.Generator().manual_seed(1))
    scorer = CausalLMScorer(model, block=block)
    full, short = scorer(x, None), scorer(x, W)

    def direct(t: int, start: int) -> torch.Tensor:
        lp = torch.log_softmax(model(x[:, start:t]), -1)[:, -1]
        return lp.gather(-1, x[:, t:t + 1])[:, 0]

    for t in range(1, 40):
        assert torch.allclose(full[:, t], direct(t, 0), atol=1e-5)
        # positions of one block share the context start of the block's first position
        first = t if t <= W else W + 1 + (t - W - 1) // block * block
        assert torch.allclose(short[:, t], direct(t, max(0, first - W)), atol=1e-5)


def test_a_tiny_reference_model_marks_the_far_copies():
    far, near = [45, 50, 61], [44, 52, 58]
    x = planted(far, near)[None]
    mask = key_token_mask(CausalLMScorer(SeenModel(), block=1), x, 16, logprob_floor=None)
    assert sorted(np.flatnonzero(mask[0])) == far


@pytest.mark.slow
def test_load_reference_from_a_local_transformers_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    from hybridlab.data.longppl import load_reference

    config = transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "ref")
    scorer = load_reference(tmp_path / "ref", block=1)
    x = torch.randint(V, (1, 24), generator=torch.Generator().manual_seed(2))
    short = scorer(x, W)
    with torch.no_grad():
        logits = scorer.model(x[:, 20 - W:21]).logits
    assert torch.allclose(short[0, 20], torch.log_softmax(logits[0, -2], -1)[x[0, 20]], atol=1e-5)
    assert key_token_mask(scorer, x.numpy(), W).shape == (1, 24)


def test_log_longppl_comes_from_the_longppl_split_when_the_data_has_one(tmp_path):
    """The paper data keep C4 for the short-context loss and GovReport for LongPPL: with a `longppl` split (and
    its key-token mask) in the manifest, log_longppl is the mean loss over that split's key tokens."""
    import numpy as np
    import torch

    from hybridlab.config import load_config
    from hybridlab.data.prepare import prepare
    from hybridlab.data.shards import MANIFEST, save_array
    from hybridlab.evals.evaluate import load_val, token_losses, val_losses
    from hybridlab.io import read_json, write_json
    from hybridlab.models import build_model

    cfg = load_config("smoke", "full", 0, ["data.n_train_seqs=8", "data.n_val_seqs=8", "eval.niah_samples=2",
                                           "eval.ruler_samples=2", "eval.probe_samples=0", "eval.val_batches=1",
                                           "eval.batch_size=4"])
    manifest = prepare(cfg, tmp_path)
    shard = dict(manifest["splits"]["val"][0])
    key = np.zeros(shard["tokens"]["shape"], dtype=bool)
    key[:, 100:140] = True
    shard["key"] = save_array(tmp_path / "longppl_key_000.npy", key)
    manifest["splits"]["longppl"] = [shard]
    write_json(tmp_path / MANIFEST, manifest)
    assert read_json(tmp_path / MANIFEST)["splits"]["longppl"]
    val = load_val(cfg, tmp_path)
    assert val.longppl_tokens is not None and val.key[:, 100:140].all() and not val.key[:, :100].any()
    torch.manual_seed(0)
    model = build_model(cfg, manifest["vocab_size"]).eval()
    _, metrics = val_losses(model, val, 4, torch.device("cpu"))
    lp = token_losses(model, val.longppl_tokens, 4, torch.device("cpu"))
    assert metrics["log_longppl"] == pytest.approx(lp[:, 99:139].mean().item(), rel=1e-6)
