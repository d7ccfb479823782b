"""The reference-model LongPPL end to end: a random LlamaForCausalLM from a config (a stand-in for Llama-3.1-8B)
selects the key tokens of a real-text validation split during data preparation, and evaluating a checkpoint
gives log LongPPL as its mean loss over exactly those tokens."""

import json

import numpy as np
import pytest
import torch

from hybridlab.config import load_config
from hybridlab.data.longppl import CausalLMScorer, key_token_mask
from hybridlab.data.prepare import prepare
from hybridlab.data.shards import load_key_mask, load_split
from hybridlab.evals.evaluate import evaluate_run, load_val, loss_metrics, token_losses
from hybridlab.models import build_model
from hybridlab.train.lit import save_weights

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
CONTEXT, WINDOW, VOCAB = 256, 16, 500


def corpus(n: int = 120) -> list[str]:
    rng = np.random.default_rng(0)
    words = "the keeper watched tides across a grey harbour while winter storms came north again".split()
    return [" ".join(" ".join(rng.choice(words, int(rng.integers(5, 11)))).capitalize() + "."
                     for _ in range(int(rng.integers(3, 30)))) for _ in range(n)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("longppl")
    (root / "docs.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in corpus()))
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(root / "ref")
    over = ["data=files", f"data.corpora.main.files=[{root}/docs.jsonl]", f"scale.context={CONTEXT}",
            "data.n_train_seqs=16", "data.n_val_seqs=4", "data.corpora.main.val_fraction=0.2",
            f"data.tokenizer.vocab_size={VOCAB}",
            f"data.longppl.reference={root / 'ref'}", f"data.longppl.short_window={WINDOW}",
            "data.longppl.gain_threshold=0.0", "data.longppl.logprob_floor=null", "data.longppl.block=1",
            "eval.niah_samples=4", "eval.ruler_tasks=[niah_single]", "eval.ruler_samples=2", "eval.probe_samples=0",
            "eval.niah_lengths=[1.0]", "eval.val_batches=1", "eval.batch_size=4", "eval.gen_extra_tokens=2"]
    cfg = load_config("smoke", "swa128", 0, over)
    return cfg, root, prepare(cfg, root / "data")


def test_the_reference_models_mask_is_written_for_the_val_split(prepared):
    cfg, root, m = prepared
    assert m["longppl"]["reference"] == str(root / "ref") and m["key_tokens"]["val"] > 0
    tokens = np.asarray(load_split(root / "data", "val")[0])
    ref = transformers.AutoModelForCausalLM.from_pretrained(root / "ref", local_files_only=True).eval()
    expected = key_token_mask(CausalLMScorer(ref, block=1), tokens, WINDOW, 0.0, None)
    mask = load_key_mask(root / "data", "val")
    assert mask.shape == tokens.shape and (mask == expected).all()
    assert 0 < mask.mean() < 1 and not mask[:, :WINDOW + 1].any()  # the first window has no long context


def test_evaluation_reports_the_loss_over_the_key_tokens(prepared):
    cfg, root, m = prepared
    run = root / "run"
    (run / "ckpt").mkdir(parents=True)
    torch.manual_seed(1)
    model = build_model(cfg, m["vocab_size"]).eval()
    save_weights(model, run / "ckpt", 1, CONTEXT * 16)
    (run / "train_done.json").write_text("{}")
    ev = evaluate_run(cfg, root / "data", run)
    value = ev[ev["metric"] == "log_longppl"]["value"].item()
    val = load_val(cfg, root / "data")
    losses = token_losses(model, val.tokens, 4, torch.device("cpu"))
    key = torch.from_numpy(val.key[:, 1:])
    assert np.isfinite(value) and value == pytest.approx(losses[key].mean().item(), rel=1e-6)
    assert value == pytest.approx(loss_metrics(losses, val)["log_longppl"], rel=1e-6)
    scores = ev[ev["metric"].isin(["niah_acc", "ruler_niah_single"])]["value"]
    assert len(scores) == 2 and scores.between(0, 1).all()  # generated, scored on the whole answer string
