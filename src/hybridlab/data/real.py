"""Real text corpora: documents from Hugging Face `datasets` or local files, a BPE tokenizer, packed sequences.

- Documents: `data.source: hf` reads any `datasets` dataset (`hf.name`, `hf.config`, `hf.split`, `text_field`)
  with `load_dataset`, or a folder written by `Dataset.save_to_disk` with `load_from_disk`; `data.source: files`
  reads local .txt (one document per file), .jsonl/.json (one JSON object per line) and .parquet files.
- Train/val split: by a hash of each document's text and `data.seed`, so it does not depend on document order
  and the eval haystacks (drawn from val documents) never come from training text.
- Tokenizer: a byte-level BPE trained during data prep with `tokenizers` (`tokenizer.vocab_size`), or a
  pretrained `tokenizer.json` from a local path. Trained tokenizers reserve ids 0..4 for the same special
  tokens as the synthetic corpus (PAD, BOS, DEF, QRY, SEP).
- Packing: documents become `BOS doc BOS doc ...` streams cut into `context`-token sequences, one stream of
  long documents (at least `long_doc_min` of the context) and one of short ones; sequences are drawn from the
  two with probability `long_fraction` (0.5 is the paper's 1:1), while both last.
- `dist` labels are zero for real text: which tokens need long context is decided by a reference model
  (longppl.py), not known by construction.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybridlab.data.synthetic import BOS, PAD, SPECIAL_NAMES
from hybridlab.io import write_bytes

TOKENIZER_FILE = "tokenizer.json"
FILE_KINDS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"real corpora need `{module}`: pip install 'hybridlab[data]'") from None


def _config_error(key: str, value, allowed: str):
    from hybridlab.config import ConfigError

    return ConfigError(key, value, allowed)


def hf_documents(name: str, config: str | None, split: str, text_field: str) -> Iterator[str]:
    """Texts of a `datasets` dataset: a hub name or a local loading script/data folder via `load_dataset`, or a
    folder written by `save_to_disk` via `load_from_disk`."""
    datasets = _need("datasets")
    path = Path(name)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise _config_error("data.hf.split", split, ", ".join(ds))
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name, config, split=split)
    if text_field not in ds.column_names:
        raise _config_error("data.text_field", text_field, ", ".join(ds.column_names))
    for row in ds.select_columns([text_field]):
        yield row[text_field]


def resolve_files(patterns: list[str]) -> list[str]:
    """The files matched by `data.files` glob patterns, sorted; an error names the patterns if none match."""
    paths = sorted({p for pat in patterns for p in glob.glob(str(Path(pat).expanduser()), recursive=True)})
    if not paths:
        raise _config_error("data.files", list(patterns), "glob patterns matching at least one file")
    return paths


def file_documents(patterns: list[str], text_field: str) -> Iterator[str]:
    """Texts of local files, in sorted path order: .txt whole, .jsonl/.json by line, .parquet by row."""
    for p in resolve_files(patterns):
        kind = FILE_KINDS.get(Path(p).suffix.lower())
        if kind is None:
            raise _config_error("data.files", p, f"files ending in {', '.join(FILE_KINDS)}")
        if kind == "text":
            yield Path(p).read_text(encoding="utf-8")
        elif kind == "json":
            with open(p, encoding="utf-8") as f:
                for i, line in enumerate(f):
                    if line.strip():
                        row = json.loads(line)
                        if text_field not in row:
                            raise _config_error("data.text_field", text_field, f"a field of {p}:{i + 1} "
                                                f"({', '.join(row)})")
                        yield row[text_field]
        else:
            pq = _need("pyarrow.parquet")
            names = pq.read_schema(p).names
            if text_field not in names:
                raise _config_error("data.text_field", text_field, f"a column of {p} ({', '.join(names)})")
            yield from pq.read_table(p, columns=[text_field]).column(text_field).to_pylist()


def documents(data_cfg) -> Iterator[str]:
    """The configured documents (empty ones skipped), at most `data.max_docs` of them."""
    if data_cfg.source == "hf":
        h = data_cfg.hf
        docs = hf_documents(h.name, h.get("config"), h.split, data_cfg.text_field)
    elif data_cfg.source == "files":
        docs = file_documents(list(data_cfg.files), data_cfg.text_field)
    else:
        raise _config_error("data.source", data_cfg.source, "synthetic, hf, files")
    limit = data_cfg.get("max_docs")
    n = 0
    for text in docs:
        if text and text.strip():
            yield text
            n += 1
            if limit is not None and n >= limit:
                return


def split_documents(docs: Iterator[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) by a hash of (seed, text): order-independent, and a duplicate text lands in one split."""
    train, val = [], []
    for text in docs:
        h = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
        (val if int.from_bytes(h[:8], "little") / 2**64 < val_fraction else train).append(text)
    return train, val


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

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


