"""A user's haystack file: checked as a readable UTF-8 text file with `~` expanded, hashed into the manifest, an
input of the data rule; needles go between sentences of the text, never inside a word."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hybridlab.config import ConfigError, load_config
from hybridlab.data.evalsets import TextLanguage, haystack_text, make_evalset, sentence_cuts
from hybridlab.data.prepare import prepare

pytest.importorskip("tokenizers")
ROOT = Path(__file__).resolve().parents[2]
WORDS = ("lighthouse keeper watched tides harbour northern winter evening stone bridge quietly remembered "
         "wonderful extraordinary storms across grey").split()


def essay(n: int = 120, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(" ".join(rng.choice(WORDS, size=int(rng.integers(5, 12)))).capitalize() + "." for _ in range(n))


def test_bad_haystack_files_name_the_key_and_the_problem(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin.txt").write_bytes("caf\xe9 au lait.\n".encode("latin-1"))
    (tmp_path / "folder").mkdir()
    cases = {"folder": "not a folder", "empty.txt": "empty", "latin.txt": "not UTF-8", "missing.txt": "existing"}
    for name, why in cases.items():
        with pytest.raises(ConfigError, match=f"eval.haystack_file.*{why}"):
            haystack_text(str(tmp_path / name))
        with pytest.raises(ConfigError, match="eval.haystack_file"):  # the config check says the same
            load_config("smoke", overrides=[f"eval.haystack_file={tmp_path / name}"])
    assert "byte 3, line 1" in str(pytest.raises(ConfigError, haystack_text, str(tmp_path / "latin.txt")).value)


def test_a_home_relative_haystack_is_read_and_hashed_into_the_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "essay.txt").write_text(essay())
    over = ["scale.context=64", "data.n_train_seqs=8", "data.n_val_seqs=4", "eval.niah_samples=3",
            "eval.ruler_tasks=[niah_single]", "eval.ruler_samples=2", "eval.probe_samples=0",
            "eval.niah_lengths=[1.0]", "eval.haystack_file='~/essay.txt'"]  # Hydra wants ~ quoted
    m = prepare(load_config("smoke", overrides=over), tmp_path / "data")
    entry = m["haystack_file"]
    assert entry["path"] == str(tmp_path / "essay.txt") and len(entry["sha256"]) == 64
    (tmp_path / "essay.txt").write_text(essay(seed=1))  # an edited haystack rebuilds the eval sets
    again = prepare(load_config("smoke", overrides=over), tmp_path / "data")
    assert again["haystack_file"]["sha256"] != entry["sha256"] and again["fingerprint"] != m["fingerprint"]


def test_sentence_cuts_move_to_the_nearest_boundary():
    ends = np.zeros(20, dtype=np.int8)
    ends[[1, 7, 9, 15]] = 1  # word ends
    ends[[4, 11]] = 2  # sentence ends: boundaries at 0, 5 and 12
    assert sentence_cuts([0, 3, 8, 9, 19], ends) == [0, 5, 5, 12, 12]
    ends[[4, 11]] = 1  # no sentence ends: word boundaries at 0, 2, 5, 8, 10, 12, 16
    assert sentence_cuts([3, 7, 19], ends) == [2, 8, 16]
    assert sentence_cuts([3, 7], None) == [3, 7] and sentence_cuts([3], np.zeros(5, np.int8)) == [3]


@pytest.mark.parametrize("task", ["niah_single", "niah_multikey", "niah_single_repeat"])
def test_needles_sit_between_sentences_of_the_text(task):
    from hybridlab.data.real import train_bpe

    text = essay(200)
    tok = train_bpe([text], 300)
    assert len(tok.encode(" extraordinary")) > 1  # words span several tokens: a cut could split one
    lang = TextLanguage(tok, tok.encode(text), seed=0)
    ds = make_evalset(lang, task, 512, 12, depth_range=(0.13, 0.77))
    needle_head = tok.encode(lang.TEMPLATES["fact"][0].format(k="x"))[:3]
    needles = after_sentence = 0
    for row in ds.tokens:
        hits = [i for i in range(1, len(row) - 3) if (row[i:i + 3] == needle_head).all()]
        assert hits
        for i in hits:
            before, after = tok.decode(row[1:i]), tok.decode(row[i:])
            assert before == "" or before[-1] == " " or after[0] == " ", before[-30:]  # never inside a word
            after_sentence += before == "" or before.rstrip().endswith(".")
            needles += 1
        assert tok.decode(row[1:6]).lstrip()[:1].isupper()  # the haystack starts at a sentence
    # a window with no sentence end before its question takes a word boundary (a few of niah_single's here)
    assert after_sentence >= 0.8 * needles and needles >= len(ds.tokens)


@pytest.mark.slow
def test_the_data_rule_takes_the_haystack_as_input(tmp_path):
    hay = tmp_path / "hay.txt"
    hay.write_text(essay())
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "-s", str(ROOT / "Snakefile"), "--directory",
           str(tmp_path), "--config", f"results_dir={tmp_path}/results", f"paper_dir={tmp_path}/paper",
           f"overrides=[eval.haystack_file={hay}]"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    block = out.stdout[out.stdout.index("rule prepare_data"):]
    assert f"input: {hay}" in block.split("\n\n")[0]
    bad = subprocess.run([*cmd[:-1], f"overrides=[eval.haystack_file={tmp_path}]"], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode != 0 and "eval.haystack_file" in bad.stdout + bad.stderr
