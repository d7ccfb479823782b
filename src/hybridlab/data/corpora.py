"""Real-text corpora as the data stage sees them: their specs from `data.corpora`, their validation, how each is
divided into preparation groups, and the documents of one group, read in a bounded-memory stream.

A corpus (one entry of `data.corpora`) is a Hugging Face `datasets` dataset (`hf`: a hub name, read with
`load_dataset(..., streaming=True)`, or a local folder written by `save_to_disk`) or local files (`files`: .txt
whole, .jsonl/.json by line, .parquet by row batch). It feeds one split (`role`: train, val or longppl) with
the share of that split's rows that `take` gives per document class (long: at least `long_doc_min` of the
context in tokens; short: the rest). A train corpus may hold out `val_fraction` of its documents (by a hash
of the text) for the val split, when no corpus has role val.

Groups: a corpus is read by `groups` independent jobs. Group g of G reads input shards [g*n/G, (g+1)*n/G) (n:
the dataset's file count, the number of local files, or for a `save_to_disk` folder its rows), so what a
group reads depends on the config alone, never on how many processes run.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ROLES = ("train", "val", "longppl")
CLASSES = ("long", "short")
FILE_KINDS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
READ_BATCH = 256  # documents per read from a dataset or a parquet file


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"real corpora need `{module}`: pip install 'hybridlab[data]'") from None


def _error(key: str, value, allowed: str):
    from hybridlab.config import ConfigError

    return ConfigError(key, value, allowed)


@dataclass(frozen=True)
class Corpus:
    """One configured corpus (see the module docstring); `key` is its config path for error messages."""

    name: str
    role: str
    take: dict[str, float]
    groups: int
    text_field: str
    hf: dict | None
    files: tuple[str, ...]
    val_fraction: float

    @property
    def key(self) -> str:
        return f"data.corpora.{self.name}"

    def spec(self) -> dict:
        """What defines this corpus's documents (hashed into its groups' fingerprints)."""
        return {"role": self.role, "take": self.take, "groups": self.groups, "text_field": self.text_field,
                "hf": self.hf, "files": list(self.files), "val_fraction": self.val_fraction}


def _entries(data_cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(name, config) of every corpus; one set to null (e.g. `main: null` in paper.yaml) is left out."""
    return [(str(name), c) for name, c in (data_cfg.get("corpora") or {}).items() if c is not None]


def corpora(data_cfg: DictConfig) -> list[Corpus]:
    """The configured corpora, in config order."""
    out = []
    for name, c in _entries(data_cfg):
        hf = OmegaConf.to_container(c.hf, resolve=True) if c.get("hf") else None
        out.append(Corpus(str(name), str(c.role), {k: float(v) for k, v in c.take.items()}, int(c.get("groups", 1)),
                          str(c.get("text_field", "text")), hf, tuple(c.get("files") or ()),
                          float(c.get("val_fraction") or 0.0)))
    return out


def split_streams(data_cfg: DictConfig) -> dict[str, list[tuple[str, str, float]]]:
    """Per split, its streams (corpus, class, share of the split's rows). A val split without val corpora is
    made of the train corpora's held-out documents, with their train shares (normalised)."""
    cs = corpora(data_cfg)
    streams: dict[str, list[tuple[str, str, float]]] = {r: [] for r in ROLES}
    for c in cs:
        streams[c.role] += [(c.name, cls, share) for cls, share in c.take.items()]
    if not streams["val"]:
        held = [(c.name, cls, share) for c in cs if c.role == "train" and c.val_fraction > 0
                for cls, share in c.take.items()]
        total = sum(s for _, _, s in held)
        streams["val"] = [(n, cls, s / total) for n, cls, s in held]
    return {r: s for r, s in streams.items() if s}


def split_rows(data_cfg: DictConfig) -> dict[str, int]:
    """The number of sequences each split is to hold (`n_train_seqs`, `n_val_seqs`, `n_longppl_seqs`)."""
    return {r: int(data_cfg[f"n_{r}_seqs"]) for r in split_streams(data_cfg)}


def targets(data_cfg: DictConfig) -> dict[tuple[str, str, str], int]:
    """(split, corpus, class) -> sequences wanted from that stream."""
    n = split_rows(data_cfg)
    return {(split, name, cls): int(round(share * n[split])) for split, streams in split_streams(data_cfg).items()
            for name, cls, share in streams}