def train_bpe(texts: list[str], vocab_size: int, min_frequency: int = 2) -> TextTokenizer:
    """A byte-level BPE trained on `texts`; ids 0..4 are the pipeline's special tokens."""
    tk = _need("tokenizers")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                     special_tokens=list(SPECIAL_NAMES),
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return TextTokenizer(tok, BOS, PAD)


def tokenizer_file(path: str | Path) -> Path:
    """The `tokenizer.json` that `data.tokenizer.path` names (the file, or a folder holding one)."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise _config_error("data.tokenizer.path", str(path), f"a {TOKENIZER_FILE} file or a folder holding one")
    return file


def load_tokenizer(path: str | Path, bos_token: str = "<bos>", pad_token: str | None = "<pad>") -> TextTokenizer:
    """A pretrained tokenizer: a `tokenizer.json` file, or a folder holding one."""
    tk = _need("tokenizers")
    file = tokenizer_file(path)
    tok = tk.Tokenizer.from_file(str(file))
    bos = tok.token_to_id(bos_token)
    if bos is None:
        raise _config_error("data.tokenizer.bos_token", bos_token, f"a token in the vocabulary of {file}")
    pad = tok.token_to_id(pad_token) if pad_token else None
    return TextTokenizer(tok, bos, bos if pad is None else pad)


def build_tokenizer(data_cfg, train_texts: list[str], out: Path) -> TextTokenizer:
    """Train (or load) the tokenizer and save it to `out/tokenizer.json`, atomically."""
    t = data_cfg.tokenizer
    if t.get("path"):
        tok = load_tokenizer(t.path, t.get("bos_token", "<bos>"), t.get("pad_token", "<pad>"))
    else:
        n = t.get("train_docs") or len(train_texts)
        tok = train_bpe(train_texts[:n], int(t.vocab_size), int(t.get("min_frequency", 2)))
    write_bytes(out / TOKENIZER_FILE, tok.to_str().encode())
    return tok


def tokenize(tok: TextTokenizer, texts: list[str], desc: str, batch: int = 512) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    with tqdm(total=len(texts), desc=desc, unit="doc", leave=False) as bar:
        for i in range(0, len(texts), batch):
            out.extend(tok.encode_batch(texts[i:i + batch]))
            bar.update(min(batch, len(texts) - i))
    return out


def _stream(docs: list[np.ndarray], bos: int, context: int) -> np.ndarray:
    """`BOS doc BOS doc ...` cut into [n, context] rows; the incomplete tail is dropped."""
    if not docs:
        return np.zeros((0, context), dtype=np.int64)
    flat = np.concatenate([np.concatenate([[bos], d]) for d in docs]).astype(np.int64)
    n = len(flat) // context
    return flat[:n * context].reshape(n, context)


def pack(docs: list[np.ndarray], context: int, bos: int, n_seqs: int, long_min: int, long_fraction: float,
         rng: np.random.Generator) -> np.ndarray:
    """Up to `n_seqs` rows of `context` tokens, long-document rows drawn with probability `long_fraction`
    while both kinds last (then the remaining kind fills up)."""
    long_rows = _stream([d for d in docs if len(d) >= long_min], bos, context)
    short_rows = _stream([d for d in docs if len(d) < long_min], bos, context)
    out, i_long, i_short = [], 0, 0
    while len(out) < n_seqs and (i_long < len(long_rows) or i_short < len(short_rows)):
        take_long = i_short >= len(short_rows) or (i_long < len(long_rows) and rng.random() < long_fraction)
        if take_long:
            out.append(long_rows[i_long])
            i_long += 1
        else:
            out.append(short_rows[i_short])
            i_short += 1
    return np.stack(out) if out else np.zeros((0, context), dtype=np.int64)
