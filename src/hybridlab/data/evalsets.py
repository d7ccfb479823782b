"""Long-context eval sets in the style of RULER, plus the paper's probing set, reproducible from
(language, task, length, seed) alone.

A language says how needles, questions and haystacks are written in token space: `SyntheticLanguage` uses the
synthetic corpus's own grammar (`DEF key value` needles, `QRY key` questions, Markov-filler haystacks), and
`TextLanguage` writes RULER's English templates with a real tokenizer. Every task is built by one function
(`build_sample`): a BOS, the haystack with the needles inserted at their depths (nothing is overwritten), then
the question, then (for teacher-forced scoring) the answer tokens, exactly `length` tokens in all.

Haystacks of text (held-out documents, a user's `eval.haystack_file`, the repeated noise sentences) keep their
sentences whole: a window of the text starts at a sentence start and every needle goes between two sentences,
at the sentence boundary nearest its depth (between two words where a window holds no sentence end), never
inside a word. The Markov filler has no sentences (each token is a whole word), so its needles go exactly at
their depths. `haystack_text` reads and checks a user's file.

Tasks (`TASKS`):
  niah_single        one needle in a text haystack (Markov filler / held-out documents / a text file)
  niah_single_repeat one needle in a repeated-sentence haystack
  niah_multikey      several needles with distinct keys; one is asked
  niah_multivalue    one key stated with several values; the answer is every value in order of appearance
  niah_multiquery    several needles; each is asked in turn, answers in order
  vt                 variable tracking: `x1 = v, x2 = x1, ...`; the answer is the chain's final value v
  probe              the paper's probing set: one of 8 fixed candidate values hidden; label 0..7; no answer
                     tokens in the sequence (a probe reads the last position)

Stored arrays per (task, length) (`EvalSet`):
  tokens     [n, length]  the samples
  answer     [n, A]       answer token ids, -1 padded
  answer_pos [n, A]       where each answer token sits in `tokens` (its logits are at answer_pos - 1); -1
                          where the answer is not in the sequence (probe, and the `niah` contract set)
  needle_pos [n, K]       positions of the value tokens of the needles the answer comes from, -1 padded
  query_pos  [n]          the position whose next-token prediction is the first answer token
  label      [n]          probe class 0..7 (-1 for other tasks)
  depth      [n]          depth of the first needle as a fraction of the haystack
Score by teacher forcing (argmax at answer_pos - 1 equals answer) or by greedy generation from
tokens[:, :query_pos + 1].
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybridlab.data.synthetic import BOS, DEF, QRY, SPLITS, SyntheticCorpus

TASKS = ("niah_single", "niah_single_repeat", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt",
         "probe")
N_NEEDLES = 4  # needles of the multi-key/-value/-query tasks and hops of variable tracking (RULER's defaults)
N_CLASSES = 8  # the probing set's candidate values
ARRAYS = ("tokens", "answer", "answer_pos", "needle_pos", "query_pos", "label", "depth")


DEPTH_RANGE = (0.25, 0.75)  # needle depths, as fractions of the haystack (the authors' probing set)


def check_depth_range(depth_range) -> tuple[float, float]:
    """(lo, hi) with 0 <= lo <= hi <= 1, or ConfigError naming eval.niah_depth_range."""
    try:
        lo, hi = (float(x) for x in depth_range)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not 0 <= lo <= hi <= 1:
        from hybridlab.config import ConfigError

        raise ConfigError("eval.niah_depth_range", list(depth_range) if depth_range is not None else None,
                          "[lo, hi] with 0 <= lo <= hi <= 1 (fractions of the haystack)")
    return lo, hi
HAYSTACK_KEY = "eval.haystack_file"
# A token (or word) whose text ends like this ends a sentence: . ! ? (also CJK), optionally followed by closing
# quotes or brackets and whitespace, or a line break.
SENTENCE_END = re.compile(r"([.!?\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*\s*|\n\s*)$")


class TooShort(ValueError):
    """A task's needles and questions do not fit in the requested length."""


def haystack_path(value) -> Path:
    """`eval.haystack_file` as a path, `~` expanded (every reader and the workflow go through here)."""
    if not isinstance(value, str) or not value.strip():
        from hybridlab.config import ConfigError

        raise ConfigError(HAYSTACK_KEY, value, "null or the path of a UTF-8 text file")
    return Path(value).expanduser()


