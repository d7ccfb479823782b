"""Head-level analyses with known answers, on a hand-built one-layer model whose head 0 copies the needle.

The model: values are tokens 0..7, keys 8..11, filler 12..; head 0 (full) puts its query on key tokens and its
key on value tokens, so the final key attends to the needle's value and copies its identity into the output;
head 1 is an SWA head (window 4) with the same Q/K but no value/output path, so it never sees the needle.
"""

import numpy as np
import pytest
import torch

from hybridlab.analysis.masking import mask_heads, masking_table
from hybridlab.analysis.retrieval import attention_heads, head_scores, heads_table, top_heads
from hybridlab.analysis.trajectory import CheckpointRecord, onset, onset_table, qk_weights, trajectory_table
from hybridlab.evals.evaluate import niah_accuracy
from hybridlab.models import HybridLM, LayerSpec, ModelShape

VOCAB, T, N = 40, 48, 24
VALUE_DIM, KEY_DIM, OUT = 16, 17, 20  # residual dims: "is a value", "is a key", copied value one-hot
CPU = torch.device("cpu")


def copy_model() -> HybridLM:
    shape = ModelShape(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, head_dim=16, d_ff=8)
    model = HybridLM(shape, [LayerSpec("attn", "full", rope=False, windows=(None, 4))])
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.zero_()
        emb = model.embed.weight
        for v in range(8):
            emb[v, v] = emb[v, VALUE_DIM] = 1.0
        emb[8:12, KEY_DIM] = 1.0
        for w in range(12, VOCAB):
            emb[w, 18 + w % 2] = 1.0
        attn = model.blocks[0].mixer
        w = attn.qkv.weight.view(3, 2, 16, 32)
        w[0, :, 0, KEY_DIM] = 2.0  # query: "I am a key" (both heads)
        w[1, :, 0, VALUE_DIM] = 2.0  # key: "I am a value" (both heads)
        for j in range(8):
            w[2, 0, j, j] = 1.0  # head 0 carries the value's identity
            attn.proj.weight[OUT + j, j] = 10.0
            model.lm_head.weight[j, OUT + j] = 1.0
    return model.eval()


class Niah:
    def __init__(self, seed: int = 0, n: int = N):
        rng = np.random.default_rng(seed)
        self.tokens = rng.integers(12, VOCAB, size=(n, T))
        self.needle_pos = rng.integers(2, T - 8, size=n)
        self.answer = rng.integers(1, 8, size=n)  # never 0: a silenced model predicts token 0
        self.tokens[np.arange(n), self.needle_pos] = self.answer
        self.tokens[:, -1] = rng.integers(8, 12, size=n)


def test_copy_head_scores_one_and_the_others_zero():
    model, ds = copy_model(), Niah()
    s = head_scores(model, ds.tokens, ds.needle_pos, batch=8, device=CPU)
    assert s["needle_mass"][0, 0] == pytest.approx(1.0, abs=1e-6)
    assert s["copy_score"][0, 0] == 1.0
    assert s["needle_mass"][0, 1] == 0.0 and s["copy_score"][0, 1] == 0.0  # SWA head: needle out of window
    assert s["entropy"][0, 0] < 1e-3
    assert s["entropy"][0, 1] == pytest.approx(np.log(4), abs=1e-5)  # uniform over its 4 visible keys
    assert top_heads(s, 2) == [(0, 0), (0, 1)]
    df = heads_table(model, s, {"variant": "v", "seed": 0, "step": 1, "tokens": 10}, T)
    assert set(df["metric"]) == {"needle_mass", "entropy", "entropy_norm", "copy_score"}
    assert df.groupby("head")["role"].first().to_dict() == {0: "full", 1: "efficient"}


def test_copy_score_needs_the_models_own_prediction():
    model, ds = copy_model(), Niah()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # attention unchanged, but the model now predicts token 0
    s = head_scores(model, ds.tokens, ds.needle_pos, batch=8, device=CPU)
    assert s["needle_mass"][0, 0] == pytest.approx(1.0, abs=1e-6)
    assert s["copy_score"][0, 0] == 0.0


