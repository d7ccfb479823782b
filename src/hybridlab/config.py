"""Configuration: composes the packaged Hydra configs and lists the variants and scales.

This module is the one source of truth the Snakefile, the CLI and the tests read. It imports no torch, so the
workflow and the figure rebuild stay light.
"""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

CONF_DIR = Path(str(resources.files("hybridlab") / "conf"))


class ConfigError(ValueError):
    """A user-facing configuration error: names the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value)
        self.key, self.value, self.allowed = key, value, " ".join(str(allowed).split())  # always one line
        super().__init__(f"config key '{key}': got {value!r}; allowed: {self.allowed}")


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def variant_names() -> list[str]:
    """Every hybrid variant that has a config file (adding a variant is adding one file)."""
    return _names("variant")


def scale_names() -> list[str]:
    return _names("scale")


def model_names() -> list[str]:
    return _names("model")


def load_config(
    scale: str = "smoke", variant: str = "full", seed: int = 0, overrides: list[str] | None = None,
    size: str | None = None,
) -> DictConfig:
    """Compose the full run config for one (scale, variant, seed) plus Hydra overrides, then validate it.
    `size` picks a model size (conf/model/) other than the scale's default, e.g. S3 in the paper grid."""
    if scale not in scale_names():
        raise ConfigError("scale", scale, ", ".join(scale_names()))
    if variant not in variant_names():
        raise ConfigError("variant", variant, ", ".join(variant_names()))
    if size is not None and size not in model_names():
        raise ConfigError("size", size, ", ".join(model_names()))
    args = [f"scale={scale}", f"variant={variant}", f"seed={seed}", *(overrides or [])]
    if size is not None:
        args.append(f"model={size}")
    cfg = _compose(args)
    validate(cfg)
    return cfg


def _override_value(args: list[str], key: str) -> Any:
    """The value an override list gives `key` (None if it gives none)."""
    for arg in args:
        lhs, sep, rhs = arg.partition("=")
        if sep and lhs.lstrip("+~") == key:
            return rhs
    return None


