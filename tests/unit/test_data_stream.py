"""The scalable real-text preparation, offline on data the tests make (a `datasets` folder saved to disk, jsonl and
parquet files, a word-level tokenizer built here): shards that do not depend on the number of processes, a
killed preparation that resumes without losing or duplicating documents, memory that does not grow with the
corpus, the memory-mapped split reader against a plain concatenation, the mix's shares, and training on the
shards equal to training on the same tokens in memory."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hybridlab.config import load_config
from hybridlab.data import corpora, groups, mix
from hybridlab.data.prepare import prepare
from hybridlab.data.shards import NpyWriter, SplitRows, load_split
from hybridlab.data.synthetic import BOS

tk = pytest.importorskip("tokenizers")
datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")
WORDS = [f"w{i:02d}" for i in range(40)]
CONTEXT = 64
EVAL = ["eval.niah_samples=2", "eval.ruler_samples=2", "eval.probe_samples=8", "eval.niah_lengths=[1.0]",
        "eval.ruler_tasks=[niah_single]"]


def word_tokenizer(path, words=WORDS, split=tk.pre_tokenizers.Whitespace) -> str:
    """A word-level tokenizer.json: ids 0..4 the pipeline's specials, then one id per word."""
    vocab = {s: i for i, s in enumerate(["<pad>", "<bos>", "<def>", "<qry>", "<sep>", "<unk>"])}
    vocab |= {w: len(vocab) + i for i, w in enumerate(words)}
    vocab |= {w: len(vocab) + i for i, w in enumerate("one of the special magic numbers for is what mentioned in "
                                                      "provided text are all value var . : = ?".split())}
    vocab |= {str(d): len(vocab) + d for d in range(10)}
    tok = tk.Tokenizer(tk.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = split()
    tok.save(str(path))
    return str(path)


def documents(n: int, seed: int = 0) -> list[str]:
    """Documents of 5..100 words; a third are long (>= CONTEXT // 2 tokens)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(CONTEXT // 2, 100) if i % 3 == 0 else
                                               rng.integers(5, CONTEXT // 2 - 1)))) for i in range(n)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three corpora on disk (a saved dataset for long documents, jsonl for short ones, parquet for val) and a
    tokenizer file."""
    root = tmp_path_factory.mktemp("inputs")
    datasets.Dataset.from_dict({"text": documents(300, 1)}).save_to_disk(str(root / "long_ds"))
    docs = documents(600, 2)
    for i in range(4):
        (root / f"short_{i}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[i::4]))
    import pyarrow as pa

    pq.write_table(pa.table({"body": documents(80, 3)}), root / "val.parquet")
    return root, word_tokenizer(root / "tok.json")


def two_corpus_overrides(inputs, **extra) -> list[str]:
    root, tok = inputs
    over = ["data=hf", f"scale.context={CONTEXT}", "data.n_train_seqs=60", "data.n_val_seqs=6",
            f"data.tokenizer.path={tok}", "data.tokenizer.vocab_size=null", "data.corpora.main=null",
            f"+data.corpora.long={{role: train, hf: {{name: '{root / 'long_ds'}'}}, take: {{long: 0.5}}, groups: 3}}",
            f"+data.corpora.short={{role: train, files: ['{root}/short_*.jsonl'], take: {{short: 0.5}}, groups: 3}}",
            f"+data.corpora.val={{role: val, files: ['{root}/val.parquet'], text_field: body, take: {{short: 1.0}}}}",
            *EVAL]
    return over + [f"{k}={v}" for k, v in extra.items()]


def digests(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def one_worker(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("w1")
    cfg = load_config("smoke", overrides=two_corpus_overrides(inputs))
    return cfg, out, prepare(cfg, out, workers=1)


def test_shards_do_not_depend_on_the_number_of_processes(one_worker, tmp_path, monkeypatch):
    cfg, out, m = one_worker
    monkeypatch.setattr(groups, "READ_CHARS", 500)  # many small batches in flight, consumed out of step
    monkeypatch.setattr(groups, "FLUSH_ROWS", 1)
    assert prepare(cfg, tmp_path / "w3", workers=3) == m
    assert digests(tmp_path / "w3") == digests(out)
    assert m["mix"]["train"]["long_share"] == 0.5 and m["sequences"] == {"train": 60, "val": 6}
    assert {e["corpus"] for e in m["splits"]["train"]} == {"long", "short"}
    assert len(list((out / "groups").glob("*/*.json"))) == 7  # 3 + 3 + 1 groups


def test_rows_hold_whole_documents_of_their_class_in_corpus_order(one_worker, inputs):
    cfg, out, m = one_worker
    tok = tk.Tokenizer.from_file(inputs[1])
    for c in corpora.corpora(cfg.data):
        for g in range(c.groups):
            record = json.loads((out / "groups" / c.name / f"{g:05d}.json").read_text())
            expected = {"long": [], "short": []}
            for text in corpora.group_texts(c, g):
                ids = tok.encode(text, add_special_tokens=False).ids
                expected["long" if len(ids) >= CONTEXT // 2 else "short"].append(ids)
            for s in record["streams"]:
                flat = np.load(out / s["tokens"]["file"]).ravel()
                assert flat[0] == BOS or len(flat) == 0
                pieces = np.split(flat, np.flatnonzero(flat == BOS))[1:]
                want = expected[s["class"]]
                assert [list(p[1:]) for p in pieces[:-1]] == want[:len(pieces) - 1]  # no document lost or repeated
                assert list(pieces[-1][1:]) == want[len(pieces) - 1][:len(pieces[-1]) - 1]  # the last one cut
                assert s["docs"] >= len(pieces)


KILLER = """
import os, signal, sys
from hybridlab.config import load_config
from hybridlab.data import groups, shards
from hybridlab.data.prepare import prepare

def main():
    groups.FLUSH_ROWS = 1
    append, calls = shards.NpyWriter.append, []

    def dying_append(self, rows):  # SIGKILL in the middle of group 1 of the short corpus
        append(self, rows)
        if "short/00001_" in str(self.path):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    shards.NpyWriter.append = dying_append
    prepare(load_config("smoke", overrides=sys.argv[2:]), sys.argv[1], workers=2)

if __name__ == "__main__":
    main()
"""


def test_a_killed_preparation_resumes_keeping_finished_groups(one_worker, inputs, tmp_path):
    cfg, reference, m = one_worker
    out = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(out), *two_corpus_overrides(inputs)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    done = sorted(p.relative_to(out).as_posix() for p in (out / "groups").glob("*/*.json"))
    assert done == ["groups/long/00000.json", "groups/long/00001.json", "groups/long/00002.json",
                    "groups/short/00000.json"]
    assert list((out / "groups" / "short").glob(".00001_*.tmp")) and not (out / "manifest.json").exists()
    kept = {p: p.stat().st_mtime_ns for p in [*(out / "groups" / "long").iterdir(),
                                              *(out / "groups" / "short").glob("00000*")]}
    assert prepare(cfg, out, workers=1) == m
    assert digests(out) == digests(reference)  # nothing lost, nothing twice, no temporary file left
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished groups were not redone


# Peak RSS: this process's VmHWM (reset by exec, unlike ru_maxrss, which a child inherits from the forking
# parent, here pytest); the tokenizer processes' ru_maxrss (an upper bound: it includes this process's RSS at fork).
MEMORY = """
import json, re, resource, sys
from pathlib import Path
from hybridlab.config import load_config
from hybridlab.data.prepare import prepare

def main():
    m = prepare(load_config("smoke", overrides=sys.argv[2:]), sys.argv[1], workers=2)
    hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"rss_mb": hwm / 1024, "workers_rss_mb": workers, "tokens": m["tokens"]["train"]}))

if __name__ == "__main__":
    main()
"""
RSS_LIMIT_MB = 110


@pytest.mark.slow
def test_memory_stays_below_a_limit_smaller_than_the_corpus(tmp_path):
    words = [f"w{i:02d}" + "x" * 77 for i in range(40)]  # long words: many bytes per token, a fast test
    rng = np.random.default_rng(0)
    size = 0
    with open(tmp_path / "big.jsonl", "w") as f:
        while size < 1.2 * RSS_LIMIT_MB * 2**20:
            doc = " ".join(rng.choice(words, size=int(rng.integers(100, 1500))))
            f.write(json.dumps({"text": doc}) + "\n")
            size += len(doc)
    (tmp_path / "run.py").write_text(MEMORY)
    over = ["data=files", f"data.corpora.main.files=[{tmp_path}/big.jsonl]", "data.corpora.main.val_fraction=0.01",
            f"data.tokenizer.path={word_tokenizer(tmp_path / 'tok.json', words, tk.pre_tokenizers.WhitespaceSplit)}",
            "data.tokenizer.vocab_size=null",
            "scale.context=1024", "data.n_train_seqs=100000", "data.n_val_seqs=2", *EVAL]
    proc = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "out"), *over],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    used = json.loads(proc.stdout.strip().splitlines()[-1])
    assert used["tokens"] > 200_000
    assert used["rss_mb"] < RSS_LIMIT_MB and used["workers_rss_mb"] < RSS_LIMIT_MB, (used, size / 2**20)


def test_split_rows_index_like_a_concatenation(tmp_path):
    rng = np.random.default_rng(0)
    parts = []
    for i, n in enumerate([3, 1, 5, 2]):
        with NpyWriter(tmp_path / f"p{i}.npy", np.uint32, 7) as w:
            for _ in range(n):
                w.append(rng.integers(0, 2**32, size=(1, 7), dtype=np.uint64).astype(np.uint32))
        parts.append(np.load(tmp_path / f"p{i}.npy", mmap_mode="r")[1 if i == 2 else 0:])
    rows, ref = SplitRows(parts), np.concatenate(parts)
    assert rows.shape == ref.shape and rows.dtype == np.uint32 and (np.asarray(rows) == ref).all()
    for i in range(-len(ref), len(ref)):
        assert (rows[i] == ref[i]).all() and isinstance(rows[i], np.memmap)
    for index in (slice(2, 8), slice(None, None, 3), slice(9, 2, -2), [0, 9, 4, 4], np.array([[1, 2], [3, 0]]),
                  ref[:, 0] % 2 == 0, (slice(1, 6), slice(2, 5)), (4, slice(None, 3))):
        assert (rows[index] == ref[index]).all()
    with pytest.raises(IndexError):
        rows[len(ref)]


def test_a_killed_writer_leaves_no_shard(tmp_path):
    with pytest.raises(RuntimeError), NpyWriter(tmp_path / "a.npy", np.uint16, 4) as w:
        w.append(np.ones((2, 4)))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_apportion_is_proportional_and_exact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = list(rng.integers(0, 50, size=int(rng.integers(1, 8))))
        total = int(rng.integers(0, sum(sizes) + 1))
        take = mix.apportion(total, sizes)
        assert sum(take) == total and all(0 <= t <= s for t, s in zip(take, sizes, strict=True))
        assert all(abs(t - total * s / max(1, sum(sizes))) < 1 + 1e-9 for t, s in zip(take, sizes, strict=True))


def test_a_stream_that_runs_short_scales_the_split_and_keeps_its_shares(inputs, tmp_path):
    cfg = load_config("smoke", overrides=two_corpus_overrides(inputs, **{"data.n_train_seqs": 4000}))
    m = prepare(cfg, tmp_path)
    report = m["mix"]["train"]
    assert report["fulfilled"] < 1 and report["long_share"] == 0.5 and m["sequences"]["train"] < 4000
    short = next(s for s in report["streams"] if s["class"] == "short")
    assert short["rows"] in (short["available_rows"], report["rows"] // 2)


def test_training_on_the_shards_equals_training_on_the_same_tokens_in_memory(one_worker, inputs, tmp_path,
                                                                             monkeypatch):
    torch = pytest.importorskip("torch")
    from hybridlab.train import run

    _, data, _ = one_worker
    tokens, _ = load_split(data, "train")
    assert isinstance(tokens, SplitRows)  # several group shards, memory-mapped
    cfg = load_config("smoke", "swa128", 0, [*two_corpus_overrides(inputs), "train.steps=6",
                                             "train.batch_size=4", "train.micro_batch_size=2", "train.n_checkpoints=1",
                                             "train.warmup_steps=1", "train.log_every=1"])
    torch.set_num_threads(1)
    mapped = run.train(cfg, data, tmp_path / "mapped")
    in_memory = np.array(np.asarray(tokens))
    monkeypatch.setattr(run, "load_split", lambda folder, split: (in_memory, None))
    plain = run.train(cfg, data, tmp_path / "plain")
    assert mapped["final_loss"] == plain["final_loss"]
    a, b = (torch.load(next((tmp_path / d / "ckpt").glob("*.pt")), weights_only=True)["model"]
            for d in ("mapped", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_paper_config_names_the_corpora_and_a_one_to_one_mix():
    cfg = load_config("paper")
    d = cfg.data
    streams = corpora.split_streams(d)
    assert streams["train"] == [("long", "long", 0.5), ("short", "short", 0.5)]
    assert d.corpora.c4.hf.name == "allenai/c4" and d.corpora.c4.hf.split == "validation"
    assert d.corpora.govreport.role == "longppl" and "govreport" in d.corpora.govreport.hf.name
    assert d.tokenizer.hub and d.tokenizer.vocab_size == 73448 and len(d.tokenizer.revision) == 40
    assert len(corpora.group_ids(d)) == d.corpora.long.groups + d.corpora.short.groups + 2
    assert corpora.group_ids(load_config("smoke").data) == []  # the synthetic corpus has no groups
    tokens = d.n_train_seqs * cfg.scale.context
    assert tokens >= 1000 * 104_424_320  # S4 at k = 1000, the largest budget, without repetition


def test_the_paper_dry_run_plans_the_data_stage(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    snakemake = os.path.join(os.path.dirname(sys.executable), "snakemake")
    if not os.path.exists(snakemake):
        pytest.skip("snakemake is not installed")
    proc = subprocess.run([snakemake, "-n", "-s", os.path.join(root, "Snakefile"), "--directory", str(tmp_path),
                           "--config", "scale=paper", "--cores", "8"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    counts = dict(line.split()[:2] for line in textwrap.dedent(out.split("Job stats:")[1]).splitlines()[3:]
                  if len(line.split()) == 2 and line.split()[1].isdigit())
    assert counts["prepare_tokenizer"] == "1" and counts["prepare_group"] == "514" and counts["prepare_data"] == "1"
    assert "rule prepare_group:" in out and "mem_mb=" in out and "runtime=" in out
    assert "output: results/paper/data/groups/long/00000.json" in out
