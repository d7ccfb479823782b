"""Configuration: composes the packaged Hydra configs, validates them and lists the variants and scales.

This module is what the Snakefile, the CLI and the tests read; every key's meaning and rule is defined once in
hybridlab.settings, its values in the YAML files of conf/. It imports no torch, so the workflow and the figure
rebuild stay light.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

# The rules' building blocks are re-exported: modules that check their own keys build rules with them.
from hybridlab.settings import (  # noqa: F401
    BOOL,
    CONF_DIR,
    GLOBS,
    TEXT,
    Rule,
    existing,
    integer,
    list_of,
    number,
    one_of,
    optional,
    rules,
)
from hybridlab.settings import option_names as _names


class ConfigError(ValueError):
    """A user-facing configuration error: names the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value)
        self.key, self.value, self.allowed = key, value, " ".join(str(allowed).split())  # always one line
        super().__init__(f"config key '{key}': got {value!r}; allowed: {self.allowed}")


def variant_names() -> list[str]:
    """Every hybrid variant that has a config file (adding a variant is adding one file)."""
    return _names("variant")


def scale_names() -> list[str]:
    return _names("scale")


def model_names() -> list[str]:
    return _names("model")


def variant_labels() -> dict[str, str]:
    """Each variant's label, the paper's name for it (`label:` of its file, e.g. swa128 -> SWA-128); a file
    without one is labelled by its name. Reads the files alone (no composition): the figures use it."""
    labels = {}
    for name in variant_names():
        label = OmegaConf.load(CONF_DIR / "variant" / f"{name}.yaml").get("label")
        labels[name] = str(label) if label else name
    return labels


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
    _check_flag_overrides(overrides or [], {"scale": scale, "variant": variant, "seed": seed, "model": size})
    args = [f"scale={scale}", f"variant={variant}", f"seed={seed}", *(overrides or [])]
    if size is not None:
        args.append(f"model={size}")
    cfg = _compose(args)
    validate(cfg)
    name = OmegaConf.select(cfg, "variant.name")
    _check(name == variant, "variant.name", name, f"'{variant}', the name of its file conf/variant/{variant}.yaml "
           "(rows and folders are labelled by the name)")
    return cfg


# Keys that a flag sets (and, in the workflow, a --config key). Hydra applies overrides after the flags' values,
# so an override that contradicts a flag would silently win (a DAG in which every variant's folder trains the
# overridden variant); one that repeats the flag's value changes nothing. `model=` without --size picks the size.
FLAG_KEYS = {"scale": ("--scale", "scale=S"), "variant": ("--variant", "variants=[V, ...]"),
             "seed": ("--seed", "seeds=[N, ...]"), "model": ("--size", "overrides=[scale.sizes=[SIZE,...]]")}


def _check_flag_overrides(overrides: list[str], flags: dict[str, Any]) -> None:
    """Refuse an override of a flag-set key (FLAG_KEYS) whose value differs from the flag's, naming both."""
    for arg in overrides:
        lhs, sep, rhs = str(arg).partition("=")
        key = lhs.lstrip("+~")
        if key not in FLAG_KEYS or (key == "model" and flags["model"] is None):
            continue
        value = rhs.strip().strip("'\"")
        if key == "seed" and re.fullmatch(r"[+-]?\d+", value):
            value = int(value)
        if sep and not lhs.startswith("~") and str(value) == str(flags[key]):
            continue  # the flag's own value, repeated
        flag, workflow = FLAG_KEYS[key]
        raise ConfigError(key, value if sep else arg, f"{flags[key]!r}, the value of {flag} (the override {arg!r} "
                          f"contradicts the flag and would silently replace it: give the value with {flag} alone; "
                          f"in the workflow: --config {workflow})")


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
    sizes = list(plan.get("sizes") or [None])
    cfgs = [load_config(scale, v, seeds[0], overrides, sizes[0]) for v in variants]
    for size in sizes[1:]:  # the first size is the scale's default, checked above
        sized = load_config(scale, variants[0], seeds[0], overrides, size)
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


