"""Greedy generation with the model's caches against a plain argmax loop, and RULER's whole-answer scoring of the
real-text NIAH and RULER-style sets (a model that only gets an answer's first BPE token scores 0)."""

import numpy as np
import pytest
import torch

from hybridlab.data.evalsets import TextLanguage, make_evalset
from hybridlab.data.niah import make_niah
from hybridlab.evals.evaluate import niah_accuracy
from hybridlab.evals.generation import generated_scores, greedy_continue, references, string_match_all
from hybridlab.models import build_model

VOCAB = 67
CPU = torch.device("cpu")


@pytest.mark.parametrize("variant", ["full", "swa128", "swa128_headwise", "gdn", "mamba2", "lightning"])
def test_cached_greedy_decoding_equals_a_plain_argmax_loop(variant, smoke_cfg):
    torch.manual_seed(0)
    model = build_model(smoke_cfg(variant), VOCAB).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(VOCAB, (n,), generator=g).tolist() for n in (30, 30, 30, 21)]
    got = greedy_continue(model, prompts, 12, batch=2, device=CPU)
    for p, out in zip(prompts, got, strict=True):
        seq = list(p)
        with torch.no_grad():
            for _ in range(12):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert out == seq[len(p):]
    stopped = greedy_continue(model, prompts[:1], 12, 1, CPU, stop=lambda toks: len(toks) == 3)
    assert stopped == [got[0][:3]]


def test_string_match_all_is_rulers_metric():
    assert string_match_all(" The number is 1234567.", ["1234567"]) == 1.0
    assert string_match_all("12345 67", ["1234567"]) == 0.0
    assert string_match_all("ABC and 42", ["abc", "42", "7"]) == pytest.approx(2 / 3)


class Scripted(torch.nn.Module):
    """A stand-in LM that, after each prompt, emits a scripted token sequence (looked up by the prompt), then
    token 0: it has the cache interface greedy_continue uses."""

    def __init__(self, scripts: dict[tuple, list[int]], vocab: int):
        super().__init__()
        self.scripts, self.vocab = scripts, vocab

    def new_cache(self):
        return [{}]

    def forward(self, x, cache=None, pos_offset=0):
        state = {} if cache is None else cache[0]  # no cache: a plain forward, the first scripted token
        if pos_offset == 0:
            state["rows"], state["step"] = [self.scripts[tuple(r.tolist())] for r in x], 0
        logits = torch.zeros(x.shape[0], x.shape[1], self.vocab)
        for b, script in enumerate(state["rows"]):
            logits[b, -1, script[state["step"]] if state["step"] < len(script) else 0] = 1.0
        state["step"] += 1
        return logits


@pytest.fixture(scope="module")
def text_lang():
    pytest.importorskip("tokenizers")
    from hybridlab.data.real import train_bpe

    rng = np.random.default_rng(0)
    words = "the keeper watched tides across a grey harbour while winter storms came north".split()
    text = " ".join(" ".join(rng.choice(words, 9)).capitalize() + "." for _ in range(300))
    tok = train_bpe([text, " ".join(str(n) for n in rng.integers(10**6, 10**7, 400))], 400)
    return tok, TextLanguage(tok, tok.encode(text), seed=0)


def test_the_whole_answer_string_is_scored_on_real_text(text_lang):
    tok, lang = text_lang
    ds = make_niah(lang, 200, 12, (0.2, 0.8), seed=0)
    valid = ds.answers >= 0
    assert (valid.sum(1) > 1).all()  # a 7-digit value is several tokens
    refs = [references(a, tok.decode) for a in ds.answers]
    assert all(len(r) == 1 and r[0].isdigit() and len(r[0]) == 7 for r in refs)
    last = np.full(len(ds.tokens), ds.tokens.shape[1] - 1)
    prompts = [tuple(t.tolist()) for t in ds.tokens]
    vocab = tok.vocab_size
    first_only = Scripted({p: [int(a[0])] * 8 for p, a in zip(prompts, ds.answers, strict=True)}, vocab)
    assert niah_accuracy(first_only, ds, 4, CPU) == 1.0  # the first-token check passes it ...
    assert generated_scores(first_only, ds.tokens, last, ds.answers, tok.decode, 4, CPU).sum() == 0  # ... RULER not
    chatty = {p: tok.encode(" The number is").tolist() + [int(x) for x in a if x >= 0] + tok.encode(". Yes").tolist()
              for p, a in zip(prompts, ds.answers, strict=True)}
    scores = generated_scores(Scripted(chatty, vocab), ds.tokens, last, ds.answers, tok.decode, 4, CPU)
    assert (scores == 1).all()
    short = generated_scores(Scripted(chatty, vocab), ds.tokens, last, ds.answers, tok.decode, 4, CPU, extra=0)
    assert (short == 0).all()  # the preamble used up the answer's length: room comes from `extra`


def test_multi_value_answers_score_the_share_of_values_found(text_lang):
    tok, lang = text_lang
    ds = make_evalset(lang, "niah_multivalue", 400, 4, seed=0)
    scripts = {}
    for t, q, a in zip(ds.tokens, ds.query_pos, ds.answer, strict=True):
        values = references(a, tok.decode)
        assert len(values) == 4
        scripts[tuple(t[:q + 1].tolist())] = tok.encode(" " + " ".join(values[:2])).tolist()
    scores = generated_scores(Scripted(scripts, tok.vocab_size), ds.tokens, ds.query_pos, ds.answer, tok.decode,
                              2, CPU)
    assert scores.tolist() == [0.5] * 4
