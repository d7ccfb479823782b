"""The single-needle NIAH set that evaluation and the retrieval-head analysis read (`manifest["niah"]`).

A sample is `BOS haystack... needle haystack... question`, exactly `length` tokens, ending at the question: the
model must predict the answer's first token at the last position. In the synthetic grammar the needle is
`DEF key value` and the question `QRY key`; with a real tokenizer they are RULER's English templates. The
haystack is text (Markov filler, held-out documents or a text file) or one repeated sentence
(`haystack="repeat"`). The position of the needle's first value token is recorded for the analyses: the
retrieval score is the attention mass that the query position puts on it (or on the whole value string,
`needle_len` tokens, the authors' definition; analysis/retrieval.py). `answer` is the value's first token,
`answers` all of its tokens (-1 padded: a 7-digit number is several BPE tokens), which generation-based scoring
needs. Built by evalsets.make_evalset on its own random stream, so it is reproducible from (language, length,
seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybridlab.data.evalsets import SyntheticLanguage, make_evalset
from hybridlab.data.synthetic import SyntheticCorpus


@dataclass
class NiahSet:
    tokens: np.ndarray  # [n, length]
    needle_pos: np.ndarray  # [n] position of the needle's (first) value token
    answer: np.ndarray  # [n] the (first) answer token to predict after the last position
    depth: np.ndarray  # [n] needle depth as a fraction of the haystack
    answers: np.ndarray | None = None  # [n, A] every answer token, -1 padded (None: answer alone)

    def __post_init__(self):
        if self.answers is None:  # a folder written before `answers` existed: single-token answers
            self.answers = np.asarray(self.answer)[:, None]

    @property
    def needle_len(self) -> np.ndarray:
        """[n] tokens of each needle's value (its answer string; 1 in the synthetic grammar)."""
        return (np.asarray(self.answers) >= 0).sum(1)

    def to_npz(self) -> dict[str, np.ndarray]:
        return {"tokens": self.tokens, "needle_pos": self.needle_pos, "answer": self.answer, "depth": self.depth,
                "answers": self.answers}


def make_niah(lang, length: int, n_samples: int, depth_range: tuple[float, float], seed: int,
              haystack: str = "text") -> NiahSet:
    """`lang`: an evalsets language, or a SyntheticCorpus (wrapped in its SyntheticLanguage)."""
    if haystack not in ("text", "repeat"):
        raise ValueError(f"haystack: got {haystack!r}; allowed: text, repeat")
    if isinstance(lang, SyntheticCorpus):
        lang = SyntheticLanguage(lang)
    task = "niah_single" if haystack == "text" else "niah_single_repeat"
    ds = make_evalset(lang, task, length, n_samples, seed, depth_range, include_answer=False, stream="niah")
    return NiahSet(ds.tokens.astype(np.int64), ds.needle_pos[:, 0].astype(np.int64),
                   ds.answer[:, 0].astype(np.int64), ds.depth, ds.answer.astype(np.int64))


def load_niah(folder: str | Path, length: int, verify: bool = True) -> NiahSet:
    """The NIAH set of one length from a prepared data folder, verified against its manifest (int64 arrays)."""
    from hybridlab.data.shards import load_array, read_manifest

    folder = Path(folder)
    entries = read_manifest(folder)["niah"].get(str(length))
    if entries is None:
        raise KeyError(f"{folder}: no NIAH set of length {length}")
    arrays = {k: np.asarray(load_array(folder, e, verify)) for k, e in entries.items()}
    for k in ("tokens", "needle_pos", "answer", "answers"):  # stored compactly; models and indexing want int64
        if k in arrays:
            arrays[k] = arrays[k].astype(np.int64)
    return NiahSet(**arrays)
