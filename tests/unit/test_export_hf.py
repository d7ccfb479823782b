"""Export to Hugging Face format: every kind of layer round-trips through safetensors and the exported model code
(AutoModelForCausalLM, trust_remote_code) with logits equal to the project's model in fp32; the tokenizer loads
with AutoTokenizer and gives the data folder's ids; the wrapper's inputs_embeds, hidden states, attention
probabilities and receptive-field constraint agree with HybridLM's own."""

import json

import numpy as np
import pytest
import torch

from hybridlab.config import load_config
from hybridlab.data.synthetic import CorpusSpec
from hybridlab.export.hf import export_model
from hybridlab.export.tokenizer import synthetic_tokenizer
from hybridlab.models import Receptive, build_model

transformers = pytest.importorskip("transformers")
VARIANTS = ["full", "swa128", "swa128_headwise", "swa128_nope", "gdn", "mamba2", "lightning"]


def exported(variant: str, out, overrides=()):
    cfg = load_config("smoke", variant, 0, list(overrides))
    vocab = CorpusSpec.from_config(cfg.data).vocab
    torch.manual_seed(0)
    model = build_model(cfg, vocab.size).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # not the initialisation: the weights must really be loaded
    export_model(model, synthetic_tokenizer(vocab), out, 256, {"variant": variant, "step": 3, "tokens": 768})
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, local_files_only=True)
    return model, hf.eval(), vocab


@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_logits_equal_the_projects_model(variant, tmp_path):
    model, hf, vocab = exported(variant, tmp_path / "hf")
    x = torch.randint(vocab.size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=0, atol=1e-5)
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "modeling_hybridlab.py", "configuration_hybridlab.py",
            "tokenizer.json", "tokenizer_config.json"} <= files
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "hybridlab" and config["checkpoint"]["tokens"] == 768
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}


def test_the_wrapper_speaks_the_transformers_interface(tmp_path):
    model, hf, vocab = exported("swa128", tmp_path / "hf", ["variant.sinks=2"])
    x = torch.randint(vocab.size, (2, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = hf(x, output_hidden_states=True, output_attentions=True, labels=x)
        emb = hf(inputs_embeds=model.embed(x)).logits
        logits, hidden = model(x, return_hidden=True)
        assert torch.equal(emb, out.logits) and len(out.hidden_states) == len(hidden) == 5
        assert out.loss == pytest.approx(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                                                           x[:, 1:].flatten()).item(), rel=1e-5)
        full = next(i for i, b in enumerate(model.blocks) if b.mixer.windows[0] is None)
        capture = {full: {}}
        model(x, capture=capture)
    assert out.attentions[0] is not None and len(out.attentions) == 4
    for i, a in enumerate(out.attentions):
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 48))
        window = model.blocks[i].mixer.windows[0]
        if window is not None:  # a windowed head sees its window and the 2 sink keys only
            assert (a[:, :, 40, 3:40 - window + 1] == 0).all() and (a[:, :, 40, :2] > 0).all()
    q, k = capture[full]["q"], capture[full]["k"]  # a full layer: plain causal softmax attention
    future = torch.ones(48, 48, dtype=torch.bool).triu(1)
    ref = ((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5).masked_fill(future, -torch.inf)
    torch.testing.assert_close(out.attentions[full], ref.softmax(-1))
    hf.config.receptive_full = 16
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x, receptive=Receptive(full=16)), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="padded"):
        hf(x, attention_mask=torch.ones_like(x).tril())


def test_tokenizers_load_with_autotokenizer(tmp_path):
    _, _, vocab = exported("full", tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("<bos> k0 v3 w7")["input_ids"] == [1, 5, 5 + vocab.n_keys + 3, 5 + vocab.n_keys + vocab.n_values + 7]
    assert tok.bos_token_id == tok.eos_token_id == 1 and tok.pad_token_id == 0


def test_a_text_checkpoint_exports_its_data_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    from hybridlab.cli import main
    from hybridlab.data.real import load_tokenizer
    from hybridlab.train.lit import save_weights

    rng = np.random.default_rng(0)
    words = "the keeper watched tides across a grey harbour while winter storms came".split()
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"text": " ".join(rng.choice(words, 60))})
                                                  for _ in range(60)))
    over = ["data=files", f"data.corpora.main.files=[{tmp_path}/docs.jsonl]", "scale.context=256",
            "data.n_train_seqs=4", "data.n_val_seqs=2", "data.corpora.main.val_fraction=0.2",
            "data.tokenizer.vocab_size=300", "eval.niah_samples=2", "eval.ruler_tasks=[]", "eval.probe_samples=0",
            "eval.niah_lengths=[1.0]"]
    assert main(["prepare-data", "--out", str(tmp_path / "data"), *over]) == 0
    cfg = load_config("smoke", "full", 0, over)
    torch.manual_seed(0)
    model = build_model(cfg, 300).eval()
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    save_weights(model, tmp_path / "run" / "ckpt", 1, 256)
    (tmp_path / "run" / "train_done.json").write_text("{}")
    assert main(["export-hf", "--variant", "full", "--data", str(tmp_path / "data"), "--run", str(tmp_path / "run"),
                 "--out", str(tmp_path / "hf"), *over]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = load_tokenizer(tmp_path / "data" / "tokenizer.json")
    text = "the grey harbour watched winter storms"
    assert hf_tok(text)["input_ids"] == ours.encode(text).tolist() and hf_tok.bos_token_id == ours.bos
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    x = torch.from_numpy(ours.encode(text))[None]
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=0, atol=1e-5)