def test_masking_the_copy_head_drops_accuracy_and_another_head_does_not():
    model, ds = copy_model(), Niah()
    assert niah_accuracy(model, ds, 8, CPU) == 1.0
    with mask_heads(model, {0: [0]}):
        assert niah_accuracy(model, ds, 8, CPU) < 0.2
    with mask_heads(model, {0: [1]}):
        assert niah_accuracy(model, ds, 8, CPU) == 1.0
    assert niah_accuracy(model, ds, 8, CPU) == 1.0  # hooks removed
    df = masking_table(model, {T: ds}, top=[(0, 0)], ks=[1], draws=2, seed=0, batch=8, device=CPU,
                       base={"variant": "v", "seed": 0, "step": 1, "tokens": 10})
    acc = df.set_index("heads")["value"]
    assert acc["none"] == 1.0 and acc["top"] < 0.2 and acc["random"] == 1.0


def test_trajectory_distances_vanish_at_the_final_checkpoint_and_onset_is_found():
    model, ds = copy_model(), Niah(n=8)
    final = model.blocks[0].mixer.qkv.weight.detach().clone()
    history = []
    for step, scale in ((1, 0.0), (2, 0.5), (3, 1.0)):
        with torch.no_grad():
            model.blocks[0].mixer.qkv.weight.copy_(final * scale)
        scores = head_scores(model, ds.tokens, ds.needle_pos, 8, CPU)
        history.append(CheckpointRecord({"step": step, "tokens": 100 * step}, scores, qk_weights(model)))
    traj = trajectory_table(history, [(0, 0)], {"variant": "v", "seed": 0}, T)
    last = traj[traj["step"] == 3].set_index("metric")["value"]
    assert (last[["q_l2", "k_l2", "q_rel_l2", "k_rel_l2"]] == 0).all()
    mid = traj[traj["step"] == 2].set_index("metric")["value"]
    assert mid["q_rel_l2"] == pytest.approx(0.5) and mid["k_rel_l2"] == pytest.approx(0.5)
    mass = traj[traj["metric"] == "needle_mass"].sort_values("step")["value"].to_numpy()
    assert mass[0] == pytest.approx(1 / T, rel=0.5) and mass[-1] > 0.99
    ons = onset_table(history, model, {"variant": "v", "seed": 0}, threshold=0.5)
    assert set(ons["selection"]) == {"strongest", "any_full"}
    strongest = ons[ons["selection"] == "strongest"].set_index("metric")
    assert (strongest["layer"] == 0).all() and (strongest["head"] == 0).all()
    assert strongest.loc["onset_step", "value"] == 2.0 and strongest["formed"].all()  # mass 0.86 at 0.5x
    assert attention_heads(model, "full") == [(0, 0)]


def test_onset_of_a_synthetic_trajectory():
    x = np.array([1.0, 10.0, 100.0, 1000.0])
    first, interp = onset(x, np.array([0.1, 0.3, 0.7, 0.9]), 0.5)
    assert first == 100.0 and interp == pytest.approx(10 ** 1.5)
    assert onset(x, np.array([0.6, 0.7, 0.8, 0.9]), 0.5) == (1.0, 1.0)
    assert onset(x, np.array([0.1, 0.2, 0.5, 0.4]), 0.5) == (float("inf"), float("inf"))  # must exceed


def test_the_authors_definition_sums_the_answer_span_at_the_second_to_last_token():
    """Needles of two value tokens: the key query splits its mass between them, so the first-token score is
    1/2 and the whole-answer score (the authors' span) is 1; at the second-to-last token (a filler word with
    no query) attention is uniform over its T - 1 keys, so the span holds 2 / (T - 1)."""
    model, ds = copy_model(), Niah()
    ds.tokens[np.arange(N), ds.needle_pos + 1] = ds.answer
    two = np.full(N, 2)
    first = head_scores(model, ds.tokens, ds.needle_pos, batch=8, device=CPU)
    answer = head_scores(model, ds.tokens, ds.needle_pos, batch=8, device=CPU, span="answer", needle_len=two)
    authors = head_scores(model, ds.tokens, ds.needle_pos, batch=8, device=CPU, span="answer", needle_len=two,
                          query_from_end=2)
    assert first["needle_mass"][0, 0] == pytest.approx(0.5, abs=1e-5)
    assert answer["needle_mass"][0, 0] == pytest.approx(1.0, abs=1e-5)
    assert authors["needle_mass"][0, 0] == pytest.approx(2 / (T - 1), abs=1e-5)
    with pytest.raises(ValueError, match="span"):
        head_scores(model, ds.tokens, ds.needle_pos, batch=8, device=CPU, span="all")
