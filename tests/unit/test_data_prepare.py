"""The data stage on the synthetic corpus: reproducible shards and eval sets, verification on load, idempotence,
eval sets that are well-formed and absent from the training shards."""

import hashlib
import os
import shutil

import numpy as np
import pytest

from hybridlab.config import load_config
from hybridlab.data.evalsets import TASKS, load_evalset
from hybridlab.data.niah import load_niah
from hybridlab.data.prepare import prepare
from hybridlab.data.shards import MANIFEST, load_key_mask, load_split
from hybridlab.data.synthetic import DEF, QRY
from hybridlab.io import CorruptFileError, read_json
from hybridlab.models.layout import build_layout

SMALL = ["scale.context=128", "data.n_train_seqs=300", "data.n_val_seqs=8", "eval.niah_samples=6",
         "eval.ruler_samples=6", "eval.probe_samples=16", "data.copies_per_token=0.01"]


@pytest.fixture(scope="module")
def cfg():
    return load_config("smoke", overrides=SMALL)


@pytest.fixture(scope="module")
def data(cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    return out, prepare(cfg, out)


def digests(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.npy"))}


def test_same_seed_gives_byte_identical_folders(cfg, data, tmp_path, monkeypatch):
    folder, manifest = data
    other = prepare(cfg, tmp_path / "b")
    assert other == manifest
    a, b = digests(folder), digests(tmp_path / "b")
    assert a == b
    assert sum(k.startswith(("evalsets/", "niah_")) for k in a) == 4 * 7 * len(TASKS) + 4 * 5  # NIAH: 5 arrays
    monkeypatch.setattr("hybridlab.data.prepare.SEQS_PER_SHARD", 128)  # the rows do not depend on sharding
    sharded = prepare(cfg, tmp_path / "c")
    assert len(sharded["splits"]["train"]) == 3 and len(manifest["splits"]["train"]) == 1
    rows = [np.asarray(load_split(f, "train")[0]) for f in (folder, tmp_path / "c")]
    assert (rows[0] == rows[1]).all()


def test_prepare_is_idempotent(cfg, data):
    folder, manifest = data
    stamp = (folder / MANIFEST).stat().st_mtime_ns
    assert prepare(cfg, folder) == manifest
    assert (folder / MANIFEST).stat().st_mtime_ns == stamp


def test_manifest_records_provenance(data):
    _, m = data
    assert m["source"] == "synthetic" and m["seed"] == 1234 and len(m["tokenizer"]["hash"]) == 16
    assert m["tokens"] == {"train": 300 * 128, "val": 8 * 128} and m["key_tokens"]["train"] > 0
    assert all(len(e["tokens"]["sha256"]) == 64 for e in m["splits"]["train"])


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_a_damaged_shard_is_refused_naming_the_file(data, tmp_path, damage):
    folder, m = tmp_path / "d", data[1]
    shutil.copytree(data[0], folder)
    path = folder / m["splits"]["train"][0]["tokens"]["file"]
    if damage == "truncate":
        os.truncate(path, path.stat().st_size - 100)
    else:
        raw = bytearray(path.read_bytes())
        raw[-7] ^= 1
        path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=path.name):
        load_split(folder, "train")
    if damage == "truncate":  # even unverified, a short file is not read as data
        with pytest.raises(CorruptFileError, match=path.name):
            load_split(folder, "train", verify=False)
    es = folder / m["evalsets"]["vt"]["64"]["tokens"]["file"]
    es.write_bytes(es.read_bytes()[:-1])
    with pytest.raises(CorruptFileError, match=es.name):
        load_evalset(folder, "vt", 64)


def test_eval_sets_are_well_formed(data):
    folder, m = data
    for task in TASKS:
        for length in (32, 64, 128, 256):
            e = load_evalset(folder, task, length)
            n = len(e.tokens)
            assert e.tokens.shape == (6 if task != "probe" else 16, length)
            has = e.answer_pos >= 0
            if task == "probe":
                assert not has.any() and set(e.label) <= set(range(8)) and (e.query_pos == length - 1).all()
            else:
                assert (e.label == -1).all() and has[:, 0].all()
                i, j = np.nonzero(has)
                assert (e.tokens[i, e.answer_pos[i, j]] == e.answer[i, j]).all()
                assert (e.tokens[np.arange(n), e.query_pos + 1] == e.answer[:, 0]).all()
            # the first answer token is the value stored in its needle: `DEF key value`
            assert (e.tokens[np.arange(n), e.needle_pos[:, 0] - 2] == DEF).all()
            if task in ("niah_single", "niah_single_repeat", "niah_multikey", "niah_multiquery", "probe"):
                assert (e.tokens[np.arange(n), e.needle_pos[:, 0]] == e.answer[:, 0]).all()
                key = e.tokens[np.arange(n), e.needle_pos[:, 0] - 1]
                q = e.query_pos
                assert (e.tokens[np.arange(n), q] == key).all() and (e.tokens[np.arange(n), q - 1] == QRY).all()
    niah = load_niah(folder, 128)
    assert (niah.tokens[np.arange(6), niah.needle_pos] == niah.answer).all() and niah.tokens.dtype == np.int64


def test_probe_classes_map_to_fixed_candidates(data):
    folder, _ = data
    e = load_evalset(folder, "probe", 128)
    cand = {}
    for label, value in zip(e.label, e.answer[:, 0], strict=True):
        assert cand.setdefault(label, value) == value
    assert len(set(cand.values())) == len(cand) >= 6


def test_no_eval_sample_appears_in_train(data):
    folder, _ = data
    train = np.asarray(load_split(folder, "train")[0])
    w = 24  # a needle with 10 tokens of its haystack on each side
    grams = {train[r, s:s + w].tobytes() for r in range(len(train)) for s in range(train.shape[1] - w + 1)}
    probes = 0
    for task in TASKS:
        for length in (32, 64, 128, 256):
            e = load_evalset(folder, task, length)
            tok = e.tokens.astype(train.dtype)
            for i in range(len(tok)):
                if length <= train.shape[1]:
                    assert tok[i].tobytes() not in {train[r, :length].tobytes() for r in range(len(train))}
                for p in e.needle_pos[i][e.needle_pos[i] >= 0]:
                    s = int(np.clip(p - w // 2, 0, length - w))
                    assert tok[i, s:s + w].tobytes() not in grams
                    probes += 1
    assert probes > 300


def test_key_mask_matches_dist(data):
    folder, m = data
    _, dist = load_split(folder, "val")
    mask = load_key_mask(folder, "val")
    assert (mask == (np.asarray(dist) >= m["long_threshold"])).all()


def test_a_changed_config_rebuilds_and_removes_stale_files(data, tmp_path):
    tmp_path = tmp_path / "d"
    shutil.copytree(data[0], tmp_path)
    smaller = load_config("smoke", overrides=[*SMALL, "eval.niah_lengths=[0.5]", "eval.ruler_tasks=[vt]"])
    m = prepare(smaller, tmp_path)
    assert set(m["evalsets"]) == {"vt", "probe"}
    listed = {p.name for p in tmp_path.rglob("*.npy")}
    assert not any(n.startswith("niah_128") for n in listed) and read_json(tmp_path / MANIFEST) == m


def test_needles_lie_beyond_the_largest_window_of_the_comparison(data):
    """Depths in [1/4, 3/4]: at the training length every needle is more than a quarter of the haystack before
    the question, beyond SWA-2048's window (16 tokens at context 128), so no SWA layer can answer alone."""
    folder, _ = data
    cfg = load_config("smoke", "swa2048", 0, SMALL)
    window = max(w for spec in build_layout(cfg.variant, cfg.model, cfg.scale) for w in spec.windows if w)
    ds = load_niah(folder, 128)
    distance = 127 - ds.needle_pos
    assert distance.min() > window and ds.depth.min() >= 0.25 and ds.depth.max() <= 0.75
    probe = load_evalset(folder, "probe", 128)
    assert (127 - probe.needle_pos[:, 0]).min() > window


def test_a_depth_range_that_reaches_into_a_window_is_a_config_error():
    from hybridlab.config import ConfigError

    with pytest.raises(ConfigError, match=r"eval.niah_depth_range.*largest window \(32 tokens\)"):
        load_config("smoke", "swa2048", 0, ["eval.niah_depth_range=[0.25,0.9]"])
    with pytest.raises(ConfigError, match="eval.niah_depth_range"):
        load_config("smoke", "full", 0, ["eval.niah_depth_range=[0.8,0.2]"])
