"""The tokenizer of real text: a pretrained `tokenizer.json` (a local file, or one file of a Hugging Face model
repository at a pinned revision) or a byte-level BPE trained on the train corpora, saved into the data folder.

- Trained BPEs reserve ids 0..4 for the synthetic corpus's special tokens (PAD, BOS, DEF, QRY, SEP), train on
  the first `tokenizer.train_docs` train documents (all when null; held-out val documents never), streamed.
- `tokenizer.vocab_size` is the model's vocabulary: the size to train, or for a pretrained tokenizer the
  embedding size (at least the tokenizer's; null: the tokenizer's own), so that `hybridlab describe` can plan
  the paper grid before any tokenizer is fetched.
- `tokenizer.done.json` beside `tokenizer.json` records the fingerprint of the settings that made it, so a
  re-run reuses it and a changed setting rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from hybridlab.data import corpora as corp
from hybridlab.data.synthetic import BOS, PAD, SPECIAL_NAMES
from hybridlab.io import atomic_path, read_json, sha256_file, write_bytes, write_json

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_DONE = "tokenizer.done.json"


def _error(key: str, value, allowed: str):
    from hybridlab.config import ConfigError

    return ConfigError(key, value, allowed)


@dataclass
class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the ids the pipeline needs."""

    tok: object
    bos: int
    pad: int

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def to_str(self) -> str:
        return self.tok.to_str()

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.to_str().encode()).hexdigest()[:16]

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_batch(self, texts: list[str], dtype=np.int64) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=dtype) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


def train_bpe(texts: Iterator[str], vocab_size: int, min_frequency: int = 2) -> TextTokenizer:
    """A byte-level BPE trained on `texts` (streamed); ids 0..4 are the pipeline's special tokens."""
    tk = corp._need("tokenizers")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                     special_tokens=list(SPECIAL_NAMES),
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tok, BOS, PAD)


def tokenizer_file(path: str | Path) -> Path:
    """The `tokenizer.json` that `data.tokenizer.path` names (the file, or a folder holding one)."""
    path = Path(path).expanduser()
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise _error("data.tokenizer.path", str(path), f"a {TOKENIZER_FILE} file or a folder holding one")
    return file


def load_tokenizer(path: str | Path, bos_token: str = "<bos>", pad_token: str | None = "<pad>") -> TextTokenizer:
    """A pretrained tokenizer: a `tokenizer.json` file, or a folder holding one."""
    tk = corp._need("tokenizers")
    file = tokenizer_file(path)
    tok = tk.Tokenizer.from_file(str(file))
    bos = tok.token_to_id(bos_token)
    if bos is None:
        raise _error("data.tokenizer.bos_token", bos_token, f"a token in the vocabulary of {file}")
    pad = tok.token_to_id(pad_token) if pad_token else None
    return TextTokenizer(tok, bos, bos if pad is None else pad)


def tokenizer_fingerprint(data_cfg: DictConfig) -> str:
    """What the tokenizer depends on: its settings, and for a trained BPE the train corpora (specs, local
    inputs, the hold-out seed)."""
    t = data_cfg.tokenizer
    parts: dict = {"tokenizer": OmegaConf.to_container(t, resolve=True)}
    if t.get("path"):
        parts["file"] = sha256_file(tokenizer_file(t.path))
    elif not t.get("hub"):
        train = [c for c in corp.corpora(data_cfg) if c.role == "train"]
        parts["corpora"] = [c.spec() for c in train]
        parts["inputs"] = [sha256_file(p) for c in train for p in corp.local_inputs(c)]
        parts["seed"] = int(data_cfg.seed)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _train_texts(data_cfg: DictConfig) -> Iterator[str]:
    """Train documents (held-out ones skipped) of every train corpus, group by group, up to `train_docs`."""
    limit, n, seed = data_cfg.tokenizer.get("train_docs"), 0, int(data_cfg.seed)
    for c in corp.corpora(data_cfg):
        if c.role != "train":
            continue
        for g in range(c.groups):
            for text in corp.group_texts(c, g):
                if corp.held_out(text, seed, c.val_fraction):
                    continue
                yield text
                n += 1
                if limit is not None and n >= limit:
                    return


def _fetch(t: DictConfig, out: Path) -> None:
    """Copy `tokenizer.json` of the model repository `t.hub` at `t.revision` into `out` (needs the network or
    a Hugging Face cache holding it)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ImportError("data.tokenizer.hub needs `huggingface_hub`: pip install 'hybridlab[data]'") from None
    src = hf_hub_download(repo_id=t.hub, filename=TOKENIZER_FILE, revision=t.get("revision"))
    with atomic_path(out) as tmp:
        shutil.copyfile(src, tmp)


def vocab_size(data_cfg: DictConfig, tok: TextTokenizer) -> int:
    """The model's vocabulary for this tokenizer (see the module docstring)."""
    t = data_cfg.tokenizer
    if not (t.get("path") or t.get("hub")) or t.get("vocab_size") is None:
        return tok.vocab_size
    if int(t.vocab_size) < tok.vocab_size:
        raise _error("data.tokenizer.vocab_size", int(t.vocab_size),
                     f"null or at least the tokenizer's {tok.vocab_size} tokens")
    return int(t.vocab_size)


def build_tokenizer(data_cfg: DictConfig, out: Path) -> TextTokenizer:
    """Fetch, copy or train the tokenizer into `out/tokenizer.json` (reused when its fingerprint matches)."""
    out = Path(out)
    t = data_cfg.tokenizer
    file, done = out / TOKENIZER_FILE, out / TOKENIZER_DONE
    fingerprint = tokenizer_fingerprint(data_cfg)
    if not (done.exists() and file.exists() and read_json(done).get("fingerprint") == fingerprint):
        if t.get("path"):
            with atomic_path(file) as tmp:
                shutil.copyfile(tokenizer_file(t.path), tmp)
        elif t.get("hub"):
            _fetch(t, file)
        else:
            trained = train_bpe(_train_texts(data_cfg), int(t.vocab_size), int(t.get("min_frequency", 2)))
            write_bytes(file, trained.to_str().encode())
        tok = open_tokenizer(data_cfg, out)
        write_json(done, {"fingerprint": fingerprint, "hash": tok.hash, "vocab_size": vocab_size(data_cfg, tok),
                          "kind": tokenizer_kind(data_cfg)})
    return open_tokenizer(data_cfg, out)


def tokenizer_kind(data_cfg: DictConfig) -> str:
    t = data_cfg.tokenizer
    return "pretrained" if (t.get("path") or t.get("hub")) else "bpe"


def open_tokenizer(data_cfg: DictConfig, folder: Path) -> TextTokenizer:
    """The tokenizer saved in a data folder, with the configured special tokens."""
    t = data_cfg.tokenizer
    if tokenizer_kind(data_cfg) == "bpe":
        return load_tokenizer(Path(folder) / TOKENIZER_FILE, SPECIAL_NAMES[BOS], SPECIAL_NAMES[PAD])
    return load_tokenizer(Path(folder) / TOKENIZER_FILE, t.get("bos_token", "<bos>"), t.get("pad_token"))
