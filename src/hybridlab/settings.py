"""One definition per config key: what it means and what it may hold.

`SETTINGS` maps every key of the composed run config (dotted, `*` for any one name) to a `Setting`: its meaning
(one line) and its rule (type, range, allowed values), or, for a key that another module checks where it is
used, the words for what it allows. Validation (hybridlab.config.validate), the CLI's help and the generated
reference docs/config.md (hybridlab.config_doc) all read this table; a test fails when a composed key has no
entry here or the page is stale. The values themselves (every default, and what each scale, model size and
variant sets) live in the YAML files of conf/: Hydra composes them, this table never repeats them.

No torch, no Hydra: the workflow and the figures read this module.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import ListConfig

CONF_DIR = Path(str(resources.files("hybridlab") / "conf"))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Rule:
    """What one config key must hold: `ok(value)` is true; `allowed` says it in words for the error message.
    An optional key may be absent or null."""

    ok: Callable[[Any], bool]
    allowed: str
    optional: bool = False


def integer(lo: int = 1, even: bool = False) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= lo and (not even or v % 2 == 0),
                f"an {'even ' if even else ''}integer >= {lo}")


def integer_in(lo: int, hi: int, why: str = "") -> Rule:
    return Rule(lambda v: _is_int(v) and lo <= v <= hi, f"an integer in [{lo}, {hi}]{f' ({why})' if why else ''}")


def number(lo: float | None = None, hi: float | None = None, open_lo: bool = False, open_hi: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        return (_is_num(v) and (lo is None or (v > lo if open_lo else v >= lo))
                and (hi is None or (v < hi if open_hi else v <= hi)))

    if hi is None:
        text = "a number" if lo is None else f"a number {'>' if open_lo else '>='} {lo:g}"
    else:
        text = f"a number in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
    return Rule(ok, text)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def one_of(*names: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in names, ", ".join(names))


def list_of(item: Rule, nonempty: bool = True, length: int | None = None, unique: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        return (isinstance(v, ListConfig | list) and all(item.ok(x) for x in v) and (not nonempty or len(v) > 0)
                and (length is None or len(v) == length) and (not unique or len(set(v)) == len(v)))

    size = f"a list of {length}" if length else ("a non-empty list" if nonempty else "a list")
    return Rule(ok, f"{size}{' of distinct items' if unique else ''}, each {item.allowed}")


def optional(rule: Rule) -> Rule:
    return Rule(rule.ok, f"null or {rule.allowed}", optional=True)


def existing(kind: str) -> Rule:
    test = Path.is_dir if kind == "folder" else Path.exists
    return Rule(lambda v: isinstance(v, str) and test(Path(v).expanduser()), f"the path of an existing {kind}")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str) and v.strip() != "" and v != "???", "a non-empty string")
GLOBS = Rule(lambda v: isinstance(v, ListConfig | list) and len(v) > 0
             and all(isinstance(p, str) and glob.glob(str(Path(p).expanduser())) for p in v),
             "a non-empty list of glob patterns, each matching at least one existing file")
DEPTH_RANGE = Rule(lambda v: isinstance(v, list | ListConfig) and len(v) == 2 and all(_is_num(x) for x in v)
                   and 0 <= v[0] <= v[1] <= 1, "[lo, hi] with 0 <= lo <= hi <= 1 (fractions of the haystack)")


def option_names(group: str) -> list[str]:
    """The options of a conf/ group (its file names), e.g. every variant."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _option_rule(group: str) -> Callable[[], Rule]:
    """A rule over the option names of a conf/ group, read when it is checked (adding a file adds a name)."""
    return lambda: list_of(one_of(*option_names(group)), unique=True)


def _distance_laws() -> Rule:
    from hybridlab.data.synthetic import DISTANCE_LAWS  # numpy only; the corpus's own list of laws

    return one_of(*DISTANCE_LAWS)


def _ruler_tasks() -> Rule:
    from hybridlab.data.evalsets import TASKS  # numpy only

    return optional(list_of(one_of(*(t for t in TASKS if t != "probe")), nonempty=False, unique=True))