def group_quotas(data_cfg: DictConfig, corpus: Corpus) -> dict[tuple[str, str], int]:
    """(split, class) -> the most sequences one group of `corpus` writes: its even part of each target plus
    `group_slack`, so that groups that come up short are made up by the others."""
    slack = float(data_cfg.get("group_slack", 0.1))
    return {(split, cls): -(-int(t * (1 + slack)) // corpus.groups)
            for (split, name, cls), t in targets(data_cfg).items() if name == corpus.name}


def group_ids(data_cfg: DictConfig) -> list[str]:
    """Every preparation group as `corpus/GGGGG` (the Snakemake wildcards); none for the synthetic corpus."""
    if data_cfg.source == "synthetic":
        return []
    return [f"{c.name}/{g:05d}" for c in corpora(data_cfg) for g in range(c.groups)]


def resolve_files(patterns, key: str) -> list[str]:
    """The files matched by glob patterns, sorted; an error names the key if none match."""
    paths = sorted({p for pat in patterns for p in glob.glob(str(Path(pat).expanduser()), recursive=True)})
    if not paths:
        raise _error(key, list(patterns), "glob patterns matching at least one file")
    bad = [p for p in paths if Path(p).suffix.lower() not in FILE_KINDS]
    if bad:
        raise _error(key, bad[0], f"files ending in {', '.join(FILE_KINDS)}")
    return paths


def _saved_dataset(name: str) -> Path | None:
    path = Path(name).expanduser()
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return path
    return None


def local_inputs(corpus: Corpus) -> list[str]:
    """Local files whose content defines the corpus (hashed into fingerprints); none for a hub dataset."""
    if corpus.files:
        return resolve_files(corpus.files, f"{corpus.key}.files")
    saved = _saved_dataset(corpus.hf["name"])
    return sorted(str(p) for p in saved.rglob("*") if p.is_file()) if saved else []


def _part(n: int, groups: int, g: int) -> tuple[int, int]:
    return g * n // groups, (g + 1) * n // groups


def _load_saved(corpus: Corpus, path: Path):
    datasets = _need("datasets")
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = corpus.hf.get("split") or "train"
        if split not in ds:
            raise _error(f"{corpus.key}.hf.split", split, ", ".join(ds))
        ds = ds[split]
    return ds


def _check_field(corpus: Corpus, columns, where: str) -> None:
    if corpus.text_field not in columns:
        raise _error(f"{corpus.key}.text_field", corpus.text_field, f"a column of {where} ({', '.join(columns)})")


def _hf_texts(corpus: Corpus, g: int) -> Iterator[str]:
    h = corpus.hf
    saved = _saved_dataset(h["name"])
    if saved is not None:  # arrow files, memory-mapped: group g reads its contiguous rows
        ds = _load_saved(corpus, saved)
        _check_field(corpus, ds.column_names, h["name"])
        lo, hi = _part(len(ds), corpus.groups, g)
        for batch in ds.select(range(lo, hi)).select_columns([corpus.text_field]).iter(batch_size=READ_BATCH):
            yield from batch[corpus.text_field]
        return
    datasets = _need("datasets")
    ds = datasets.load_dataset(h["name"], h.get("config"), split=h.get("split") or "train", streaming=True,
                               revision=h.get("revision"), data_files=h.get("data_files"))
    n = ds.num_shards
    if g >= min(n, corpus.groups):
        return  # more groups than the dataset has files: this one has none
    part = ds.shard(num_shards=min(n, corpus.groups), index=g, contiguous=True)
    if part.column_names is not None:
        _check_field(corpus, part.column_names, h["name"])
    for batch in part.select_columns([corpus.text_field]).iter(batch_size=READ_BATCH):
        yield from batch[corpus.text_field]


def _bad_input(where: str, why: str):
    from hybridlab.io import CorruptFileError

    return CorruptFileError(where, why)


def _utf8_error(path: str, raw: bytes, e: UnicodeDecodeError, line: int | None = None):
    """The file, line and byte of text that is not UTF-8."""
    line = raw.count(b"\n", 0, e.start) + 1 if line is None else line
    return _bad_input(f"{path}:{line}", f"not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at offset {e.start} "
                      "of the line); convert the file, e.g. with iconv -t utf-8")


def _text_value(value, where: str, field: str):
    if value is not None and not isinstance(value, str):
        raise _bad_input(where, f"field {field!r} holds {type(value).__name__} {str(value)[:40]!r}, not text")
    return value


def _json_lines(path: str, field: str, corpus: Corpus) -> Iterator[str]:
    """The `field` of each JSON object of a JSON Lines file; a malformed record is named by file and line."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(path, raw, e, i) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise _bad_input(f"{path}:{i}", f"not a JSON object (JSON Lines: one per line): {e.msg} at "
                                 f"column {e.colno}") from None
            if not isinstance(row, dict):
                raise _bad_input(f"{path}:{i}", f"a JSON {type(row).__name__}, not an object with a "
                                 f"{field!r} field (JSON Lines: one object per line)")
            if field not in row:
                _check_field(corpus, list(row), f"{path}:{i}")
            yield _text_value(row[field], f"{path}:{i}", field)


def _file_texts(corpus: Corpus, g: int) -> Iterator[str]:
    paths = resolve_files(corpus.files, f"{corpus.key}.files")
    lo, hi = _part(len(paths), corpus.groups, g)
    field = corpus.text_field
    for p in paths[lo:hi]:
        kind = FILE_KINDS[Path(p).suffix.lower()]
        if kind == "text":
            raw = Path(p).read_bytes()
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(p, raw, e) from None
        elif kind == "json":
            yield from _json_lines(p, field, corpus)
        else:
            yield from _parquet_texts(p, field, corpus)


def _parquet_texts(path: str, field: str, corpus: Corpus) -> Iterator[str]:
    """The `field` of each row of a Parquet file; a file pyarrow cannot read, or a value that is not text, is
    named (the row counted from 1)."""
    def unreadable(e: Exception):
        return _bad_input(path, f"not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0]})")

    try:  # pyarrow's ArrowInvalid is a ValueError, its I/O errors OSErrors
        pf = _need("pyarrow.parquet").ParquetFile(path)
    except (OSError, ValueError) as e:
        raise unreadable(e) from None
    _check_field(corpus, pf.schema_arrow.names, path)
    batches, row = pf.iter_batches(batch_size=READ_BATCH, columns=[field]), 0
    while True:
        try:
            batch = next(batches, None)
        except (OSError, ValueError) as e:
            raise unreadable(e) from None
        if batch is None:
            return
        for value in batch.column(field).to_pylist():
            row += 1
            yield _text_value(value, f"{path} (row {row})", field)


def group_texts(corpus: Corpus, g: int) -> Iterator[str]:
    """The non-empty documents of group g of `corpus`, in a fixed order, a batch at a time."""
    if not 0 <= g < corpus.groups:
        raise _error(f"{corpus.key}.groups", corpus.groups, f"more than {g} groups (asked for group {g})")
    texts = _file_texts(corpus, g) if corpus.files else _hf_texts(corpus, g)
    for i, text in enumerate(texts, start=1):
        if text and _text_value(text, f"{corpus.key} (group {g}, document {i})", corpus.text_field).strip():
            yield text


def held_out(text: str, seed: int, fraction: float) -> bool:
    """Whether a document goes to val: a hash of (seed, text), so it does not depend on order or grouping and a
    duplicate text lands on one side."""
    if fraction <= 0:
        return False
    h = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < fraction


def text_rules(data_cfg: DictConfig) -> dict:
    """Config rules (hybridlab.settings) for every key of a real-text data config: the keys of every source
    text, and per configured corpus those of its kind (hf or files) and of its document classes."""
    from hybridlab.settings import rule, rules

    found = rules("text")
    for name, c in _entries(data_cfg):
        key = f"data.corpora.{name}"
        kinds = ("role", "groups", "text_field", "val_fraction",
                 "files" if "files" in c and c.get("hf") is None else "hf.name")
        found |= {f"{key}.{k}": rule(f"data.corpora.*.{k}") for k in kinds}
        found |= {f"{key}.take.{cls}": rule("data.corpora.*.take.*") for cls in c.get("take", {})}
    if not any(c.get("role") == "longppl" for _, c in _entries(data_cfg)):
        found.pop("data.n_longppl_seqs")
    return found


def check(data_cfg: DictConfig) -> None:
    """The checks across keys: classes, shares summing to 1 per split, a train and a val split, a tokenizer."""
    if not _entries(data_cfg):
        cs = data_cfg.get("corpora")
        raise _error("data.corpora", OmegaConf.to_container(cs) if cs is not None else None,
                     "a mapping of corpus names to corpora (conf/data/hf.yaml shows one)")
    for c in corpora(data_cfg):
        if not c.take or set(c.take) - set(CLASSES):
            raise _error(f"{c.key}.take", c.take, "a mapping of long and/or short to shares of the split's rows")
        if c.val_fraction and c.role != "train":
            raise _error(f"{c.key}.val_fraction", c.val_fraction, f"0 (only train corpora hold out; this is {c.role})")
    roles = {c.role for c in corpora(data_cfg)}
    if "train" not in roles:
        raise _error("data.corpora", sorted(roles), "corpora with role train (and val, or a train val_fraction)")
    if "val" in roles and any(c.val_fraction for c in corpora(data_cfg)):
        raise _error("data.corpora", "val corpora and a val_fraction", "one source of val documents, not both")
    streams = split_streams(data_cfg)
    if "val" not in streams:
        raise _error("data.corpora", sorted(roles), "a corpus with role val, or a train corpus with val_fraction > 0")
    for split, ss in streams.items():
        total = sum(s for _, _, s in ss)
        if abs(total - 1) > 1e-6:
            raise _error(f"data.corpora.*.take ({split})", round(total, 6),
                         f"shares of the {split} split's rows that sum to 1 over its corpora")
    t = data_cfg.tokenizer
    if t.get("path") and t.get("hub"):
        raise _error("data.tokenizer.hub", t.hub, "null when data.tokenizer.path is set (one tokenizer)")
    if not (t.get("path") or t.get("hub")) and not t.get("vocab_size"):
        raise _error("data.tokenizer.vocab_size", t.get("vocab_size"), "an integer (the BPE vocabulary to train)")
