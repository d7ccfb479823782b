"""Configuration: composes the packaged Hydra configs and lists the variants and scales.

This module is the one source of truth the Snakefile, the CLI and the tests read. It imports no torch, so the
workflow and the figure rebuild stay light.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(str(resources.files("hybridlab") / "conf"))


class ConfigError(ValueError):
    """A user-facing configuration error: names the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config key '{key}': got {value!r}; allowed: {allowed}")


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
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args)
    validate(cfg)
    return cfg


def scale_plan(scale: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """What the workflow needs to know of a scale: its variants, seeds and accelerator."""
    cfg = load_config(scale=scale, overrides=overrides)
    plan = OmegaConf.to_container(cfg.scale, resolve=True)
    assert isinstance(plan, dict)
    return plan


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(key, value, allowed)


def _positive_int(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    _check(isinstance(value, int) and not isinstance(value, bool) and value > 0, key, value, "an integer > 0")


def validate(cfg: DictConfig) -> None:
    """Check the composed config; raise ConfigError on the first problem."""
    for key in ("scale.context", "model.d_model", "model.n_layers", "model.n_heads", "model.head_dim",
                "model.d_ff", "train.steps", "train.batch_size", "train.micro_batch_size",
                "data.n_train_seqs", "data.n_val_seqs"):
        _positive_int(cfg, key)
    for name in cfg.scale.variants:
        _check(name in variant_names(), "scale.variants", name, ", ".join(variant_names()))
    _check(len(cfg.scale.seeds) > 0, "scale.seeds", list(cfg.scale.seeds), "a non-empty list of integers")
    _check(cfg.train.batch_size % cfg.train.micro_batch_size == 0, "train.micro_batch_size",
           cfg.train.micro_batch_size, f"a divisor of train.batch_size ({cfg.train.batch_size})")
    _check(cfg.train.optimizer in ("adamw", "muon"), "train.optimizer", cfg.train.optimizer, "adamw, muon")
    _check(cfg.train.schedule in ("cosine", "wsd"), "train.schedule", cfg.train.schedule, "cosine, wsd")
    _check(cfg.model.attn_backend in ("auto", "sdpa", "flex", "flash"), "model.attn_backend",
           cfg.model.attn_backend, "auto, sdpa, flex, flash")
    _check(cfg.train.lr > 0, "train.lr", cfg.train.lr, "a number > 0")
    from hybridlab.models.layout import build_layout  # local: layout validation shares the error type

    build_layout(cfg.variant, cfg.model, cfg.scale)
