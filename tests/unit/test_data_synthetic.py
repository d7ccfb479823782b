"""The synthetic corpus: exact key-token labels, the distance law, Zipf-like filler, the long/short mix."""

import numpy as np
import pytest
from scipy import stats

from hybridlab.data.synthetic import BOS, DEF, QRY, CorpusSpec, DistanceLaw, SyntheticCorpus


def generate(n: int = 64, context: int = 512, **kw) -> tuple[SyntheticCorpus, np.ndarray, np.ndarray]:
    corpus = SyntheticCorpus(CorpusSpec(**kw))
    tokens, dist = zip(*corpus.sequences("train", n, context), strict=True)
    return corpus, np.concatenate(tokens), np.concatenate(dist)


def test_every_label_points_at_its_source():
    corpus, tokens, dist = generate(tables_per_token=1 / 256, copies_per_token=1 / 128)
    v = corpus.vocab
    rows, ts = np.nonzero(dist)
    d = dist[rows, ts].astype(np.int64)
    assert len(ts) > 500
    assert (tokens[rows, ts] == tokens[rows, ts - d]).all()
    kinds = {"fact": 0, "copy": 0}
    for r, t, dd in zip(rows, ts, d, strict=True):
        src = t - dd
        if tokens[r, t - 2] == QRY and tokens[r, t - 1] in v.keys:  # a fact or table pair: QRY k v <- DEF k v
            assert tuple(tokens[r, src - 2:src]) == (DEF, tokens[r, t - 1]) and tokens[r, t] in v.values
            kinds["fact"] += 1
        else:  # a copied span: the previous token is copied from the previous source position too
            assert tokens[r, t - 1] == tokens[r, src - 1] and tokens[r, t] in v.words
            kinds["copy"] += 1
        assert BOS not in tokens[r, src:t]  # never across a document boundary
    assert min(kinds.values()) > 100
    # every QRY k v is labelled (no unlabelled recall)
    q_rows, q_ts = np.nonzero(tokens[:, :-2] == QRY)
    assert (dist[q_rows, q_ts + 2] > 0).all()


def discrete_pit(law: DistanceLaw, d: np.ndarray, low: int, high: int, rng) -> np.ndarray:
    """Randomised probability integral transform: exactly uniform when d follows the discrete law."""
    lo, hi = law.cdf(d - 1, low, high), law.cdf(d, low, high)
    return lo + rng.random(len(d)) * (hi - lo)


@pytest.mark.parametrize("kind,exponent", [("loguniform", 1.0), ("powerlaw", 1.6), ("uniform", 0.0)])
def test_fact_distances_follow_the_law(kind, exponent):
    context, min_d = 512, 4
    _, tokens, dist = generate(n=160, context=context, long_fraction=1.0, distance_dist=kind,
                               distance_exponent=exponent, min_distance=min_d, facts_per_token=1 / 32)
    d = dist[dist > 0].astype(np.int64)
    law = DistanceLaw(kind, exponent)
    u = discrete_pit(law, d, min_d, context - 4, np.random.default_rng(0))  # long doc: 511 tokens after BOS
    assert len(d) > 1500
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    other = DistanceLaw("uniform" if kind != "uniform" else "loguniform")  # the test has power
    assert stats.kstest(discrete_pit(other, d, min_d, context - 4, np.random.default_rng(0)), "uniform").pvalue < 1e-6


def test_copy_distances_follow_the_truncated_law():
    context = 512
    _, tokens, dist = generate(n=120, context=context, long_fraction=1.0, facts_per_token=0.0,
                               copies_per_token=1 / 48, copy_len=(6, 6))
    first = (dist > 0) & (np.roll(dist, 1, axis=1) == 0)  # one distance per span (its first labelled token)
    d = dist[first].astype(np.int64)
    u = discrete_pit(DistanceLaw("loguniform"), d, 6, context - 1 - 6, np.random.default_rng(1))
    assert len(d) > 500 and stats.kstest(u, "uniform").pvalue > 1e-3


