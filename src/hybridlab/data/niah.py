"""Needle-in-a-haystack eval sets, reproducible from (corpus, length, seed).

A sample is `BOS filler... DEF key value filler... QRY key`: the model must predict `value` at the last
position. The haystack is the corpus's own Markov filler (RULER's niah_single with a "text" haystack) or one
repeated filler sentence (`haystack="repeat"`). The needle's value position is recorded for the analyses: the
retrieval score is the attention mass that the query position (the final `key`) puts on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybridlab.data.synthetic import BOS, DEF, QRY, SPLITS, SyntheticCorpus


@dataclass
class NiahSet:
    tokens: np.ndarray  # [n, length]
    needle_pos: np.ndarray  # [n] position of the needle's value token
    answer: np.ndarray  # [n] the value token to predict after the final key
    depth: np.ndarray  # [n] needle depth as a fraction of the length

    def to_npz(self) -> dict[str, np.ndarray]:
        return {"tokens": self.tokens, "needle_pos": self.needle_pos, "answer": self.answer, "depth": self.depth}


def make_niah(corpus: SyntheticCorpus, length: int, n_samples: int, depths: list[float], seed: int,
              haystack: str = "text") -> NiahSet:
    if length < 8:
        raise ValueError(f"NIAH length must be >= 8, got {length}")
    rng = np.random.default_rng([corpus.spec.corpus_seed, SPLITS["niah"], length, seed])
    if haystack == "text":
        tokens = corpus.filler.sample(rng, n_samples, length)
    elif haystack == "repeat":
        sentence = corpus.filler.sample(rng, 1, 12)[0]
        tokens = np.tile(sentence, (n_samples, length // len(sentence) + 1))[:, :length].copy()
    else:
        raise ValueError(f"haystack: got {haystack!r}; allowed: text, repeat")
    vocab = corpus.vocab
    depth = np.array([depths[i % len(depths)] for i in range(n_samples)], dtype=np.float64)
    keys = rng.integers(vocab.n_keys, size=n_samples) + vocab.keys.start
    answers = rng.integers(vocab.n_values, size=n_samples) + vocab.values.start
    usable = length - 6  # room for BOS, the needle triple and the final QRY key
    needle_start = 1 + np.round(depth * (usable - 1)).astype(np.int64)
    tokens[:, 0] = BOS
    for i in range(n_samples):
        p = needle_start[i]
        tokens[i, p:p + 3] = (DEF, keys[i], answers[i])
        tokens[i, -2:] = (QRY, keys[i])
    return NiahSet(tokens.astype(np.int64), needle_start + 2, answers.astype(np.int64), depth)


def load_niah(folder, length: int, verify: bool = True) -> NiahSet:
    """The NIAH set of one length from a prepared data folder, verified against its manifest."""
    from pathlib import Path

    from hybridlab.data.shards import load_array, read_manifest

    folder = Path(folder)
    entries = read_manifest(folder)["niah"].get(str(length))
    if entries is None:
        raise KeyError(f"{folder}: no NIAH set of length {length}")
    arrays = {k: np.asarray(load_array(folder, e, verify)) for k, e in entries.items()}
    return NiahSet(**arrays)