@dataclass(frozen=True)
class Setting:
    """One config key: `doc` its meaning; `rule` what validation checks (a Rule, a function that builds one when
    it is checked, or None when another module checks the key where it is used: `allowed` then says what it
    allows); `source` the data.source the key belongs to (synthetic or text), None for every config; `tree`: the
    value is a mapping documented as a whole (its keys are free: names of tasks, variants, sizes, ...)."""

    doc: str
    rule: Rule | Callable[[], Rule] | None = None
    allowed: str = ""
    source: str | None = None
    tree: bool = False

    def current_rule(self) -> Rule | None:
        return self.rule() if callable(self.rule) and not isinstance(self.rule, Rule) else self.rule

    @property
    def allowed_text(self) -> str:
        rule = self.current_rule()
        return rule.allowed if rule is not None else self.allowed


S = Setting
SYN, TXT = "synthetic", "text"
CORPUS = "data.corpora.*"

# Every key, grouped like conf/ (the order of docs/config.md and of the checks).
SETTINGS: dict[str, Setting] = {
    "seed": S("the run's seed: model initialisation and data order (set by --seed; the workflow by --config "
              "seeds=...)", integer(0)),
    # scale/ (a preset: which runs, at which context, on which accelerator)
    "scale.name": S("the preset's name, the results/<scale>/ and paper/<scale>/ folder name",
                    allowed="the preset's file name"),
    "scale.context": S("training context in tokens (eval lengths and windows are given relative to it)", integer(8)),
    "scale.ref_context": S("the context at which variant windows are given (the paper's 16K); a window w becomes "
                           "w * context / ref_context", integer(1)),
    "scale.min_window": S("smallest window after scaling to the context (tokens)", integer(1)),
    "scale.variants": S("the variants the preset runs (the workflow's default list)", _option_rule("variant")),
    "scale.seeds": S("the seeds each variant runs (scale.seed_counts may cut some variants' lists)",
                     lambda: list_of(integer(0), unique=True)),
    "scale.seed_counts": S("per variant, how many of scale.seeds it runs (the first n); a variant not listed runs "
                           "them all", allowed="null or a mapping of variant names to integers in [1, len(seeds)]",
                           tree=True),
    "scale.sizes": S("the model sizes (conf/model/) of the grid; the first is the default size of every run",
                     lambda: optional(list_of(one_of(*option_names("model")), unique=True))),
    "scale.accelerator": S("where the preset's jobs run: auto picks a GPU when there is one",
                           one_of("auto", "cpu", "gpu")),
    "scale.budget_k_by_size": S("per model size, its own token budget k (D = k*N) instead of train.budget_k "
                                "(the paper's S5 stops at k = 210)", allowed="a mapping of size names to numbers > 0",
                                tree=True),
    "scale.assumed_mfu": S("model FLOPs utilisation assumed by `hybridlab describe` for its GPU-hour estimate "
                           "(unset: 0.35)",
                           optional(number(0, 1, open_lo=True))),
    "scale.peak_tflops": S("peak dense bf16 TFLOP/s of one accelerator, for the same estimate (unset: 989)",
                           optional(number(0, open_lo=True))),
    # model/ (a size)
    "model.name": S("the size's name (labels rows and run folders)", allowed="the size's file name in conf/model/"),
    "model.d_model": S("residual stream width", integer(1)),
    "model.n_layers": S("number of layers (a multiple of the variant's full:efficient group)", integer(1)),
    "model.n_heads": S("attention heads per layer", integer(1)),
    "model.head_dim": S("channels per head (RoPE rotates pairs, so even)", integer(2, even=True)),
    "model.d_ff": S("SwiGLU hidden width", integer(1)),
    "model.rope_theta": S("RoPE base frequency", number(0, open_lo=True)),
    "model.attn_backend": S("attention kernel: auto (FlexAttention for windows, SDPA otherwise), sdpa, flex or "
                            "flash (flash-attn, CUDA only)", one_of("auto", "sdpa", "flex", "flash")),
    "model.mixer_backend": S("recurrent-mixer kernel: auto (fla where it works, else PyTorch with the Triton "
                             "state kernel), torch or fla (flash-linear-attention)", one_of("auto", "torch", "fla")),
    # variant/ (a hybrid layout)
    "variant.name": S("the variant's name (run folders and table rows)", allowed="the variant's file name"),
    "variant.label": S("the paper's name for the variant, shown in figures and the report (e.g. SWA-128)",
                       allowed="any text"),
    "variant.efficient": S("the efficient mixer of the non-full layers (none: every layer full attention)",
                           allowed="none, swa, lightning, mamba2, gdn (checked by models/layout.py)"),
    "variant.ratio": S("full:efficient layers per group, e.g. '1:1' alternates, '1:3' one full per three",
                       allowed="'F:E' with integers, F >= 1 and E >= 0, whose group divides model.n_layers "
                               "(model.n_heads when head-wise)"),
    "variant.first_full": S("position of the full layer within each group (0-based)", integer(0)),
    "variant.window": S("SWA window at the paper's 16K context, scaled to the run's context (null unless swa)",
                        allowed="null or an integer > 0 whose scaled size is below the context"),
    "variant.sinks": S("attention-sink tokens every SWA head also attends to", integer(0)),
    "variant.full_rope": S("RoPE on the full-attention layers (false: NoPE)", BOOL),
    "variant.efficient_rope": S("RoPE on the SWA layers (recurrent mixers have no positions)", BOOL),
    "variant.headwise": S("mix within each layer: a share of every layer's heads is SWA, the rest full (swa only)",
                          BOOL),
    # data/ (every source)
    "data.source": S("the corpus kind: the embedded synthetic corpus (data=synthetic) or real text (data=hf, "
                     "data=files, data=paper)", one_of("synthetic", "text")),
    "data.n_train_seqs": S("training sequences of `scale.context + 1` tokens", integer(1)),
    "data.n_val_seqs": S("validation sequences", integer(1)),
    "data.long_threshold": S("LongPPL counts recalled tokens whose source lies beyond this fraction of the "
                             "context (real text: kept for the manifest)", number(0, 1, open_lo=True)),
    # data/synthetic.yaml
    "data.corpus_seed": S("the corpus's seed: one corpus for every training seed", integer(0), source=SYN),
    "data.n_words": S("filler vocabulary (Markov chain states)", integer(1), source=SYN),
    "data.branching": S("successors per filler word", integer(1), source=SYN),
    "data.branch_probs": S("transition probabilities to a word's successors, most likely first (data.branching "
                           "of them, summing to 1)", list_of(number(0, 1)), source=SYN),
    "data.markov_order": S("order of the filler's Markov chain: 1 (a word's successors) or 2 (a pair's: the "
                           "previous word is needed to predict the next)", optional(integer_in(1, 2)), source=SYN),
    "data.zipf_exponent": S("successor popularity ~ rank^-exponent (Zipf-like word frequencies)",
                            optional(number(0)), source=SYN),
    "data.n_keys": S("fact keys; unique within a document, so at most this many facts and table pairs per "
                     "document", integer(1), source=SYN),
    "data.n_values": S("fact values", integer(1), source=SYN),
    "data.facts_per_token": S("expected facts `DEF k v ... QRY k v` per document token", number(0), source=SYN),
    "data.tables_per_token": S("expected lookup tables `DEF k1 v1 DEF k2 v2 ...` per token, each pair asked later",
                               optional(number(0)), source=SYN),
    "data.table_size": S("pairs per lookup table", optional(integer(1)), source=SYN),
    "data.copies_per_token": S("expected copied spans of random words per token (recalled by the same circuit as "
                               "a fact)", optional(number(0)), source=SYN),
    "data.copy_len": S("[min, max] length of a copied span (tokens); all but its first token are labelled",
                       optional(list_of(integer(1), length=2)), source=SYN),
    "data.min_distance": S("smallest recall distance (tokens)", integer(3), source=SYN),
    "data.distance_dist": S("the law of recall distances, up to the document length", _distance_laws, source=SYN),
    "data.distance_exponent": S("powerlaw only: density ~ d^-exponent (larger: more near recalls)",
                                optional(number()), source=SYN),
    "data.short_doc_len": S("short documents are 0.5x..1.5x this fraction of the context",
                            number(0, 1, open_lo=True), source=SYN),
    "data.long_fraction": S("fraction of sequences that are one long document (the paper mixes 1:1)", number(0, 1),
                            source=SYN),
    # data/hf.yaml, files.yaml, paper.yaml (real text; hybridlab.data.corpora applies these per corpus)
    CORPUS: S("one corpus by name (null drops one inherited from hf.yaml); docs/data.md, 'Real corpora'",
              allowed="a mapping with the keys below, or null", source=TXT),
    f"{CORPUS}.role": S("the split the corpus feeds", one_of("train", "val", "longppl"), source=TXT),
    f"{CORPUS}.hf": S("a Hugging Face `datasets` corpus (null: local files)", allowed="a mapping or null",
                      source=TXT),
    f"{CORPUS}.hf.name": S("the dataset: a hub name (needs network access at the data stage) or a local "
                           "save_to_disk folder", TEXT, source=TXT),
    f"{CORPUS}.hf.config": S("the dataset's configuration, if any (e.g. sample-10BT)", allowed="a name or null",
                             source=TXT),
    f"{CORPUS}.hf.split": S("the dataset split read", allowed="a split name", source=TXT),
    f"{CORPUS}.hf.revision": S("a commit of the dataset repository (null: its current main)",
                               allowed="a commit or null", source=TXT),
    f"{CORPUS}.hf.data_files": S("restrict to some of the dataset's files", allowed="null, a glob or a list",
                                 source=TXT, tree=True),
    f"{CORPUS}.files": S("local files (.txt whole, .jsonl/.json by line, .parquet by row batch), divided among "
                         "the groups", GLOBS, source=TXT),
    f"{CORPUS}.text_field": S("the field that holds a document's text", optional(TEXT), source=TXT),
    f"{CORPUS}.take": S("shares of the split's rows from the corpus's long and short documents",
                        allowed="a mapping of long and/or short to shares; each split's shares sum to 1",
                        source=TXT),
    f"{CORPUS}.take.*": S("the share of the split's rows taken from this document class (long or short)",
                          number(0, 1, open_lo=True), source=TXT),
    f"{CORPUS}.groups": S("preparation jobs reading the corpus; its input files are divided among them",
                          optional(integer(1)), source=TXT),
    f"{CORPUS}.val_fraction": S("documents held out (by a hash of their text) for validation and eval haystacks "
                                "(train corpora only)", optional(number(0, 1, open_hi=True)), source=TXT),
    "data.seed": S("seed of the hold-out hash", integer(0), source=TXT),
    "data.tokenizer.path": S("a pretrained tokenizer.json (file or folder)", optional(existing("file or folder")),
                             source=TXT),
    "data.tokenizer.hub": S("... or a model repository on the hub whose tokenizer.json to fetch", optional(TEXT),
                            source=TXT),
    "data.tokenizer.revision": S("the hub repository's commit", allowed="a commit or null", source=TXT),
    "data.tokenizer.vocab_size": S("the BPE vocabulary to train (no path or hub), else the model's embedding size "
                                   "(>= the tokenizer's; null: its own)", optional(integer(8)), source=TXT),
    "data.tokenizer.min_frequency": S("BPE training: the fewest occurrences of a merged pair",
                                      allowed="an integer >= 1", source=TXT),
    "data.tokenizer.train_docs": S("BPE training on the first N training documents (null: all)",
                                   allowed="an integer >= 1 or null", source=TXT),
    "data.tokenizer.bos_token": S("document separator; must exist in a pretrained tokenizer", allowed="a token",
                                  source=TXT),
    "data.tokenizer.pad_token": S("padding token (null: pad with the bos token)", allowed="a token or null",
                                  source=TXT),
    "data.long_doc_min": S("documents of at least this fraction of the context (in tokens) are long",
                           number(0, 1), source=TXT),
    "data.group_slack": S("each group writes up to (1 + this) of its even share, so short groups are made up",
                          optional(number(0)), source=TXT),
    "data.n_longppl_seqs": S("LongPPL sequences (only with a corpus of role longppl)", integer(1), source=TXT),
    "data.longppl.reference": S("local folder of a causal LM sharing the tokenizer, which picks LongPPL's key "
                                "tokens (null: no key-token masks)", optional(existing("folder")), source=TXT),
    "data.longppl.short_window": S("LongPPL's short context (tokens)", allowed="an integer >= 1", source=TXT),
    "data.longppl.gain_threshold": S("a token is key if log p(long) - log p(short) exceeds this",
                                     allowed="a number", source=TXT),
    "data.longppl.logprob_floor": S("... and log p(long) exceeds this (null: no floor)", allowed="a number or null",
                                    source=TXT),
    "data.longppl.block": S("positions scored per short-context pass (null: short_window // 8)",
                            allowed="an integer >= 1 or null", source=TXT),
    "data.longppl.device": S("where the reference model runs", allowed="a torch device, e.g. cpu or cuda",
                             source=TXT),
    # train/
    "train.steps": S("optimizer steps (computed from train.budget_k when that is set)", integer(1)),
    "train.budget_k": S("token budget D = k*N (N: non-embedding parameters); sets train.steps",
                        optional(number(0, open_lo=True))),
    "train.budgets_k": S("budget points k of the scaling grid: each gets a checkpoint (wsd: a decay branch)",
                         optional(list_of(number(0, open_lo=True), nonempty=False))),
    "train.decay_frac": S("wsd: fraction of the run spent decaying", optional(number(0, 1, open_lo=True))),
    "train.batch_size": S("sequences per optimizer step (global)", integer(1)),
    "train.micro_batch_size": S("sequences per device per forward; gradient accumulation makes up the rest",
                                integer(1)),
    "train.devices": S("DDP over this many GPUs (CPU processes without a GPU) of one node", integer(1)),
    "train.num_nodes": S("nodes (multi-node through Lightning's SLURM environment)", integer(1)),
    "train.optimizer": S("adamw, or muon (Muon on hidden matrices, AdamW on the rest)", one_of("adamw", "muon")),
    "train.lr": S("peak learning rate (AdamW)", number(0, open_lo=True)),
    "train.muon_lr": S("peak learning rate of the Muon matrices", optional(number(0, open_lo=True))),
    "train.weight_decay": S("decoupled weight decay", number(0)),
    "train.betas": S("AdamW betas", list_of(number(0, 1, open_hi=True), length=2)),
    "train.warmup_steps": S("linear warmup steps", integer(0)),
    "train.schedule": S("cosine, or wsd (warmup-stable-decay: what the budget branches fork from)",
                        one_of("cosine", "wsd")),
    "train.final_lr_ratio": S("final learning rate as a fraction of the peak", number(0, 1)),
    "train.grad_clip": S("gradient-norm clipping (0: none)", number(0)),
    "train.precision": S("Lightning precision; auto: bf16-mixed on CUDA, 32-true on CPU",
                         one_of("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")),
    "train.compile": S("torch.compile the model", BOOL),
    "train.compile_mode": S("torch.compile's mode when train.compile is set: default, reduce-overhead (CUDA graphs: "
                            "one launch per graph, for small models whose steps are launch-bound) or "
                            "max-autotune-no-cudagraphs", optional(one_of(*COMPILE_MODES))),
    "train.group_seeds": S("the workflow trains all seeds of a variant in one job (train-group: one process, one "
                           "compiled model)", optional(BOOL)),
    "train.group_branches": S("the workflow trains the WSD decay branches of one stable run in one job (train-branch "
                              "with all its budgets: one process, one compile) instead of one job per budget", BOOL),
    "train.stack_seeds": S("a train-group job trains its seeds in one stacked step (train/stacked.py: each run keeps "
                           "its seed, data order and folder; on one device with AdamW, else one after another)", BOOL),
    "train.n_checkpoints": S("log-spaced trajectory checkpoints (the last step is always one)", integer(1)),
    "train.ckpt_every": S("also a checkpoint every this many steps (even spacing for onset timing)",
                          optional(integer(1))),
    "train.log_every": S("steps between metrics rows (metrics.csv, rewritten after each) and progress lines",
                         integer(1)),
    "train.logger": S("also log every metrics row to: none | csv | tensorboard | wandb (offline), under RUN/logs "
                      "(metrics.csv always)", optional(one_of("none", "csv", "tensorboard", "wandb"))),
    "train.last_every": S("steps between resumable last.ckpt saves (null: a tenth of the run)", optional(integer(1))),
    "train.stop_after": S("stop (resumably) after this many steps: for tests and time slicing", optional(integer(1))),
    "train.num_workers": S("DataLoader worker processes", integer(0)),
    # eval/ (lengths are fractions of the training context; > 1 tests extrapolation)
    "eval.niah_lengths": S("NIAH lengths as fractions of the context (also the RULER-style and probing sets')",
                           list_of(number(0, open_lo=True))),
    "eval.niah_samples": S("NIAH samples per length", integer(1)),
    "eval.niah_lengths_all_checkpoints": S("NIAH at every length on every checkpoint (false: other lengths than "
                                           "the context on the final one only)", optional(BOOL)),
    "eval.niah_depth_range": S("needle depths drawn uniformly in [lo, hi] of the haystack (every set, probing "
                               "too)", DEPTH_RANGE),
    "eval.ruler_tasks": S("the RULER-style tasks evaluated", _ruler_tasks),
    "eval.ruler_samples": S("samples per RULER task and length", optional(integer(0))),
    "eval.ruler_all_checkpoints": S("the RULER-style suite at every checkpoint (false: the final one)",
                                    optional(BOOL)),
    "eval.probe_samples": S("the 8-way probing set's samples per length (0: no probing)", optional(integer(0))),
    "eval.probe_C": S("inverse L2 strength of the logistic-regression probe (the paper: 0.1)",
                      optional(number(0, open_lo=True))),
    "eval.probe_test_fraction": S("held-out share of the probing set",
                                  optional(number(0, 1, open_lo=True, open_hi=True))),
    "eval.probe_all_checkpoints": S("probe every checkpoint, not only the final one", optional(BOOL)),
    "eval.eval_seed": S("eval sets are reproducible from (corpus or tokenizer, length, this seed)",
                        optional(integer(0))),
    "eval.haystack_file": S("a UTF-8 text file as the NIAH haystack; ~ is expanded (quote it in an override: "
                            "\"eval.haystack_file='~/essays.txt'\")",
                            allowed="null or a readable UTF-8 text file (checked by data/evalsets.py)"),
    "eval.gen_extra_tokens": S("real text: NIAH/RULER answers are generated, answer length + this many tokens",
                               optional(integer(0))),
    "eval.group_runs": S("the workflow evaluates and analyses all seeds of a variant in one job (evaluate-group)",
                         optional(BOOL)),
    "eval.val_batches": S("validation batches per checkpoint", integer(1)),
    "eval.batch_size": S("sequences per evaluation batch", integer(1)),
    "eval.onset_threshold": S("a head has formed when its needle mass first exceeds this",
                              optional(number(0, 1, open_lo=True, open_hi=True))),
    "eval.pos_bucket_min": S("loss by position: positions <= this form the first bucket, then doublings",
                             optional(integer(1))),
    "eval.retrieval_query_from_end": S("needle mass read at this token from the end",
                                       optional(integer_in(1, 4, "1: the last token; the authors: 2"))),
    "eval.needle_span": S("first: the needle value's first token; answer: every token of the value (the authors')",
                          optional(one_of("first", "answer"))),
    "eval.top_heads": S("retrieval heads traced: the top-k full-attention heads by needle mass on the final "
                        "checkpoint", optional(integer(1))),
    "eval.masking_k": S("heads masked at once (the top-k retrieval heads against k random heads)",
                        optional(list_of(integer(1), unique=True))),
    "eval.masking_draws": S("random-head draws averaged per k", optional(integer(1))),
    "eval.masking_lengths": S("NIAH lengths (fractions of the context, from eval.niah_lengths) for head masking",
                              optional(list_of(number(0, open_lo=True)))),
    "eval.receptive_windows": S("receptive-field constraints W as fractions of the context",
                                optional(list_of(number(0, 1, open_lo=True, open_hi=True)))),
    "eval.gradinf_samples": S("validation sequences for the gradient influence G(d)", optional(integer(1))),
    "eval.gradinf_last": S("G(d)'s target: the summed logits averaged over the last this-many positions",
                           optional(integer(1))),
    "eval.gradinf_all_checkpoints": S("G(d) on every checkpoint, not only the final one", optional(BOOL)),
    # eval.lm_eval (lm-evaluation-harness on each run's final checkpoint: `hybridlab lm-eval`)
    "eval.lm_eval.run": S("suites (below) and/or lm-eval task names; empty: no lm_eval jobs, no lmeval.csv",
                          optional(list_of(TEXT, nonempty=False, unique=True))),
    "eval.lm_eval.max_length": S("the adapter's context in tokens (null: the training context); inputs lose their "
                                 "oldest tokens", optional(integer(1))),
    "eval.lm_eval.batch_size": S("lm-eval batch size", optional(integer(1))),
    "eval.lm_eval.max_gen_toks": S("generation budget of tasks that set none", optional(integer(1))),
    "eval.lm_eval.num_fewshot": S("few-shot examples (null: each task's own default)", optional(integer(0))),
    "eval.lm_eval.limit": S("at most this many samples per task (to try a set-up; never for reported numbers)",
                            optional(number(0, open_lo=True))),
    "eval.lm_eval.include_path": S("a folder of extra task YAMLs (lm-eval's --include_path)",
                                   optional(existing("folder"))),
    "eval.lm_eval.metadata": S("passed to every task, e.g. {max_seq_lengths: [16384]} for RULER",
                               allowed="a mapping", tree=True),
    "eval.lm_eval.bootstrap_iters": S("bootstrap resamples for the standard errors lm-eval cannot give in closed "
                                      "form", optional(integer(0))),
    "eval.lm_eval.all_checkpoints": S("lm-eval on every checkpoint, not only the final one", optional(BOOL)),
    "eval.lm_eval.suites": S("named suites: a label and, per task, the metric averaged into the suite's score "
                             "(the paper's 19 short tasks are unpublished: short_avg is the common zero-shot set)",
                             allowed="a mapping of suite names to {label, tasks: {task: metric}, metadata}",
                             tree=True),
}


