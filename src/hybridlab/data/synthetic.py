"""The embedded synthetic corpus: a Markov "language" with facts stated once and recalled later.

Design (why the paper's findings can show at one-GPU scale):
- Local structure: filler words follow a sparse Markov chain (each word has `branching` successors with fixed
  probabilities, successors drawn with Zipf-like popularity), so short-range layers have a real language to
  model and short-context loss is meaningful.
- Long-range dependencies: a document states facts `DEF key value` and later asks `QRY key value`. The value
  after `QRY key` is predictable only by retrieving the definition, `distance` tokens back. Distances are drawn
  log-uniformly (heavy-tailed: most recalls are near, some are far), up to the document length.
- Ground truth: for every token the corpus records the distance to the token it copies (0 where the token
  needs no retrieval), so LongPPL is exact: key tokens are the recalled values whose source lies beyond d.
- Long and short documents: a sequence holds either one long document or several short ones (facts never
  cross a document boundary), mixed by `long_fraction` (0.5 is the paper's 1:1).
Everything is a deterministic function of (config, corpus_seed, split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, BOS, DEF, QRY, SEP = 0, 1, 2, 3, 4
N_SPECIAL = 5
SPLITS = {"train": 0, "val": 1, "niah": 2, "probe": 3}


@dataclass(frozen=True)
class Vocab:
    n_keys: int
    n_values: int
    n_words: int

    @property
    def keys(self) -> range:
        return range(N_SPECIAL, N_SPECIAL + self.n_keys)

    @property
    def values(self) -> range:
        start = N_SPECIAL + self.n_keys
        return range(start, start + self.n_values)

    @property
    def words(self) -> range:
        start = N_SPECIAL + self.n_keys + self.n_values
        return range(start, start + self.n_words)

    @property
    def size(self) -> int:
        return N_SPECIAL + self.n_keys + self.n_values + self.n_words


class MarkovFiller:
    """A sparse Markov chain over the filler words; the chain is fixed by the corpus seed."""

    def __init__(self, vocab: Vocab, branching: int, probs: list[float], seed: int):
        if len(probs) != branching or not np.isclose(sum(probs), 1.0):
            raise ValueError(f"branch_probs must have {branching} entries summing to 1, got {probs}")
        rng = np.random.default_rng([seed, 99])
        n = vocab.n_words
        popularity = 1.0 / np.arange(1, n + 1)
        popularity /= popularity.sum()
        self.succ = np.stack([rng.choice(n, size=branching, replace=False, p=popularity) for _ in range(n)])
        self.cum = np.cumsum(probs)
        self.start_p = popularity
        self.offset = vocab.words.start

    def sample(self, rng: np.random.Generator, n_seqs: int, length: int) -> np.ndarray:
        """[n_seqs, length] filler token ids, generated for all sequences at once."""
        out = np.empty((n_seqs, length), dtype=np.int64)
        cur = rng.choice(len(self.start_p), size=n_seqs, p=self.start_p)
        choices = np.searchsorted(self.cum, rng.random((n_seqs, length)), side="right")
        choices = np.minimum(choices, len(self.cum) - 1)
        for t in range(length):
            out[:, t] = cur
            cur = self.succ[cur, choices[:, t]]
        return out + self.offset


def sample_distance(rng: np.random.Generator, low: int, high: int, kind: str) -> int:
    """A recall distance in [low, high]: log-uniform (heavy-tailed, like natural text) or uniform."""
    if high <= low:
        return low
    if kind == "loguniform":
        return int(np.exp(rng.uniform(np.log(low), np.log(high + 1))))
    if kind == "uniform":
        return int(rng.integers(low, high + 1))
    raise ValueError(f"data.distance_dist: got {kind!r}; allowed: loguniform, uniform")


def place_facts(tokens: np.ndarray, dist: np.ndarray, start: int, end: int, n_facts: int, vocab: Vocab,
                rng: np.random.Generator, min_distance: int, kind: str) -> None:
    """Write `DEF k v ... QRY k v` pairs into tokens[start:end] in place and label each recalled value."""
    occupied = np.zeros(end - start, dtype=bool)
    keys = rng.permutation(vocab.n_keys)[: min(n_facts, vocab.n_keys)]
    length = end - start
    for key in keys:
        for _ in range(8):  # a few tries to find free slots; a crowded document just gets fewer facts
            d = sample_distance(rng, min_distance, length - 4, kind)
            q = int(rng.integers(d, length - 2)) if length - 2 > d else -1
            p = q - d
            if p < 0 or occupied[p:p + 3].any() or occupied[q:q + 3].any():
                continue
            value = vocab.values[int(rng.integers(vocab.n_values))]
            k = vocab.keys[int(key)]
            tokens[start + p:start + p + 3] = (DEF, k, value)
            tokens[start + q:start + q + 3] = (QRY, k, value)
            dist[start + q + 2] = d
            occupied[p:p + 3] = occupied[q:q + 3] = True
            break


@dataclass(frozen=True)
class CorpusSpec:
    """The knobs of the synthetic corpus (conf/data/synthetic.yaml documents each)."""

    n_words: int = 384
    branching: int = 4
    branch_probs: tuple[float, ...] = (0.55, 0.25, 0.12, 0.08)
    n_keys: int = 64
    n_values: int = 48
    facts_per_token: float = 1 / 64
    min_distance: int = 4
    distance_dist: str = "loguniform"
    short_doc_len: float = 0.125
    long_fraction: float = 0.5
    corpus_seed: int = 1234

    @classmethod
    def from_config(cls, data_cfg) -> CorpusSpec:
        fields = cls.__dataclass_fields__
        kw = {k: data_cfg[k] for k in fields if k in data_cfg}
        if "branch_probs" in kw:
            kw["branch_probs"] = tuple(float(p) for p in kw["branch_probs"])
        return cls(**kw)

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.n_keys, self.n_values, self.n_words)


class SyntheticCorpus:
    def __init__(self, spec: CorpusSpec):
        self.spec = spec
        self.vocab = spec.vocab
        self.filler = MarkovFiller(self.vocab, spec.branching, list(spec.branch_probs), spec.corpus_seed)

    def rng(self, split: str, chunk: int) -> np.random.Generator:
        return np.random.default_rng([self.spec.corpus_seed, SPLITS[split], chunk])

    def sequences(self, split: str, n_seqs: int, context: int, chunk_size: int = 256):
        """Yield (tokens, dist) chunks of shape [n, context]; deterministic per (split, chunk index)."""
        s = self.spec
        for c, first in enumerate(range(0, n_seqs, chunk_size)):
            n = min(chunk_size, n_seqs - first)
            rng = self.rng(split, c)
            tokens = self.filler.sample(rng, n, context)
            dist = np.zeros_like(tokens, dtype=np.int32)
            short_len = max(16, int(round(s.short_doc_len * context)))
            for i in range(n):
                long_doc = rng.random() < s.long_fraction
                doc_len = context if long_doc else short_len
                for start in range(0, context, doc_len):
                    end = min(start + doc_len, context)
                    tokens[i, start] = BOS
                    n_facts = int(rng.poisson(s.facts_per_token * (end - start)))
                    if end - start > 3 * s.min_distance:
                        place_facts(tokens[i], dist[i], start + 1, end, n_facts, self.vocab, rng,
                                    s.min_distance, s.distance_dist)
            yield tokens, dist
