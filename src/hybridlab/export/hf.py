"""Export one checkpoint of a run to a Hugging Face model folder.

The folder holds config.json (model_type "hybridlab": the model shape, the per-layer layout, where the weights
came from; auto_map points AutoConfig and AutoModelForCausalLM at the model code beside it),
model.safetensors (HybridLM's state dict under `model.`), configuration_hybridlab.py and modeling_hybridlab.py
(remote/: a wrapper around hybridlab's own model, so loading needs `hybridlab` installed and the logits equal
the project's model's), and the tokenizer (tokenizer.json, tokenizer_config.json; export/tokenizer.py).
Load it with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`.

The folder is written beside its destination and renamed into place, so a killed export leaves no half folder.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from hybridlab.models import HybridLM

REMOTE = Path(__file__).parent / "remote"
REMOTE_FILES = ("configuration_hybridlab.py", "modeling_hybridlab.py")
AUTO_MAP = {"AutoConfig": "configuration_hybridlab.HybridLabConfig",
            "AutoModelForCausalLM": "modeling_hybridlab.HybridLabForCausalLM"}


def hf_config(model: HybridLM, context: int, bos_id: int, pad_id: int, checkpoint: dict):
    """The HybridLabConfig of a model (plain data only: it is written as JSON)."""
    from hybridlab.export.remote.configuration_hybridlab import HybridLabConfig

    layout = [{"kind": s.kind, "role": s.role, "rope": s.rope, "windows": list(s.windows), "sinks": s.sinks}
              for s in model.layout]
    config = HybridLabConfig(shape=dataclasses.asdict(model.shape), layout=layout, checkpoint=checkpoint,
                             max_position_embeddings=int(context), bos_token_id=bos_id, eos_token_id=bos_id,
                             pad_token_id=pad_id, architectures=["HybridLabForCausalLM"])
    config.auto_map = dict(AUTO_MAP)
    return config


def export_model(model: HybridLM, tokenizer, out: str | Path, context: int, checkpoint: dict) -> Path:
    """Write `model` (any HybridLM) and `tokenizer` (a PreTrainedTokenizerFast) as a Hugging Face folder."""
    from hybridlab.export.remote.modeling_hybridlab import HybridLabForCausalLM

    out = Path(out)
    config = hf_config(model, context, tokenizer.bos_token_id, tokenizer.pad_token_id, checkpoint)
    wrapper = HybridLabForCausalLM(config)
    wrapper.model.load_state_dict(model.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        wrapper.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name in REMOTE_FILES:
            shutil.copyfile(REMOTE / name, tmp / name)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_checkpoint(cfg, data_dir: str | Path, run_dir: str | Path, out: str | Path,
                      checkpoint: str | Path | None = None) -> Path:
    """Export a run's final trajectory checkpoint (or `checkpoint`, a tokens_*.pt of it) with the data folder's
    tokenizer."""
    from hybridlab.data.shards import read_manifest
    from hybridlab.evals.checkpoints import list_checkpoints, load_checkpoint
    from hybridlab.export.tokenizer import data_tokenizer
    from hybridlab.models import build_model

    manifest = read_manifest(data_dir)
    model = build_model(cfg, manifest["vocab_size"]).eval()
    path = Path(checkpoint) if checkpoint else list_checkpoints(run_dir)[-1]
    info = load_checkpoint(path, model)
    source = {"variant": cfg.variant.name, "seed": int(cfg.seed), "scale": cfg.scale.name, "file": path.name, **info}
    return export_model(model, data_tokenizer(cfg, data_dir, manifest), out, int(manifest["context"]), source)