def setting_for(key: str) -> tuple[str, Setting] | None:
    """The entry (pattern, Setting) that documents a concrete dotted key: itself, a `*` pattern that matches it,
    or a tree entry it lies below; None when no entry does."""
    parts = key.split(".")
    for pattern, setting in SETTINGS.items():
        p = pattern.split(".")
        if len(p) == len(parts) and all(a in ("*", b) for a, b in zip(p, parts, strict=True)):
            return pattern, setting
    for pattern, setting in SETTINGS.items():
        p = pattern.split(".")
        if setting.tree and len(parts) > len(p) and all(a in ("*", b) for a, b in zip(p, parts, strict=False)):
            return pattern, setting
    return None


def rules(source: str | None) -> dict[str, Rule]:
    """The rules of every concrete (pattern-free) key of one source (None: the keys of every config)."""
    return {key: rule for key, s in SETTINGS.items()
            if s.source == source and "*" not in key and (rule := s.current_rule()) is not None}


def rule(pattern: str) -> Rule:
    """The rule of one entry, e.g. rule('data.corpora.*.role') for hybridlab.data.corpora."""
    found = SETTINGS[pattern].current_rule()
    assert found is not None, f"{pattern} has no rule"
    return found


def undocumented(tree: dict, prefix: str = "") -> list[str]:
    """The dotted keys of a config (a plain container) that no entry of SETTINGS documents, or only with an
    empty meaning. A mapping is walked into unless its entry is a tree (documented as a whole)."""
    missing = []
    for name, value in tree.items():
        key = f"{prefix}{name}"
        found = setting_for(key)
        if found is not None and found[1].tree:
            continue
        if isinstance(value, dict) and value:
            missing += undocumented(value, f"{key}.")
        elif found is None or not found[1].doc.strip():
            missing.append(key)
    return missing