def _compose(args: list[str]) -> DictConfig:
    """Hydra's compose, with its errors for a bad override turned into one ConfigError each."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=args)
    except MissingConfigException as e:  # `model=huge`: a group option without a file
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        options = e.options or (_names(group) if group else [])
        raise ConfigError(group or "defaults", name, ", ".join(sorted(options)) or "a config file name") from None
    except OverrideParseException as e:
        raise ConfigError("overrides", e.override, "Hydra overrides KEY=VALUE, e.g. train.steps=50 "
                          "(+KEY=VALUE adds a key, ~KEY removes one)") from None
    except ConfigCompositionException as e:
        message = str(e)
        key = getattr(e.__cause__, "full_key", None)
        if key is None:
            quoted = re.search(r"'([^']+)'", message)
            key = quoted.group(1) if quoted else "overrides"
        if message.startswith("Could not override"):
            allowed = f"a key that exists in the config (a new key needs a leading '+': +{key}=...)"
        elif "already at" in message:
            allowed = f"{key}=VALUE without '+' (the key exists already)"
        else:
            allowed = message.splitlines()[0]
        raise ConfigError(key, _override_value(args, key), allowed) from None
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e) from None


def _omegaconf_error(e: OmegaConfBaseException, cfg: DictConfig | None = None) -> ConfigError:
    """A ConfigError for an OmegaConf error (a missing '???' value, an interpolation that does not resolve)."""
    key = getattr(e, "full_key", None) or "config"
    if isinstance(e, MissingMandatoryValue):
        return ConfigError(key, "???", "a value: this key has no default, set it with an override")
    value = getattr(e, "value", None)
    if cfg is not None:  # the unresolved value, e.g. '${oops}'
        value = OmegaConf.to_container(cfg, resolve=False)
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    return ConfigError(key, value, f"a value that resolves ({str(getattr(e, 'msg', e)).splitlines()[0]})")


def scale_plan(scale: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """What the workflow needs to know of a scale: its variants, seeds and accelerator."""
    cfg = load_config(scale=scale, overrides=overrides)
    plan = OmegaConf.to_container(cfg.scale, resolve=True)
    assert isinstance(plan, dict)
    return plan


def check_workflow_config(config: dict[str, Any], schema: str | Path) -> dict[str, Any]:
    """Check the Snakemake config before any job starts: the JSON schema, then every run config it implies
    (each variant and each model size, composed and validated). Raise ConfigError on the first problem.

    Returns the scale's plan with `variants` and `seeds` narrowed to the ones to run (seeds as integers:
    `--config seeds=[0,1]` arrives as strings), and `seeds_by_variant`: each variant's seeds, the first
    scale.seed_counts[variant] of the seeds (all of them for a variant not listed, or when --config seeds=...
    names them)."""
    import jsonschema
    import yaml

    from hybridlab.models.layout import build_layout

    spec = yaml.safe_load(Path(schema).read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(spec).iter_errors(config))
    if error is not None:
        raise _schema_error(error, spec)
    scale, overrides = config["scale"], list(config["overrides"])
    plan = scale_plan(scale, overrides)
    for name in config["variants"]:
        _check(name in variant_names(), "variants", name, ", ".join(variant_names()))
    variants = list(config["variants"]) or list(plan["variants"])
    seeds = [int(s) for s in config["seeds"] or plan["seeds"]]
    counts = {} if config["seeds"] else dict(plan.get("seed_counts") or {})
    for name, n in counts.items():
        _check(name in variant_names(), "scale.seed_counts", name, ", ".join(variant_names()))
        _check(isinstance(n, int) and 1 <= n <= len(seeds), f"scale.seed_counts.{name}", n,
               f"an integer in [1, {len(seeds)}] (the first n of scale.seeds)")
    cfgs = [load_config(scale, v, seeds[0], overrides) for v in variants]
    for size in (plan.get("sizes") or [])[1:]:  # the first size is the scale's default, checked above
        sized = load_config(scale, variants[0], seeds[0], [*overrides, f"model={size}"])
        for cfg in cfgs:  # a layout must fit every model size (layers divisible by the ratio's group, ...)
            build_layout(cfg.variant, sized.model, sized.scale)
    by_variant = {v: seeds[:counts.get(v, len(seeds))] for v in variants}
    return {**plan, "variants": variants, "seeds": seeds, "seeds_by_variant": by_variant}


def _schema_error(error: Any, spec: dict) -> ConfigError:
    """One ConfigError for a jsonschema error: the top-level key, the bad value, the key's description."""
    props = spec.get("properties", {})
    if error.validator == "additionalProperties":
        key = sorted(set(error.instance) - set(props))[0]
        return ConfigError(key, error.instance[key], "one of the keys " + ", ".join(props))
    if error.validator == "required":
        key = re.search(r"'([^']+)' is a required property", error.message)
        return ConfigError(key.group(1) if key else "config", "(missing)", "every key of config/config.yaml")
    key = str(error.absolute_path[0]) if error.absolute_path else "config"
    return ConfigError(key, error.instance, props.get(key, {}).get("description", error.message))


_ABSENT = object()


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