def test_filler_is_zipf_like_and_local():
    corpus, tokens, _ = generate(n=32, context=1024, facts_per_token=0.0)
    words = tokens[tokens >= corpus.vocab.words.start]
    counts = np.sort(np.bincount(words))[::-1]
    counts = counts[counts > 0][:100]
    slope = np.polyfit(np.log(np.arange(1, len(counts) + 1)), np.log(counts), 1)[0]
    assert -2.5 < slope < -0.7
    # the successor of a word is one of `branching` candidates: local context predicts it
    a, b = tokens[:, :-1].ravel(), tokens[:, 1:].ravel()
    both = (a != BOS) & (b != BOS)
    successors = {}
    for x, y in zip(a[both], b[both], strict=True):
        successors.setdefault(x, set()).add(y)
    assert max(len(s) for s in successors.values()) <= corpus.spec.branching
    assert all(x not in s for x, s in successors.items())  # no self-loops


def _successor_sets(tokens: np.ndarray, order: int) -> dict:
    """What followed each context of `order` filler words (BOS-free windows only)."""
    seen: dict = {}
    for row in tokens:
        for t in range(order, len(row)):
            window = row[t - order:t + 1]
            if (window != BOS).all():
                seen.setdefault(tuple(window[:-1]), set()).add(int(window[-1]))
    return seen


def test_second_order_filler_needs_the_previous_word():
    corpus, tokens, _ = generate(n=64, context=512, facts_per_token=0.0, markov_order=2)
    k = corpus.spec.branching
    pairs, singles = _successor_sets(tokens, 2), _successor_sets(tokens, 1)
    assert max(len(s) for s in pairs.values()) <= k  # (previous, current) fixes the successor set
    assert all(ctx[-1] not in s for ctx, s in pairs.items())  # never the word itself
    # the current word alone does not: its successors are the union over previous words (order 1 gives <= k)
    assert np.mean([len(s) > k for s in singles.values() if len(s) > 0]) > 0.5
    assert max(len(s) for s in _successor_sets(generate(n=16, context=512, facts_per_token=0.0)[1], 1).values()) <= k
    # the word frequencies stay Zipf-like
    words = tokens[tokens >= corpus.vocab.words.start]
    counts = np.sort(np.bincount(words))[::-1][:100]
    assert -2.5 < np.polyfit(np.log(np.arange(1, 101)), np.log(counts), 1)[0] < -0.5


def test_markov_order_must_be_one_or_two():
    with pytest.raises(ValueError, match=r"data\.markov_order"):
        SyntheticCorpus(CorpusSpec(markov_order=3))


def test_long_short_mix_is_one_to_one():
    context = 256
    _, tokens, _ = generate(n=512, context=context)
    n_docs = (tokens == BOS).sum(axis=1)
    long = n_docs == 1
    assert 0.44 < long.mean() < 0.56
    assert n_docs[~long].min() >= 4  # short documents are about context / 8


def test_same_seed_same_data_and_other_seed_differs():
    a = generate(n=8, context=128, copies_per_token=1 / 64)[1:]
    b = generate(n=8, context=128, copies_per_token=1 / 64)[1:]
    c = generate(n=8, context=128, copies_per_token=1 / 64, corpus_seed=7)[1:]
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert not (a[0] == c[0]).all()


@pytest.mark.parametrize("kw,key", [({"min_distance": 2}, "data.min_distance"),
                                    ({"distance_dist": "cauchy"}, "data.distance_dist"),
                                    ({"copy_len": (5, 2)}, "data.copy_len"),
                                    ({"branch_probs": (0.5, 0.4, 0.2, 0.1)}, "data.branch_probs")])
def test_bad_spec_names_the_key(kw, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        SyntheticCorpus(CorpusSpec(**kw))


def test_parallel_generation_equals_one_process():
    """Chunks are independent random streams: any number of worker processes gives the same sequences."""
    import numpy as np

    from hybridlab.data.synthetic import CorpusSpec, SyntheticCorpus

    corpus = SyntheticCorpus(CorpusSpec(facts_per_token=1 / 16, n_keys=128))
    one = list(corpus.sequences("train", 600, 128, workers=1))
    two = list(corpus.sequences("train", 600, 128, workers=2))
    assert len(one) == len(two) == 3
    for (t1, d1), (t2, d2) in zip(one, two, strict=True):
        assert np.array_equal(t1, t2) and np.array_equal(d1, d2)