def haystack_text(value) -> str:
    """The text of a user's haystack file, checked: it exists, is a readable file (not a folder), is UTF-8 and
    holds some text. A ConfigError names the key, the value and what is wrong."""
    path = haystack_path(value)
    try:
        stat = path.stat()
    except OSError as e:
        stat, why = None, e.strerror or type(e).__name__
    if stat is None:
        return _bad_haystack(value, f"the path of an existing, readable UTF-8 text file ({why})")
    if path.is_dir():
        return _bad_haystack(value, "a UTF-8 text file, not a folder")
    return _checked_text(str(path), stat.st_mtime_ns, stat.st_size, str(value))


@functools.lru_cache(maxsize=4)
def _checked_text(path: str, mtime_ns: int, size: int, value: str) -> str:
    """Read and check once per file version (the workflow validates every run's config)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        return _bad_haystack(value, f"a readable UTF-8 text file ({e.strerror or type(e).__name__})")
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        return _bad_haystack(value, f"a UTF-8 text file (byte {e.start}, line {line}, is {raw[e.start:e.start + 1]!r}, "
                             "not UTF-8; convert it, e.g. with iconv -t utf-8)")
    if not text.strip():
        return _bad_haystack(value, "a text file with some text (it is empty or holds only whitespace)")
    return text


def _bad_haystack(value, allowed: str):
    from hybridlab.config import ConfigError

    raise ConfigError(HAYSTACK_KEY, value, allowed)


@dataclass
class EvalSet:
    tokens: np.ndarray
    answer: np.ndarray
    answer_pos: np.ndarray
    needle_pos: np.ndarray
    query_pos: np.ndarray
    label: np.ndarray
    depth: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ARRAYS}


class SyntheticLanguage:
    """Needles in the synthetic grammar: single-token keys and values."""

    def __init__(self, corpus: SyntheticCorpus, text_file: str | Path | None = None):
        self.corpus, self.vocab, self.bos = corpus, corpus.vocab, BOS
        self.seed = corpus.spec.corpus_seed
        self.file_tokens = self.file_ends = None
        if text_file:
            text = haystack_text(str(text_file))
            self.file_tokens = self.encode_text(text)
            self.file_ends = np.array([1 + bool(SENTENCE_END.search(w)) for w in text.split()], dtype=np.int8)

    def encode_text(self, text: str) -> np.ndarray:
        """Any text as filler words: each whitespace word maps to a word id by a stable hash."""
        words = self.vocab.words
        return np.array([words.start + zlib.crc32(w.encode()) % len(words) for w in text.split()], dtype=np.int64)

    def keys(self, rng: np.random.Generator, n: int) -> list[np.ndarray]:
        return [np.array([k]) for k in rng.choice(self.vocab.keys, size=n, replace=False)]

    def values(self, rng: np.random.Generator, n: int) -> list[np.ndarray]:
        return [np.array([v]) for v in rng.choice(self.vocab.values, size=n, replace=False)]

    def needle(self, key: np.ndarray, value: np.ndarray, kind: str) -> tuple[np.ndarray, int]:
        """Needle tokens and where its value starts within them."""
        return np.concatenate([[DEF], key, value]), 1 + len(key)

    def question(self, key: np.ndarray, kind: str) -> np.ndarray:
        return np.concatenate([[QRY], key])

    def answer(self, value: np.ndarray) -> np.ndarray:
        return value

    def haystack(self, rng: np.random.Generator, n: int, length: int, kind: str) -> Haystack:
        if kind == "repeat":
            return Haystack(_tile(self.corpus.filler.sample(rng, 1, 12)[0], n, length))
        if self.file_tokens is not None:
            return _windows(self.file_tokens, self.file_ends, rng, n, length)
        return Haystack(self.corpus.filler.sample(rng, n, length))


class TextLanguage:
    """RULER's English templates written with a real tokenizer; keys are pronounceable pseudo-words and values
    7-digit numbers. The text haystack is a token stream (held-out documents or a text file)."""

    NOISE = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "so", "du", "fa", "gi", "bo", "re", "xu")
    TEMPLATES = {  # kind: (needle before the value, needle after, question)
        "fact": (" One of the special magic numbers for {k} is:", ".",
                 " What is the special magic number for {k} mentioned in the provided text?"
                 " The special magic number for {k} mentioned in the provided text is:"),
        "all": (" One of the special magic numbers for {k} is:", ".",
                " What are all the special magic numbers for {k} mentioned in the provided text?"
                " The special magic numbers for {k} mentioned in the provided text are:"),
        "var": (" VAR {k} =", ".", " What is the value of VAR {k}? The value of VAR {k} is:"),
    }

    def __init__(self, tokenizer, haystack_tokens: np.ndarray, seed: int):
        if len(haystack_tokens) == 0:
            raise ValueError("TextLanguage: the text haystack is empty (no held-out documents and no text file)")
        self.tok, self.bos, self.seed = tokenizer, tokenizer.bos, seed
        self.stream = np.asarray(haystack_tokens, dtype=np.int64)
        self.noise = tokenizer.encode(self.NOISE)
        self._names: dict[tuple, str] = {}
        ids = np.unique(np.concatenate([self.stream, self.noise]))
        self._punct, self._space_after, self._space_before = (np.zeros(int(ids.max()) + 1, dtype=bool)
                                                              for _ in range(3))
        for i in ids.tolist():
            text = tokenizer.decode([i])
            self._punct[i] = bool(SENTENCE_END.search(text))
            self._space_after[i], self._space_before[i] = text[-1:].isspace(), text[:1].isspace()
        self.stream_ends = self._sentence_ends(self.stream)
        self.noise_ends = self._sentence_ends(np.tile(self.noise, 2))[:len(self.noise)]

    def _sentence_ends(self, ids: np.ndarray) -> np.ndarray:
        """Per token, the break after it (Haystack.ends): 1 after a word (whitespace follows, in the token or
        the next one), 2 after a sentence (sentence punctuation, then whitespace: "3.5" is no boundary)."""
        word = self._space_after[ids] | np.append(self._space_before[ids[1:]], True)
        return (word.astype(np.int8) + (word & self._punct[ids])).astype(np.int8)

    def _word(self, rng: np.random.Generator) -> str:
        return "".join(self.SYLLABLES[i] for i in rng.integers(len(self.SYLLABLES), size=3))

    def keys(self, rng: np.random.Generator, n: int) -> list[np.ndarray]:
        names: list[str] = []
        while len(names) < n:
            w = self._word(rng)
            if w not in names:
                names.append(w)
        return [self._remember(w) for w in names]

    def values(self, rng: np.random.Generator, n: int) -> list[np.ndarray]:
        nums = rng.choice(9_000_000, size=n, replace=False) + 1_000_000
        return [self._remember(str(v)) for v in nums]

    def _remember(self, text: str) -> np.ndarray:
        ids = self.tok.encode(" " + text)
        self._names[tuple(ids.tolist())] = text
        return ids

    def _text(self, ids: np.ndarray) -> str:
        return self._names[tuple(np.asarray(ids).tolist())]

    def needle(self, key: np.ndarray, value: np.ndarray, kind: str) -> tuple[np.ndarray, int]:
        before, after, _ = self.TEMPLATES[kind]
        head = self.tok.encode(before.format(k=self._text(key)))
        return np.concatenate([head, value, self.tok.encode(after)]), len(head)

    def question(self, key: np.ndarray, kind: str) -> np.ndarray:
        return self.tok.encode(self.TEMPLATES[kind][2].format(k=self._text(key)))

    def answer(self, value: np.ndarray) -> np.ndarray:
        return value

    def haystack(self, rng: np.random.Generator, n: int, length: int, kind: str) -> Haystack:
        if kind == "repeat":
            return Haystack(_tile(self.noise, n, length), _tile(self.noise_ends, n, length))
        return _windows(self.stream, self.stream_ends, rng, n, length)


@dataclass
class Haystack:
    """n haystacks of tokens [n, length]; `ends` [n, length] int8 says what ends after each token: 2 a sentence,
    1 a word, 0 nothing (inside a word). None: every token is a whole word and a needle may go anywhere."""

    tokens: np.ndarray
    ends: np.ndarray | None = None


def _tile(unit: np.ndarray, n: int, length: int) -> np.ndarray:
    return np.tile(unit, (n, length // len(unit) + 1))[:, :length].copy()


def _windows(stream: np.ndarray, ends: np.ndarray | None, rng: np.random.Generator, n: int, length: int) -> Haystack:
    """n windows of `length` tokens of a stream (cycled when it is shorter), each starting at a sentence start
    when the stream has sentences (`ends` == 2 marks their last tokens), else at a random offset."""
    if len(stream) < length + 1:
        reps = length // len(stream) + 2
        stream = np.tile(stream, reps)
        ends = None if ends is None else np.tile(ends, reps)
    last = len(stream) - length
    starts = None
    if ends is not None:
        sentence_starts = np.concatenate([[0], np.flatnonzero(ends[:-1] == 2) + 1])
        starts = sentence_starts[sentence_starts <= last]
    if starts is None or len(starts) == 0:
        starts = rng.integers(last + 1, size=n)
        return Haystack(np.stack([stream[s:s + length] for s in starts]),
                        None if ends is None else np.stack([ends[s:s + length] for s in starts]))
    picks = starts[rng.integers(len(starts), size=n)]
    return Haystack(np.stack([stream[s:s + length] for s in picks]), np.stack([ends[s:s + length] for s in picks]))


def sentence_cuts(cuts: list[int], ends: np.ndarray | None) -> list[int]:
    """Move each cut (an insertion point in a haystack: the needle goes before token `cut`) to the nearest
    sentence boundary (the start, or just after a token with ends == 2); to the nearest word boundary when the
    haystack holds no sentence end; unchanged without `ends` or any boundary. Cuts stay in order."""
    if ends is None or not ends.any():
        return cuts
    allowed = np.concatenate([[0], np.flatnonzero(ends == ends.max()) + 1])
    out = []
    for c in cuts:
        i = int(np.argmin(np.abs(allowed - c)))  # ties go to the earlier boundary
        out.append(max(int(allowed[i]), out[-1] if out else 0))
    return out


def build_sample(bos: int, haystack: np.ndarray, needles: list[tuple[np.ndarray, int, int]], depths: list[float],
                 tail: list[tuple[np.ndarray, bool]], length: int, ends: np.ndarray | None = None) -> dict:
    """One sample: BOS, the haystack cut to fit with needles inserted at `depths`, then the tail segments.

    needles: (tokens, value_start, value_len) in insertion order (depths ascending); tail: (tokens, is_answer);
    ends: which haystack tokens end a sentence (needles then go between sentences, see `sentence_cuts`).
    Returns the tokens and the positions of every needle's value tokens and of every answer token."""
    budget = length - 1 - sum(len(t) for t, _, _ in needles) - sum(len(t) for t, _ in tail)
    if budget < 0:
        raise TooShort(f"eval length {length} is too short for the needles and the question "
                       f"({length - 1 - budget} tokens)")
    hay = haystack[:budget]
    cuts = sentence_cuts([int(round(d * budget)) for d in depths], None if ends is None else ends[:budget])
    parts, values, prev = [np.array([bos])], [], 0
    pos = 1
    for (tokens, v_start, v_len), cut in zip(needles, cuts, strict=True):
        parts.append(hay[prev:cut])
        pos += cut - prev
        values.append(list(range(pos + v_start, pos + v_start + v_len)))
        parts.append(tokens)
        pos += len(tokens)
        prev = cut
    parts.append(hay[prev:])
    pos += budget - prev
    answers = []
    for tokens, is_answer in tail:
        if is_answer:
            answers.extend(range(pos, pos + len(tokens)))
        parts.append(tokens)
        pos += len(tokens)
    out = np.concatenate(parts).astype(np.int64)
    assert len(out) == length
    return {"tokens": out, "values": values, "answer_pos": answers}