def number(lo: float | None = None, hi: float | None = None, open_lo: bool = False, open_hi: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        return (_is_num(v) and (lo is None or (v > lo if open_lo else v >= lo))
                and (hi is None or (v < hi if open_hi else v <= hi)))

    if hi is None:
        text = "a number" if lo is None else f"a number {'>' if open_lo else '>='} {lo:g}"
    else:
        text = f"a number in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
    return Rule(ok, text)


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

# One rule per key, grouped like conf/. Keys that the code reads with a default are optional.
RULES: dict[str, Rule] = {
    "seed": integer(0),
    "scale.context": integer(8),
    "scale.ref_context": integer(1),
    "scale.min_window": integer(1),
    "scale.accelerator": one_of("auto", "cpu", "gpu"),
    "model.d_model": integer(1),
    "model.n_layers": integer(1),
    "model.n_heads": integer(1),
    "model.head_dim": integer(2, even=True),  # RoPE rotates pairs of channels
    "model.d_ff": integer(1),
    "model.rope_theta": number(0, open_lo=True),
    "model.attn_backend": one_of("auto", "sdpa", "flex", "flash"),
    "model.mixer_backend": one_of("auto", "torch", "fla"),
    "data.source": one_of("synthetic", "text"),
    "data.n_train_seqs": integer(1),
    "data.n_val_seqs": integer(1),
    "data.long_threshold": number(0, 1, open_lo=True),
    "train.steps": integer(1),
    "train.budget_k": optional(number(0, open_lo=True)),
    "train.budgets_k": optional(list_of(number(0, open_lo=True), nonempty=False)),
    "train.decay_frac": optional(number(0, 1, open_lo=True)),
    "train.batch_size": integer(1),
    "train.micro_batch_size": integer(1),
    "train.devices": integer(1),
    "train.num_nodes": integer(1),
    "train.optimizer": one_of("adamw", "muon"),
    "train.lr": number(0, open_lo=True),
    "train.muon_lr": optional(number(0, open_lo=True)),
    "train.weight_decay": number(0),
    "train.betas": list_of(number(0, 1, open_hi=True), length=2),
    "train.warmup_steps": integer(0),
    "train.schedule": one_of("cosine", "wsd"),
    "train.final_lr_ratio": number(0, 1),
    "train.grad_clip": number(0),
    "train.precision": one_of("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"),
    "train.compile": BOOL,
    "train.group_seeds": optional(BOOL),
    "train.n_checkpoints": integer(1),
    "train.log_every": integer(1),
    "train.logger": optional(one_of("none", "csv", "tensorboard", "wandb")),
    "train.last_every": optional(integer(1)),
    "train.stop_after": optional(integer(1)),
    "train.num_workers": integer(0),
    "eval.niah_lengths": list_of(number(0, open_lo=True)),
    "eval.niah_samples": integer(1),
    "eval.niah_lengths_all_checkpoints": optional(BOOL),
    "eval.group_runs": optional(BOOL),
    "eval.niah_depth_range": Rule(lambda v: isinstance(v, list | ListConfig) and len(v) == 2
                                  and all(_is_num(x) for x in v) and 0 <= v[0] <= v[1] <= 1,
                                  "[lo, hi] with 0 <= lo <= hi <= 1 (fractions of the haystack)"),
    "eval.val_batches": integer(1),
    "eval.batch_size": integer(1),
    "eval.onset_threshold": optional(number(0, 1, open_lo=True, open_hi=True)),
    "eval.ruler_samples": optional(integer(0)),
    "eval.probe_samples": optional(integer(0)),
    "eval.eval_seed": optional(integer(0)),
    "eval.pos_bucket_min": optional(integer(1)),
    "eval.top_heads": optional(integer(1)),
    "eval.retrieval_query_from_end": optional(Rule(lambda v: _is_int(v) and 1 <= v <= 4,
                                                   "an integer in [1, 4] (1: the last token; the authors: 2)")),
    "eval.needle_span": optional(one_of("first", "answer")),
    "eval.gen_extra_tokens": optional(integer(0)),
    "eval.lm_eval.run": optional(list_of(TEXT, nonempty=False, unique=True)),
    "eval.lm_eval.max_length": optional(integer(1)),
    "eval.lm_eval.batch_size": optional(integer(1)),
    "eval.lm_eval.max_gen_toks": optional(integer(1)),
    "eval.lm_eval.num_fewshot": optional(integer(0)),
    "eval.lm_eval.limit": optional(number(0, open_lo=True)),
    "eval.lm_eval.bootstrap_iters": optional(integer(0)),
    "eval.lm_eval.all_checkpoints": optional(BOOL),
    "variant.first_full": integer(0),
    "variant.sinks": integer(0),
    "variant.full_rope": BOOL,
    "variant.efficient_rope": BOOL,
    "variant.headwise": BOOL,
}
SYNTHETIC_RULES: dict[str, Rule] = {
    "data.long_fraction": number(0, 1),
    "data.corpus_seed": integer(0),
    "data.n_words": integer(1),
    "data.branching": integer(1),
    "data.branch_probs": list_of(number(0, 1)),
    "data.zipf_exponent": optional(number(0)),
    "data.n_keys": integer(1),
    "data.n_values": integer(1),
    "data.facts_per_token": number(0),
    "data.tables_per_token": optional(number(0)),
    "data.table_size": optional(integer(1)),
    "data.copies_per_token": optional(number(0)),
    "data.copy_len": optional(list_of(integer(1), length=2)),
    "data.min_distance": integer(3),
    "data.distance_exponent": optional(number()),
    "data.short_doc_len": number(0, 1, open_lo=True),
}


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(key, value, allowed)


def _apply(cfg: DictConfig, rules: dict[str, Rule]) -> None:
    for key, rule in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        if rule.optional and (value is _ABSENT or value is None):
            continue
        _check(value is not _ABSENT and rule.ok(value), key, "(missing)" if value is _ABSENT else value,
               rule.allowed)


def validate(cfg: DictConfig) -> None:
    """Check the composed config; raise ConfigError on the first problem (key, bad value, what is allowed)."""
    try:
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation must resolve
        _validate(cfg)
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, cfg) from None


