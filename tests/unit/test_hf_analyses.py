"""The evaluation and every analysis on Hugging Face models: a random LlamaForCausalLM built from a config (and a
two-checkpoint trajectory of it), and the project's own smoke-size checkpoint exported to HF format. Tables have
their schemas and expected shapes; the retrieval score and G(d) equal the authors' definitions computed
directly with transformers (eager attention probabilities, gradients through inputs_embeds); an exported
checkpoint gives the same tables as the training run it came from."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hybridlab.analysis.schemas import RUN_FILES, TABLES
from hybridlab.cli import main
from hybridlab.config import load_config
from hybridlab.data.niah import load_niah
from hybridlab.data.shards import load_split
from hybridlab.models import build_model
from hybridlab.train.lit import save_weights

transformers = pytest.importorskip("transformers")
OVERRIDES = ["scale.context=64", "data.n_train_seqs=8", "data.n_val_seqs=8", "eval.niah_samples=8",
             "eval.niah_lengths=[1.0]", "eval.ruler_tasks=[niah_single]", "eval.ruler_samples=4",
             "eval.probe_samples=48", "eval.val_batches=1", "eval.gradinf_samples=2", "eval.masking_draws=2",
             "eval.masking_k=[1,2]",
             "eval.onset_threshold=1e-6"]  # random weights: every head's mass crosses this, so all trace
LAYERS, HEADS = 2, 4
COMMANDS = {"evaluate": "eval", "receptive": "receptive", "probe": "probe", "gradinf": "gradinf"}


def run_all(data: Path, run: Path, out: Path, variant: str) -> dict[str, Path]:
    args = ["--variant", variant, "--data", str(data), "--run", str(run), *OVERRIDES]
    paths = {kind: out / name for kind, name in RUN_FILES.items()}
    for cmd, kind in COMMANDS.items():
        assert main([cmd, "--out", str(paths[kind]), *args]) == 0, cmd
    extra = [f"--{k}={paths[k]}" for k in ("trajectory", "traced", "onset", "masking")]
    assert main(["analyze", "--out", str(paths["heads"]), *extra, *args]) == 0
    return paths


def llama(seed: int):
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS,
                                      num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hfdata")
    assert main(["prepare-data", "--out", str(root / "data"), *OVERRIDES]) == 0
    return root / "data"


@pytest.fixture(scope="module")
def llama_tables(data, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("llama")
    llama(0).save_pretrained(root / "run" / "tokens_200")
    early = llama(0)
    with torch.no_grad():
        for p in early.parameters():
            p.add_(0.02 * torch.randn_like(p))
    early.save_pretrained(root / "run" / "tokens_100")
    return root / "run" / "tokens_200", run_all(data, root / "run", root, "full")


def test_every_table_of_a_llama_trajectory_has_its_schema_and_shape(llama_tables):
    _, t = llama_tables
    for kind, columns in TABLES.items():
        df = pd.read_csv(t[kind])
        assert list(df.columns) == list(columns) and len(df) > 0, kind
    heads = pd.read_csv(t["heads"])
    assert sorted(heads["tokens"].unique()) == [100, 200]  # both checkpoints, named by their tokens
    assert len(heads) == 2 * LAYERS * HEADS * 4 and set(heads["role"]) == {"full"}
    traj = pd.read_csv(t["trajectory"])
    assert traj[["layer", "head"]].drop_duplicates().shape[0] == 4
    assert (traj[(traj["tokens"] == 200) & traj["metric"].str.endswith("l2")]["value"] == 0).all()
    assert (traj[(traj["tokens"] == 100) & (traj["metric"] == "q_rel_l2")]["value"] > 0).all()
    probe = pd.read_csv(t["probe"])
    assert len(probe) == LAYERS * 2 and probe["value"].between(0, 1).all()
    rec = pd.read_csv(t["receptive"])
    assert set(rec["constrained"]) == {"none", "full", "efficient"}
    loss = rec[rec["metric"] == "val_loss"].set_index(["constrained", "window"])["value"]
    assert (loss.loc["efficient"] == loss.loc[("none", 64)]).all()  # a Llama has no efficient layers
    assert (loss.loc["full"] != loss.loc[("none", 64)]).all()  # limiting its attention changes the loss
    g = pd.read_csv(t["gradinf"])
    assert g["distance"].tolist() == [1, 2, 4, 8, 16, 32, 64] and (g["value"] > 0).all()
    assert set(pd.read_csv(t["masking"])["heads"]) == {"none", "top", "random"}


def test_needle_mass_is_the_eager_attention_on_the_needle(llama_tables, data):
    final, t = llama_tables
    model = transformers.AutoModelForCausalLM.from_pretrained(final, attn_implementation="eager").eval()
    ds = load_niah(data, 64)
    with torch.no_grad():
        att = model(torch.from_numpy(ds.tokens), output_attentions=True).attentions
    heads = pd.read_csv(t["heads"])
    got = heads[(heads["tokens"] == 200) & (heads["metric"] == "needle_mass")].set_index(["layer", "head"])["value"]
    for layer in range(LAYERS):
        mass = att[layer][np.arange(len(ds.tokens)), :, -1, ds.needle_pos].mean(0)  # [heads]
        np.testing.assert_allclose(got.loc[layer].sort_index().to_numpy(), mass.numpy(), rtol=1e-4, atol=1e-6)


def test_gradient_influence_is_the_gradient_through_inputs_embeds(llama_tables, data):
    final, t = llama_tables
    model = transformers.AutoModelForCausalLM.from_pretrained(final).eval()
    tokens = torch.from_numpy(np.asarray(load_split(data, "val")[0][:2], dtype=np.int64))
    norms = []
    for x in tokens:
        emb = model.get_input_embeddings()(x[None]).detach().requires_grad_(True)
        model(inputs_embeds=emb).logits[:, -20:].mean(1).sum().backward()
        norms.append(emb.grad[0].norm(dim=-1).flip(0))  # index d - 1: distance d from the end
    g = torch.stack(norms).mean(0).double()
    got = pd.read_csv(t["gradinf"]).set_index("distance")["value"]
    low = 0
    for high in got.index:
        assert got[high] == pytest.approx(g[low:high].mean().item(), rel=1e-4)
        low = high


def test_an_exported_checkpoint_gives_the_tables_of_its_run(data, tmp_path):
    variant = "swa128"
    cfg = load_config("smoke", variant, 0, OVERRIDES)
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    torch.manual_seed(0)
    model = build_model(cfg, 501)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_weights(model, run / "ckpt", 4, 4 * 64)
    (run / "train_done.json").write_text("{}")
    assert main(["export-hf", "--variant", variant, "--data", str(data), "--run", str(run), "--out",
                 str(tmp_path / "hf"), *OVERRIDES]) == 0
    native = run_all(data, run, tmp_path / "native", variant)
    exported = run_all(data, tmp_path / "hf", tmp_path / "exported", variant)
    for kind in TABLES:
        a, b = pd.read_csv(native[kind]), pd.read_csv(exported[kind])
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, obj=kind)


def test_cached_generation_of_a_wrapped_model_equals_its_plain_argmax_loop():
    from hybridlab.evals.generation import greedy_continue
    from hybridlab.evals.hf_model import HFCausalLM

    model = HFCausalLM(llama(3)).eval()
    hf = llama(3)  # the same weights with transformers' own attention, no cache
    prompts = [torch.randint(512, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (9, 9, 14)]
    got = greedy_continue(model, prompts, 6, batch=2, device=torch.device("cpu"))
    for p, out in zip(prompts, got, strict=True):
        seq = list(p)
        with torch.no_grad():
            for _ in range(6):
                seq.append(int(hf(torch.tensor([seq])).logits[0, -1].argmax()))
        assert out == seq[len(p):]
