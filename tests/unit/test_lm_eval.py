"""lm-evaluation-harness on the project's own smoke-size checkpoint through `hybridlab lm-eval`: local tasks
defined here (multiple choice, generation, rolling perplexity) with every score recomputed by hand from the
model's logits and a plain greedy loop, and the suite mean of the result table."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hybridlab.analysis.schemas import LMEVAL_COLUMNS
from hybridlab.cli import main
from hybridlab.config import load_config
from hybridlab.data.synthetic import CorpusSpec
from hybridlab.export.tokenizer import synthetic_tokenizer
from hybridlab.models import build_model
from hybridlab.train.lit import save_weights

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
VARIANT, MAX_LEN = "swa128", 16
OVERRIDES = ["scale.context=64", "data.n_train_seqs=8", "data.n_val_seqs=4", "eval.niah_samples=2",
             "eval.niah_lengths=[1.0]", "eval.ruler_tasks=[]", "eval.probe_samples=0"]
MC = [("w3 w9 w4 k2 v5 <qry> k2", ["v5", "v7", "w1"], 0), ("w1 w1 w2", ["w3 w4", "w5", "v0 v1 v2"], 1),
      ("<def> k1 v3 w8 <qry> k1", ["v3", "v4", "v9"], 2), ("w7 w2 w9 w9", ["w1", "w2 w2", "k0"], 0),
      ("w5", ["w6", "w7", "w8"], 1), ("k3 v2 w11 w12 w13 <qry> k3", ["v2 w1", "v6", "w4"], 2)]
GEN_PROMPTS = ["w3 w9 w4 k2 v5 <qry> k2", "w1 w1 w2", "<def> k1 v3 w8", "w7 w2 w9 w9"]
TEXTS = [" ".join(f"w{(7 * i + j) % 40}" for j in range(n)) for i, n in enumerate((9, 23, 40))]


def yaml_task(name: str, data: Path, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}")


def greedy(model, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(ids):]


def loglik(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    x = torch.tensor([context + continuation[:-1]])
    with torch.no_grad():
        lp = torch.log_softmax(model(x)[0], -1)[len(context) - 1:]
    target = torch.tensor(continuation)
    return lp.gather(-1, target[:, None]).sum().item(), bool((lp.argmax(-1) == target).all())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    assert main(["prepare-data", "--out", str(root / "data"), *OVERRIDES]) == 0
    cfg = load_config("smoke", VARIANT, 0, OVERRIDES)
    vocab = CorpusSpec.from_config(cfg.data).vocab
    torch.manual_seed(0)
    model = build_model(cfg, vocab.size).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)  # larger weights: sharper predictions, so choices and generations differ
    (root / "run" / "ckpt").mkdir(parents=True)
    save_weights(model, root / "run" / "ckpt", 3, 192)
    (root / "run" / "train_done.json").write_text("{}")
    tok = synthetic_tokenizer(vocab)
    generated = [tok.decode(greedy(model, [1, *tok.encode(p)], 5)) for p in GEN_PROMPTS]
    targets = [g.split("<sep>")[0].strip() if i % 2 == 0 else "w0 w0" for i, g in enumerate(generated)]
    tasks = root / "tasks"
    tasks.mkdir()
    for name, rows in (("mc", [{"q": q, "choices": c, "label": y} for q, c, y in MC]),
                       ("gen", [{"prompt": p, "target": t} for p, t in zip(GEN_PROMPTS, targets, strict=True)]),
                       ("ppl", [{"text": t} for t in TEXTS])):
        (tasks / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tasks / "tiny_mc.yaml").write_text(yaml_task("tiny_mc", tasks / "mc.jsonl", (
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")))
    (tasks / "tiny_gen.yaml").write_text(yaml_task("tiny_gen", tasks / "gen.jsonl", (
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
        "generation_kwargs:\n  until: ['<sep>']\n  max_gen_toks: 5\n  do_sample: false\n"
        "filter_list:\n  - name: strip\n    filter:\n      - function: custom\n"
        "        filter_fn: !function strip.strip\n      - function: take_first\n"
        "metric_list:\n  - metric: exact_match\n")))
    (tasks / "strip.py").write_text("def strip(resps, docs):\n    return [[r.strip() for r in rs] for rs in resps]\n")
    (tasks / "tiny_ppl.yaml").write_text(yaml_task("tiny_ppl", tasks / "ppl.jsonl", (
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n")))
    over = [*OVERRIDES, f"eval.lm_eval.include_path={tasks}", f"eval.lm_eval.max_length={MAX_LEN}",
            "eval.lm_eval.batch_size=4", "eval.lm_eval.run=[tiny,tiny_ppl]",
            "+eval.lm_eval.suites.tiny={label: Tiny, tasks: {tiny_mc: acc, tiny_gen: exact_match}}"]
    out = root / "lmeval.csv"
    assert main(["lm-eval", "--variant", VARIANT, "--data", str(root / "data"), "--run", str(root / "run"),
                 "--out", str(out), *over]) == 0
    return model, tok, pd.read_csv(out), targets, generated


def value(df: pd.DataFrame, task: str, metric: str) -> float:
    return df[(df["task"] == task) & (df["metric"] == metric)]["value"].item()


def test_the_table_has_its_schema(setup):
    df = setup[2]
    assert list(df.columns) == list(LMEVAL_COLUMNS)
    assert set(df["task"]) == {"tiny_mc", "tiny_gen", "tiny_ppl", "Tiny"} and (df["step"] == 3).all()


def test_multiple_choice_scores_equal_a_hand_computation(setup):
    model, tok, df, *_ = setup
    acc, acc_norm = [], []
    for q, choices, label in MC:
        ctx = [1, *tok.encode(q)]
        lls = [loglik(model, ctx, tok.encode(c))[0] for c in choices]
        norm = [ll / len(" " + c) for ll, c in zip(lls, choices, strict=True)]  # lm-eval: per character
        acc.append(int(np.argmax(lls)) == label)
        acc_norm.append(int(np.argmax(norm)) == label)
    assert 0 < np.mean(acc) < 1  # the task discriminates
    assert value(df, "tiny_mc", "acc") == pytest.approx(np.mean(acc))
    assert value(df, "tiny_mc", "acc_norm") == pytest.approx(np.mean(acc_norm))
    stderr = df[(df["task"] == "tiny_mc") & (df["metric"] == "acc")]["stderr"].item()
    assert stderr == pytest.approx(np.std(acc, ddof=1) / math.sqrt(len(acc)))


def test_generation_equals_a_plain_greedy_loop(setup):
    model, tok, df, targets, generated = setup
    assert value(df, "tiny_gen", "exact_match") == pytest.approx(0.5)  # half the targets are the greedy outputs
    assert all(g.split("<sep>")[0].strip() != "w0 w0" for g in generated)


def test_rolling_perplexity_equals_disjoint_windows_by_hand(setup):
    model, tok, df, *_ = setup
    total, words = 0.0, 0
    for text in TEXTS:
        x = [1, *tok.encode(text)]  # BOS, then the text; each token predicted once
        n = len(x) - 1
        for end in range(MAX_LEN, n + MAX_LEN, MAX_LEN):
            end = min(end, n)
            start = max(0, end - MAX_LEN)  # the window's inputs x[start:end] predict x[start+1:end+1]
            scored = min(MAX_LEN, end - (end - 1) // MAX_LEN * MAX_LEN)  # the last window scores the remainder
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([x[start:end]]))[0], -1)
            target = torch.tensor(x[start + 1:end + 1])
            total += lp.gather(-1, target[:, None])[-scored:].sum().item()
        words += len(text.split())
    assert value(df, "tiny_ppl", "word_perplexity") == pytest.approx(math.exp(-total / words), rel=1e-5)


def test_the_suite_row_is_the_mean_of_its_tasks(setup):
    df = setup[2]
    suite = df[df["task"] == "Tiny"]
    assert suite["metric"].tolist() == ["suite_mean"] and suite["length"].tolist() == [MAX_LEN]
    expected = (value(df, "tiny_mc", "acc") + value(df, "tiny_gen", "exact_match")) / 2
    assert suite["value"].item() == pytest.approx(expected)


def test_sampling_is_refused():
    from lm_eval.api.instance import Instance

    from hybridlab.evals.lm_adapter import HybridLabLM

    cfg = load_config("smoke", "full", 0, [])
    vocab = CorpusSpec.from_config(cfg.data).vocab
    lm = HybridLabLM(build_model(cfg, vocab.size), synthetic_tokenizer(vocab), 32, device="cpu")
    req = Instance("generate_until", {}, ("w1 w2", {"do_sample": True, "temperature": 0.7}), 0)
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([req])


def test_suite_scores_reach_the_final_metrics_table(setup, tmp_path):
    from hybridlab.figures.report import final_metrics_table
    from hybridlab.figures.tables import load_tables

    run = tmp_path / "runs" / "tiny" / VARIANT / "seed0"
    run.mkdir(parents=True)
    setup[2].to_csv(run / "lmeval.csv", index=False)
    tables = tmp_path / "tables"
    assert main(["aggregate", "--kind", "lmeval", "--out", str(tables / "lmeval.csv"), str(run / "lmeval.csv")]) == 0
    (tables / "info.json").write_text(json.dumps({"context": 64, "sizes": ["tiny"]}))
    stats = final_metrics_table(load_tables(tables)).data
    row = stats[stats["quantity"] == f"Tiny @ {MAX_LEN}"]
    assert row["mean"].item() == pytest.approx(setup[2].query("task == 'Tiny'")["value"].item())