def _validate(cfg: DictConfig) -> None:
    from hybridlab.data.synthetic import DISTANCE_LAWS  # numpy only; the corpus's own list of laws

    _apply(cfg, RULES)
    if cfg.eval.get("haystack_file") is not None:
        from hybridlab.data.evalsets import haystack_text  # numpy only: reads and checks the user's file

        haystack_text(cfg.eval.haystack_file)
    source = cfg.data.source
    if source == "synthetic":
        _apply(cfg, {**SYNTHETIC_RULES, "data.distance_dist": one_of(*DISTANCE_LAWS)})
        d = cfg.data
        _check(len(d.branch_probs) == d.branching and abs(sum(d.branch_probs) - 1) < 1e-6, "data.branch_probs",
               d.branch_probs, f"data.branching={d.branching} probabilities that sum to 1")
        copy_len = d.get("copy_len")
        _check(copy_len is None or copy_len[0] <= copy_len[1], "data.copy_len", copy_len, "[min, max] with min <= max")
    else:  # real text: the rules and cross-key checks live with the corpora (hybridlab.data.corpora)
        from hybridlab.data import corpora

        _apply(cfg, corpora.text_rules(cfg.data))
        corpora.check(cfg.data)

    _apply(cfg, {"scale.variants": list_of(one_of(*variant_names()), unique=True),
                 "scale.seeds": list_of(integer(0), unique=True),
                 "scale.sizes": optional(list_of(one_of(*model_names()), unique=True))})
    t = cfg.train
    per_step = t.micro_batch_size * t.devices * t.num_nodes
    _check(t.batch_size % per_step == 0, "train.micro_batch_size", t.micro_batch_size,
           f"a divisor of train.batch_size ({t.batch_size}) / (train.devices ({t.devices}) x train.num_nodes "
           f"({t.num_nodes}))")
    from hybridlab.models.layout import build_layout  # local: layout validation shares the error type

    layout = build_layout(cfg.variant, cfg.model, cfg.scale)
    windows = [w for spec in layout for w in spec.windows if w is not None]
    hi = cfg.eval.niah_depth_range[1]
    if windows and max(windows) >= (1 - hi) * cfg.scale.context:
        # A needle inside a sliding window is found by the SWA layer without any full-attention retrieval.
        raise ConfigError("eval.niah_depth_range", list(cfg.eval.niah_depth_range),
                          f"a range whose upper end leaves every needle more than the variant's largest window "
                          f"({max(windows)} tokens) before the question at the training context "
                          f"({cfg.scale.context}): hi < {1 - max(windows) / cfg.scale.context:.4g}")
