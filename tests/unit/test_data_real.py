"""Real corpora: a `datasets` dataset and local files made in the test, a BPE trained on them, packing by
document length, and eval sets written with the trained tokenizer."""

import hashlib
import json

import numpy as np
import pytest

from hybridlab.config import ConfigError, load_config
from hybridlab.data.evalsets import TASKS, load_evalset
from hybridlab.data.prepare import prepare
from hybridlab.data.real import load_tokenizer
from hybridlab.data.shards import load_key_mask, load_split
from hybridlab.data.synthetic import BOS, PAD

pytest.importorskip("tokenizers")
WORDS = ("the river city old market light stone north winter garden letter music road paper bridge quiet "
         "morning house window story harbor field silver forest one of special magic numbers for is what are all "
         "mentioned in provided text value var").split()
CONTEXT = 256
EVAL = ["eval.niah_samples=4", "eval.ruler_samples=3", "eval.probe_samples=8", "eval.niah_lengths=[1.0,2.0]"]


def corpus(n_docs: int = 400, seed: int = 0) -> list[str]:
    """Sentences of a few words; one document in eight is long (a few hundred words)."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_docs):
        n_words = int(rng.integers(120, 300)) if i % 8 == 0 else int(rng.integers(8, 40))
        words = rng.choice(WORDS, size=n_words)
        docs.append(" ".join(f"{w}." if j % 7 == 6 else w for j, w in enumerate(words)).capitalize())
    return docs


def cfg_for(source: str, **extra) -> object:
    over = [f"data={source}", f"scale.context={CONTEXT}", "data.n_train_seqs=40", "data.n_val_seqs=4",
            "data.corpora.main.val_fraction=0.2", "data.tokenizer.vocab_size=400", *EVAL]
    over += [f"{k}={v}" for k, v in extra.items()]
    return load_config("smoke", overrides=over)


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf")
    datasets.Dataset.from_dict({"text": corpus(), "id": list(range(400))}).save_to_disk(str(root / "ds"))
    cfg = cfg_for("hf", **{"data.corpora.main.hf.name": str(root / "ds")})
    return cfg, root / "out", prepare(cfg, root / "out")


def test_datasets_corpus_is_tokenized_and_packed(hf_data):
    _, out, m = hf_data
    assert m["source"] == "text" and m["tokenizer"]["kind"] == "bpe" and m["vocab_size"] == 400
    docs = m["documents"]["main"]
    assert docs["read"] == sum(docs[k] for k in ("train_long", "train_short", "val_long", "val_short", "dropped_class",
                                                 "dropped_full", "skipped_short_bytes"))  # every document accounted
    assert 0 < docs["read"] <= 400 and docs["val_long"] + docs["val_short"] > 10
    tokens, dist = load_split(out, "train")
    assert tokens.shape == (40, CONTEXT) and not np.asarray(dist).any()
    tok = load_tokenizer(out / "tokenizer.json")
    assert tok.hash == m["tokenizer"]["hash"] and (tok.bos, tok.pad) == (BOS, PAD)
    docs = set(corpus())
    row = np.asarray(tokens[1])
    bos = np.flatnonzero(row == BOS)
    whole = [row[a + 1:b] for a, b in zip(bos[:-1], bos[1:], strict=True)]
    assert all(tok.decode(d) in docs for d in whole)  # packing keeps documents intact between separators


def test_long_and_short_sequences_are_mixed(hf_data):
    _, out, m = hf_data
    tokens = np.asarray(load_split(out, "train")[0])
    classes = np.concatenate([[e["class"]] * (e["rows"][1] - e["rows"][0]) for e in m["splits"]["train"]])
    assert (classes == "long").mean() == 0.5 and m["mix"]["train"]["long_share"] == 0.5  # the paper's 1:1, exactly
    for row, cls in zip(tokens, classes, strict=True):  # whole documents inside a row have their class's length
        bos = np.flatnonzero(row == BOS)
        lengths = np.diff(bos) - 1
        assert (lengths >= CONTEXT // 2).all() if cls == "long" else (lengths < CONTEXT // 2).all()


def test_same_inputs_give_byte_identical_folders(hf_data, tmp_path):
    cfg, out, m = hf_data
    again = prepare(cfg, tmp_path / "again")
    assert again == m

    def digests(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}

    assert digests(out) == digests(tmp_path / "again")


def test_text_eval_sets_hide_numbers_in_held_out_text(hf_data):
    cfg, out, m = hf_data
    tok = load_tokenizer(out / "tokenizer.json")
    assert set(m["evalsets"]) == set(TASKS)
    assert set(m["evalsets_skipped"]) <= {"niah_multiquery@256"}  # four English questions need room
    for task in TASKS:
        assert str(2 * CONTEXT) in m["evalsets"][task]
        for length in map(int, m["evalsets"][task]):
            e = load_evalset(out, task, length)
            assert e.tokens.shape[1] == length
            numbers = tok.decode(e.answer[0][e.answer[0] >= 0]).split()
            assert all(x.isdigit() and len(x) == 7 for x in numbers)
            assert len(numbers) == (4 if task in ("niah_multivalue", "niah_multiquery") else 1)
            has = e.answer_pos >= 0
            i, j = np.nonzero(has)
            assert (e.tokens[i, e.answer_pos[i, j]] == e.answer[i, j]).all()
    e = load_evalset(out, "niah_single", CONTEXT)
    needle = e.needle_pos[0][e.needle_pos[0] >= 0]
    assert (e.tokens[0, needle] == e.answer[0][e.answer[0] >= 0]).all()
    assert "special magic number" in tok.decode(e.tokens[0, e.query_pos[0] - 40:e.query_pos[0] + 1])


def test_local_files_and_a_custom_haystack(tmp_path):
    docs = corpus(90, seed=1)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs[:40]))
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": docs[40:80]}), tmp_path / "b.parquet")
    for i, d in enumerate(docs[80:]):
        (tmp_path / f"c{i}.txt").write_text(d)
    (tmp_path / "essay.text").write_text("A haystack essay about lighthouses and tides. " * 50)
    cfg = cfg_for("files", **{"data.corpora.main.files": f"[{tmp_path}/*.jsonl,{tmp_path}/*.parquet,{tmp_path}/*.txt]",
                              "eval.haystack_file": str(tmp_path / "essay.text"), "data.n_train_seqs": 1000,
                              "data.corpora.main.groups": 4})
    m = prepare(cfg, tmp_path / "out")
    assert m["source"] == "text" and m["documents"]["main"]["read"] == 90  # more wanted than there is: all read
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    e = load_evalset(tmp_path / "out", "niah_single", CONTEXT)
    assert "lighthouses" in tok.decode(e.tokens[0, 1:e.query_pos[0]])
    with pytest.raises(KeyError, match="no key-token mask"):
        load_key_mask(tmp_path / "out", "val")


def test_bad_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.corpora.main.files"):
        prepare(cfg_for("files", **{"data.corpora.main.files": f"[{tmp_path}/none*.jsonl]"}), tmp_path / "o")
    (tmp_path / "x.jsonl").write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(ConfigError, match="data.corpora.main.text_field"):
        prepare(cfg_for("files", **{"data.corpora.main.files": f"[{tmp_path}/x.jsonl]"}), tmp_path / "o")
    with pytest.raises(ConfigError, match=r"data.corpora.\*.take \(train\)"):
        cfg_for("files", **{"data.corpora.main.files": f"[{tmp_path}/x.jsonl]", "data.corpora.main.take.long": 0.7})


def test_reference_model_key_tokens_are_stored_for_val(hf_data, tmp_path, monkeypatch):
    import torch

    from hybridlab.data import longppl

    torch.set_num_threads(1)

    class Copier(torch.nn.Module):  # the next token is likely one already seen in the input
        def forward(self, ids):
            return 10.0 * torch.nn.functional.one_hot(ids, 400).cumsum(1).clamp(max=1).float()

    monkeypatch.setattr(longppl, "load_reference", lambda path, device, block: longppl.CausalLMScorer(Copier()))
    cfg, _, _ = hf_data
    cfg = load_config("smoke", overrides=[*[f"{k}={v}" for k, v in _overrides(cfg).items()],
                                          f"data.longppl.reference={tmp_path}", "data.longppl.short_window=32",
                                          "data.longppl.logprob_floor=null"])
    m = prepare(cfg, tmp_path)
    mask = load_key_mask(tmp_path, "val")
    assert mask.shape == (4, CONTEXT) and m["longppl"]["short_window"] == 32 and m["longppl"]["split"] == "val"
    assert 0 < m["key_tokens"]["val"] == mask.sum() and not mask[:, :33].any()


def _overrides(cfg) -> dict:
    return {"data": "hf", "data.corpora.main.hf.name": cfg.data.corpora.main.hf.name, "scale.context": CONTEXT,
            "data.n_train_seqs": 40, "data.n_val_seqs": 4, "data.corpora.main.val_fraction": 0.2,
            "data.tokenizer.vocab_size": 400,
            **dict(x.split("=", 1) for x in EVAL)}