def check_unknown_keys(cfg: DictConfig) -> None:
    """Every key of the composed config must be one that hybridlab.settings documents: a misspelled key in a
    user's YAML (`sink_tokens: 4` in a variant file, `warmup_step: 5`) or a `+key=` override is refused, with the
    closest known key suggested, instead of leaving the intended setting at its default."""
    import difflib

    from hybridlab.settings import SETTINGS, undocumented

    unknown = undocumented(OmegaConf.to_container(cfg, resolve=True))
    if not unknown:
        return
    dotted = unknown[0]
    known = [k for k in SETTINGS if k.split(".")[0] == dotted.split(".")[0] and "*" not in k]
    near = difflib.get_close_matches(dotted, known, n=1, cutoff=0.6)
    where = f"the keys of {dotted.split('.')[0]}" if "." in dotted else "the config's sections"
    hint = f"did you mean '{near[0]}'?" if near else f"see {where} in docs/config.md"
    value = OmegaConf.select(cfg, dotted, default=None, throw_on_resolution_failure=False)
    raise ConfigError(dotted, value, f"a key that hybridlab reads ({hint})")


def check_schedule(train: Any) -> None:
    """Cross-key rules of the schedule, once the step count is known (from train.steps or a token budget):
    warmup ends before the last step; under wsd, warmup and decay fit in the run."""
    steps, warmup = int(train.steps), int(train.warmup_steps)
    _check(warmup < steps, "train.warmup_steps", warmup, f"an integer below the run's steps ({steps})")
    if train.schedule == "wsd":
        decay = max(1, int(round(steps * float(train.get("decay_frac") or 0.2))))
        _check(warmup <= steps - decay, "train.warmup_steps", warmup,
               f"at most {steps - decay}: the run's {steps} steps minus the wsd decay ({decay} steps, "
               "train.decay_frac)")


def check_backends(cfg: DictConfig) -> None:
    """A forced kernel backend must be usable here: its package installed, a GPU accelerator (flash-attn and
    fla run on CUDA only; where torch is already imported, a CUDA device present), no attention sinks for
    flash-attn."""
    import importlib.util
    import sys

    torch = sys.modules.get("torch")  # never imported here: the workflow validates configs without torch
    no_cuda = cfg.scale.accelerator == "cpu" or (torch is not None and not torch.cuda.is_available())
    for key, forced, package in (("model.attn_backend", "flash", "flash_attn"), ("model.mixer_backend", "fla", "fla")):
        if OmegaConf.select(cfg, key) != forced:
            continue
        pip = {"flash_attn": "flash-attn", "fla": "flash-linear-attention"}[package]
        _check(importlib.util.find_spec(package) is not None, key, forced,
               f"auto or the PyTorch backend: {pip} is not installed on this machine (pip install {pip})")
        _check(not no_cuda, key, forced, "auto or the PyTorch backend: "
               f"{pip} needs a CUDA GPU (scale.accelerator is {cfg.scale.accelerator}"
               + ("" if cfg.scale.accelerator == "cpu" else ", and this machine has none") + ")")
    if cfg.model.attn_backend == "flash" and int(cfg.variant.get("sinks") or 0) > 0:
        raise ConfigError("model.attn_backend", "flash", "sdpa, flex or auto: flash-attn cannot attend to the "
                          f"variant's {cfg.variant.sinks} attention sinks")


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
        check_unknown_keys(cfg)
        _validate(cfg)
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, cfg) from None


def _validate(cfg: DictConfig) -> None:
    _apply(cfg, rules(None))
    if cfg.eval.get("haystack_file") is not None:
        from hybridlab.data.evalsets import haystack_text  # numpy only: reads and checks the user's file

        haystack_text(cfg.eval.haystack_file)
    source = cfg.data.source
    if source == "synthetic":
        _apply(cfg, rules("synthetic"))
        d = cfg.data
        _check(len(d.branch_probs) == d.branching and abs(sum(d.branch_probs) - 1) < 1e-6, "data.branch_probs",
               d.branch_probs, f"data.branching={d.branching} probabilities that sum to 1")
        copy_len = d.get("copy_len")
        _check(copy_len is None or copy_len[0] <= copy_len[1], "data.copy_len", copy_len, "[min, max] with min <= max")
    else:  # real text: the rules and cross-key checks live with the corpora (hybridlab.data.corpora)
        from hybridlab.data import corpora

        _apply(cfg, corpora.text_rules(cfg.data))
        corpora.check(cfg.data)

    t = cfg.train
    if t.get("budget_k") is None and (cfg.scale.get("budget_k_by_size") or {}).get(cfg.model.name) is None:
        check_schedule(t)  # with a token budget the steps are known once the model is built (resolve_budget)
    check_backends(cfg)
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
