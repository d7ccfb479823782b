"""Model definitions: layouts (layout.py), attention (attention.py), recurrent mixers (recurrent/) and the
hybrid LM (hybrid.py). `build_model` turns a composed config into a model.

Only `layout` is light: the torch-backed names load on first use, so validating a config never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from hybridlab.models.layout import LayerSpec, build_layout

__all__ = ["HybridLM", "LayerSpec", "ModelShape", "Receptive", "build_layout", "build_model", "match_inner_dim",
           "model_shape"]
_LAZY = {"HybridLM": "hybrid", "ModelShape": "hybrid", "Receptive": "hybrid", "build_model": "factory",
         "match_inner_dim": "factory", "model_shape": "factory"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"hybridlab.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'hybridlab.models' has no attribute {name!r}")
