"""The embedded synthetic corpus: a Markov "language" with facts, lookup tables and copied spans recalled later.

Design (why the paper's findings can show at one-GPU scale; docs/data.md says more):
- Local structure: filler words follow a sparse Markov chain (each word has `branching` successors with fixed
  probabilities; successors are drawn with Zipf-like popularity, exponent `zipf_exponent`), so sliding-window
  layers have a real language to learn and short-context loss is meaningful.
- Long-range dependencies, each labelled with the exact distance to its source:
  - facts: `DEF key value` stated once, later asked as `QRY key value`; the value after `QRY key` is
    predictable only by retrieving the definition;
  - lookup tables: `DEF k1 v1 DEF k2 v2 ...` stated together (associative recall among neighbours), each pair
    asked later on its own;
  - copied spans: a span of random words (a "name" or "quotation": not predictable locally) repeated later;
    every copied token after the first is predictable by copying (an induction head).
  Distances follow a heavy-tailed law (`DistanceLaw`: log-uniform, power-law or uniform) up to the document
  length, so most useful context is near and some is far, like natural text.
- Ground truth: `dist[t]` is the distance from token t to the token it repeats (0 where t needs no retrieval),
  so `tokens[t] == tokens[t - dist[t]]` and LongPPL is exact: key tokens are those with dist beyond a threshold.
- Long and short documents: a sequence holds one long document or several short ones (recalls never cross a
  document boundary), mixed by `long_fraction` (0.5 is the paper's 1:1 by tokens).
Everything is a deterministic function of (spec, corpus_seed, split, chunk index).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np

PAD, BOS, DEF, QRY, SEP = 0, 1, 2, 3, 4
N_SPECIAL = 5
SPECIAL_NAMES = ("<pad>", "<bos>", "<def>", "<qry>", "<sep>")  # real tokenizers reserve the same ids
SPLITS = {"train": 0, "val": 1, "niah": 2, "probe": 3, "eval": 4}
CHUNK = 256  # sequences per random stream; part of the corpus definition (changing it changes the data)
DISTANCE_LAWS = ("loguniform", "powerlaw", "uniform")


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


@dataclass(frozen=True)
class DistanceLaw:
    """Recall distances D = floor(X), X on [low, high + 1) with density proportional to x^-exponent.

    `loguniform` is exponent 1 (equal mass per octave), `uniform` exponent 0, `powerlaw` any exponent (> 1 puts
    more mass near). `cdf` is the exact law of the integer D, for tests and documentation.
    """

    kind: str = "loguniform"
    exponent: float = 1.0

    def __post_init__(self):
        if self.kind not in DISTANCE_LAWS:
            raise ValueError(f"data.distance_dist: got {self.kind!r}; allowed: {', '.join(DISTANCE_LAWS)}")

    @property
    def a(self) -> float:
        return {"loguniform": 1.0, "uniform": 0.0}.get(self.kind, float(self.exponent))

    def _g(self, x):
        x = np.asarray(x, dtype=np.float64)
        return np.log(x) if self.a == 1.0 else x ** (1.0 - self.a) / (1.0 - self.a)

    def _g_inv(self, y):
        return np.exp(y) if self.a == 1.0 else (y * (1.0 - self.a)) ** (1.0 / (1.0 - self.a))

    def cdf(self, k, low: int, high: int) -> np.ndarray:
        """P(D <= k) for integer k."""
        k = np.clip(np.asarray(k, dtype=np.float64), low - 1, high)
        g0, g1 = self._g(low), self._g(high + 1)
        return (self._g(k + 1) - g0) / (g1 - g0)

    def sample(self, rng: np.random.Generator, low: int, high: int, size: int | None = None):
        """Integer distances in [low, high]."""
        if high <= low:
            return low if size is None else np.full(size, low, dtype=np.int64)
        if size is None:  # the per-item path of corpus generation: plain floats are much faster than numpy
            a, u = self.a, rng.random()
            if a == 1.0:
                x = low * math.exp(u * math.log((high + 1) / low))
            else:
                b0, b1 = low ** (1.0 - a), (high + 1) ** (1.0 - a)
                x = (b0 + u * (b1 - b0)) ** (1.0 / (1.0 - a))
            return min(max(int(x), low), high)
        g0, g1 = self._g(low), self._g(high + 1)
        x = np.floor(self._g_inv(g0 + rng.random(size) * (g1 - g0)))
        d = np.clip(x, low, high).astype(np.int64)
        return int(d) if size is None else d


class MarkovFiller:
    """A sparse Markov chain over the filler words; the chain is fixed by the corpus seed.

    Order 1: each word has `branching` successors. Order 2: each (previous word, word) pair has its own
    `branching` successors (drawn with the same popularity, never the word itself), so the next word is predictable
    only with the previous word in view: a model must carry the previous token to every position (a previous-token
    head), the first half of the circuit that recalls a fact or a copied span."""

    def __init__(self, vocab: Vocab, branching: int, probs: list[float], seed: int, zipf_exponent: float = 1.0,
                 order: int = 1):
        if len(probs) != branching or not np.isclose(sum(probs), 1.0):
            raise ValueError(f"data.branch_probs: must have data.branching={branching} entries summing to 1, "
                             f"got {probs}")
        if order not in (1, 2):
            raise ValueError(f"config key 'data.markov_order': got {order!r}; allowed: 1 or 2")
        rng = np.random.default_rng([seed, 99])
        n = vocab.n_words
        if branching >= n:
            raise ValueError(f"config key 'data.branching': got {branching}; allowed: fewer than data.n_words={n}")
        popularity = np.arange(1, n + 1, dtype=np.float64) ** -float(zipf_exponent)
        popularity /= popularity.sum()
        self.order = order
        if order == 1:
            self.succ = np.stack([rng.choice(n, size=branching, replace=False, p=_without(popularity, i))
                                  for i in range(n)])  # no self-loops: a word never follows itself
        else:
            self.succ = np.stack([_popular_successors(rng, popularity, branching) for _ in range(n)])
        self.cum = np.cumsum(probs)
        self.start_p = popularity
        self.offset = vocab.words.start

    def sample(self, rng: np.random.Generator, n_seqs: int, length: int) -> np.ndarray:
        """[n_seqs, length] filler token ids, generated for all sequences at once."""
        out = np.empty((length, n_seqs), dtype=np.int64)
        cur = rng.choice(len(self.start_p), size=n_seqs, p=self.start_p)
        choices = np.searchsorted(self.cum, rng.random((length, n_seqs)), side="right")
        np.minimum(choices, len(self.cum) - 1, out=choices)
        if self.order == 1:
            for t in range(length):
                out[t] = cur
                cur = self.succ[cur, choices[t]]
        else:
            prev = rng.choice(len(self.start_p), size=n_seqs, p=self.start_p)
            for t in range(length):
                out[t] = cur
                prev, cur = cur, self.succ[prev, cur, choices[t]]
        return np.ascontiguousarray(out.T) + self.offset


def _popular_successors(rng: np.random.Generator, popularity: np.ndarray, k: int) -> np.ndarray:
    """[n, k]: for each word, k distinct successors other than itself, drawn without replacement with probability
    proportional to `popularity` (Gumbel top-k), the first drawn first."""
    n = len(popularity)
    g = np.log(popularity)[None, :] + rng.gumbel(size=(n, n))
    g[np.arange(n), np.arange(n)] = -np.inf
    top = np.argpartition(-g, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(g, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


@dataclass(frozen=True)
class CorpusSpec:
    """The knobs of the synthetic corpus (conf/data/synthetic.yaml and docs/data.md document each)."""

    n_words: int = 384
    branching: int = 4
    branch_probs: tuple[float, ...] = (0.55, 0.25, 0.12, 0.08)
    zipf_exponent: float = 1.0
    markov_order: int = 1
    n_keys: int = 64
    n_values: int = 48
    facts_per_token: float = 1 / 64
    tables_per_token: float = 0.0
    table_size: int = 4
    copies_per_token: float = 0.0
    copy_len: tuple[int, int] = (4, 12)
    min_distance: int = 4
    distance_dist: str = "loguniform"
    distance_exponent: float = 1.0
    short_doc_len: float = 0.125
    long_fraction: float = 0.5
    corpus_seed: int = 1234

    def __post_init__(self):
        def bad(key, allowed):
            return ValueError(f"config key 'data.{key}': got {getattr(self, key)!r}; allowed: {allowed}")

        if self.min_distance < 3:
            raise bad("min_distance", "an integer >= 3 (a fact's definition and query must not overlap)")
        if not 1 <= self.copy_len[0] <= self.copy_len[1]:
            raise bad("copy_len", "[min, max] with 1 <= min <= max")
        if self.table_size < 1:
            raise bad("table_size", "an integer >= 1")
        if not 0.0 <= self.long_fraction <= 1.0:
            raise bad("long_fraction", "a number in [0, 1]")
        for key in ("facts_per_token", "tables_per_token", "copies_per_token"):
            if getattr(self, key) < 0:
                raise bad(key, "a rate >= 0")
        DistanceLaw(self.distance_dist, self.distance_exponent)

    @classmethod
    def from_config(cls, data_cfg) -> CorpusSpec:
        names = {f.name for f in fields(cls)}
        kw = {k: data_cfg[k] for k in names if k in data_cfg}
        for key in ("branch_probs", "copy_len"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.n_keys, self.n_values, self.n_words)

    @property
    def law(self) -> DistanceLaw:
        return DistanceLaw(self.distance_dist, self.distance_exponent)


class _Document:
    """One document being written in place: tracks free positions and places recall items uniformly."""

    TRIES = 16

    def __init__(self, tokens: np.ndarray, rng: np.random.Generator):
        self.tokens, self.rng = tokens, rng
        self.occupied = bytearray(len(tokens))  # plain bytes: slicing small blocks is cheaper than numpy

    def place(self, blocks: list[tuple[int, int]]) -> int | None:
        """An anchor p, uniform over those where every (offset, width) block lies on free positions; or None.

        Random tries first (cheap; accepted tries are uniform over the valid anchors), then an exhaustive scan,
        so an item is dropped only when no anchor exists, and the distance law is not biased by crowding."""
        span = max(o + w for o, w in blocks)
        n_anchor = len(self.tokens) - span + 1
        if n_anchor <= 0:
            return None
        occ = self.occupied
        for p in self.rng.integers(n_anchor, size=self.TRIES).tolist():
            if not any(any(occ[p + o:p + o + w]) for o, w in blocks):
                return p
        cum = np.concatenate([[0], np.cumsum(np.frombuffer(occ, dtype=np.uint8))])
        ok = np.ones(n_anchor, dtype=bool)
        for o, w in blocks:
            ok &= (cum[o + w:o + w + n_anchor] - cum[o:o + n_anchor]) == 0
        valid = np.flatnonzero(ok)
        return int(valid[self.rng.integers(len(valid))]) if len(valid) else None

    def write(self, pos: int, values) -> None:
        self.tokens[pos:pos + len(values)] = values
        self.occupied[pos:pos + len(values)] = b"\x01" * len(values)


class SyntheticCorpus:
    def __init__(self, spec: CorpusSpec):
        self.spec = spec
        self.vocab = spec.vocab
        self.law = spec.law
        self.filler = MarkovFiller(self.vocab, spec.branching, list(spec.branch_probs), spec.corpus_seed,
                                   spec.zipf_exponent, spec.markov_order)

    def rng(self, split: str, chunk: int) -> np.random.Generator:
        return np.random.default_rng([self.spec.corpus_seed, SPLITS[split], chunk])

    def sequences(self, split: str, n_seqs: int, context: int,
                  workers: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (tokens int64, dist int32) chunks of shape [n, context]; deterministic per (split, chunk), so
        `workers` processes (each generating whole chunks, yielded in order) give the same data as one."""
        jobs = [(split, c, min(CHUNK, n_seqs - first), context) for c, first in enumerate(range(0, n_seqs, CHUNK))]
        if workers <= 1 or len(jobs) <= 1:
            yield from (self.chunk(*job) for job in jobs)
            return
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), initializer=_set_worker_corpus,
                                                      initargs=(self.spec,)) as pool:
            yield from pool.imap(_worker_chunk, jobs)

    def chunk(self, split: str, c: int, n: int, context: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk `c` of a split: n sequences from the chunk's own random stream."""
        s = self.spec
        rng = self.rng(split, c)
        tokens = self.filler.sample(rng, n, context)
        dist = np.zeros(tokens.shape, dtype=np.int32)
        short_len = max(16, int(round(s.short_doc_len * context)))
        for i in range(n):
            long_doc = rng.random() < s.long_fraction
            start = 0
            while start < context:
                # short documents vary in length (0.5x to 1.5x) so boundaries carry no positional cue
                doc_len = context if long_doc else int(rng.integers(short_len // 2, short_len * 3 // 2 + 1))
                end = min(start + doc_len, context)
                tokens[i, start] = BOS
                self.fill_document(tokens[i, start + 1:end], dist[i, start + 1:end], rng)
                start = end
        return tokens, dist

    def fill_document(self, tokens: np.ndarray, dist: np.ndarray, rng: np.random.Generator) -> None:
        """Write tables, copied spans and facts into one document's filler (views, edited in place)."""
        s, v, law = self.spec, self.vocab, self.law
        length = len(tokens)
        if length < 2 * s.min_distance:
            return
        doc = _Document(tokens, rng)
        keys = iter(rng.permutation(v.keys))  # keys are unique within a document, so every query is unambiguous

        def pair(key: int, value: int) -> tuple[int, int, int]:
            return DEF, key, value

        for _ in range(rng.poisson(s.tables_per_token * length)):
            pairs = [(k, int(rng.integers(v.values.start, v.values.stop))) for k in _take(keys, s.table_size)]
            if not pairs:
                break
            n = len(pairs)
            # pair j's query must come after the whole table: its distance is at least 3 (n - j)
            d = [law.sample(rng, max(s.min_distance, 3 * (n - j)), length - 3 - 3 * j) for j in range(n)]
            queries = sorted((3 * j + d[j], j) for j in range(n))
            if any(b[0] - a[0] < 3 for a, b in zip(queries, queries[1:], strict=False)):
                continue  # two queries would overlap; drop the table
            p = doc.place([(0, 3 * len(pairs))] + [(off, 3) for off, _ in queries])
            if p is None:
                continue
            doc.write(p, [t for k, val in pairs for t in pair(k, val)])
            for off, j in queries:
                doc.write(p + off, (QRY, *pairs[j]))
                dist[p + off + 2] = d[j]
        for _ in range(rng.poisson(s.copies_per_token * length)):
            m = int(rng.integers(s.copy_len[0], s.copy_len[1] + 1))
            d = law.sample(rng, max(s.min_distance, m), length - m)
            p = doc.place([(0, m), (d, m)])
            if p is None:
                continue
            span = rng.integers(v.words.start, v.words.stop, size=m)
            doc.write(p, span)
            doc.write(p + d, span)
            dist[p + d + 1:p + d + m] = d  # the first copied token is a surprise; the rest follow by copying
        for _ in range(rng.poisson(s.facts_per_token * length)):
            key = next(keys, None)
            if key is None:
                break
            value = int(rng.integers(v.values.start, v.values.stop))
            d = law.sample(rng, s.min_distance, length - 3)
            p = doc.place([(0, 3), (d, 3)])
            if p is None:
                continue
            doc.write(p, pair(int(key), value))
            doc.write(p + d, (QRY, int(key), value))
            dist[p + d + 2] = d


_WORKER: dict[str, SyntheticCorpus] = {}


def _set_worker_corpus(spec: CorpusSpec) -> None:
    _WORKER["corpus"] = SyntheticCorpus(spec)


def _worker_chunk(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    return _WORKER["corpus"].chunk(*job)


def _without(p: np.ndarray, i: int) -> np.ndarray:
    q = p.copy()
    q[i] = 0.0
    return q / q.sum()


def _take(it, n: int) -> list[int]:
    return [int(x) for _, x in zip(range(n), it, strict=False)]