def _rng(lang, task: str, length: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([lang.seed, SPLITS["eval"], zlib.crc32(task.encode()), length, seed])


def probe_candidates(lang) -> list[np.ndarray]:
    """The 8 candidate values of the probing set, fixed per language (the same at every length)."""
    return lang.values(np.random.default_rng([lang.seed, SPLITS["probe"]]), N_CLASSES)


def make_evalset(lang, task: str, length: int, n_samples: int, seed: int = 0,
                 depth_range: tuple[float, float] | None = None, include_answer: bool | None = None,
                 stream: str | None = None) -> EvalSet:
    """`n_samples` samples of `task` at `length` tokens. Every needle's depth (its position as a fraction of the
    haystack) is drawn uniformly from `depth_range` (default DEPTH_RANGE, the authors' probing set's [1/4, 3/4]:
    every needle then lies at least a quarter of the haystack before the question, beyond any sliding window
    smaller than that); for variable tracking every hop's value is a needle. `include_answer` defaults to True
    except for the probing set; `stream` names the random stream (default: the task)."""
    if task not in TASKS:
        from hybridlab.config import ConfigError

        raise ConfigError("eval.ruler_tasks", task, ", ".join(TASKS))
    rng = _rng(lang, stream or task, length, seed)
    lo, hi = check_depth_range(depth_range or DEPTH_RANGE)
    with_answer = task != "probe" if include_answer is None else include_answer
    haystacks = lang.haystack(rng, n_samples, length, "repeat" if task == "niah_single_repeat" else "text")
    candidates = probe_candidates(lang) if task == "probe" else None
    samples, labels, first_depth = [], [], []
    for i in range(n_samples):
        label = -1
        if task in ("niah_single", "niah_single_repeat", "probe"):
            key = lang.keys(rng, 1)[0]
            if task == "probe":
                label = int(rng.integers(N_CLASSES))
                value = candidates[label]
            else:
                value = lang.values(rng, 1)[0]
            facts, kind, depth = [(key, value)], "fact", [lo + (hi - lo) * float(rng.random())]
            asked = [(key, [value])]
        else:
            depth = sorted((lo + (hi - lo) * rng.random(N_NEEDLES)).tolist())
            keys, values = lang.keys(rng, N_NEEDLES), lang.values(rng, N_NEEDLES)
            if task == "niah_multikey":
                facts, kind = list(zip(keys, values, strict=True)), "fact"
                j = int(rng.integers(N_NEEDLES))
                asked = [(keys[j], [values[j]])]
            elif task == "niah_multivalue":
                facts, kind = [(keys[0], v) for v in values], "all"
                asked = [(keys[0], values)]
            elif task == "niah_multiquery":
                facts, kind = list(zip(keys, values, strict=True)), "fact"
                asked = [(k, [v]) for k, v in zip(keys, values, strict=True)]
            else:  # vt: x1 = value, x2 = x1, ...; asked for the last variable
                chain = [values[0], *keys[:-1]]
                facts, kind = list(zip(keys, chain, strict=True)), "var"
                asked = [(keys[-1], [values[0]])]
        needles = []
        for key, value in facts:
            tokens, v_start = lang.needle(key, value, kind)
            needles.append((tokens, v_start, len(value)))
        tail = []
        for key, vals in asked:
            tail.append((lang.question(key, kind), False))
            if with_answer:
                tail.extend((lang.answer(v), True) for v in vals)
        s = build_sample(lang.bos, haystacks.tokens[i], needles, depth, tail, length,
                         None if haystacks.ends is None else haystacks.ends[i])
        answer = np.concatenate([lang.answer(v) for _, vals in asked for v in vals])
        if task == "niah_multikey":
            s["values"] = [s["values"][j]]
        query_pos = (s["answer_pos"][0] - 1) if with_answer else length - 1
        samples.append((s, answer, query_pos))
        labels.append(label)
        first_depth.append(depth[0])
    return _collect(samples, labels, first_depth)


def _collect(samples, labels, depths) -> EvalSet:
    n = len(samples)
    n_ans = max(len(a) for _, a, _ in samples)
    n_needle = max(sum(len(v) for v in s["values"]) for s, _, _ in samples)
    answer = np.full((n, n_ans), -1, dtype=np.int32)
    answer_pos = np.full((n, n_ans), -1, dtype=np.int32)
    needle_pos = np.full((n, n_needle), -1, dtype=np.int32)
    for i, (s, a, _) in enumerate(samples):
        answer[i, :len(a)] = a
        answer_pos[i, :len(s["answer_pos"])] = s["answer_pos"]
        flat = [p for v in s["values"] for p in v]
        needle_pos[i, :len(flat)] = flat
    return EvalSet(tokens=np.stack([s["tokens"] for s, _, _ in samples]), answer=answer, answer_pos=answer_pos,
                   needle_pos=needle_pos, query_pos=np.array([q for _, _, q in samples], dtype=np.int32),
                   label=np.array(labels, dtype=np.int32), depth=np.array(depths, dtype=np.float64))


def load_evalset(folder: str | Path, task: str, length: int, verify: bool = True) -> EvalSet:
    """One eval set from a prepared data folder, verified against its manifest; tokens as int64."""
    from hybridlab.data.shards import load_array, read_manifest

    folder = Path(folder)
    sets = read_manifest(folder).get("evalsets", {})
    if task not in sets:
        raise KeyError(f"{folder}: no eval set {task!r}; has {sorted(sets)}")
    entries = sets[task].get(str(length))
    if entries is None:
        raise KeyError(f"{folder}: eval set {task!r} has no length {length}; has {sorted(sets[task], key=int)}")
    arrays = {k: np.asarray(load_array(folder, e, verify)) for k, e in entries.items()}
    arrays["tokens"] = arrays["tokens"].astype(np.int64)
    return EvalSet(**arrays)
