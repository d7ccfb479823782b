"""The config reference: every key with its default, what it allows, what it means and which scales set it.

Generated from the one definition of each key (hybridlab.settings) and the values Hydra composes from conf/:
the default is the key's value with no scale preset applied (data=hf for the real-text keys), and a scale
"sets" a key when its composed value differs from that default. Written to docs/config.md by `make docs`
(`python -m hybridlab.config_doc docs/config.md`); `hybridlab list keys` prints the same rows; a test fails
when the committed page differs from what this module makes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hybridlab.settings import CONF_DIR, SETTINGS, Setting, option_names

# The page's sections: a title and the keys that belong to it (the first matching section wins).
SECTIONS = (
    ("Top level", lambda key, s: "." not in key),
    ("scale: the preset (conf/scale/, chosen with --scale)", lambda key, s: key.startswith("scale.")),
    ("model: the size (conf/model/, chosen by the scale or --size)", lambda key, s: key.startswith("model.")),
    ("variant: the hybrid layout (conf/variant/, chosen with --variant)", lambda key, s: key.startswith("variant.")),
    ("data: every source", lambda key, s: key.startswith("data.") and s.source is None),
    ("data: the synthetic corpus (data=synthetic, the default)", lambda key, s: s.source == "synthetic"),
    ("data: real text (data=hf, data=files, data=paper)", lambda key, s: s.source == "text"),
    ("train: optimisation (conf/train/)", lambda key, s: key.startswith("train.")),
    ("eval.lm_eval: lm-evaluation-harness (`hybridlab lm-eval`)", lambda key, s: key.startswith("eval.lm_eval.")),
    ("eval: evaluation and analysis (conf/eval/)", lambda key, s: key.startswith("eval.")),
)
VARIANT_KEYS = ("label", "efficient", "ratio", "first_full", "window", "sinks", "full_rope", "efficient_rope",
                "headwise")
SIZE_KEYS = ("d_model", "n_layers", "n_heads", "head_dim", "d_ff")


@dataclass(frozen=True)
class Row:
    """One key of the reference, every field as text."""

    key: str
    default: str
    allowed: str
    doc: str
    set_by: str


def _compose(args: list[str]) -> dict[str, Any]:
    from hybridlab.config import _compose as compose  # Hydra: imported when a reference is made, not before

    container = OmegaConf.to_container(compose(args), resolve=False, throw_on_missing=False)
    assert isinstance(container, dict)
    return container


def _select(tree: Any, parts: list[str], names: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every value at a dotted pattern's parts (`*`: any one name), by the names the wildcards took."""
    if not parts:
        return {names: tree}
    if not isinstance(tree, dict):
        return {}
    head, rest = parts[0], parts[1:]
    if head == "*":
        found: dict[tuple[str, ...], Any] = {}
        for name, child in tree.items():
            found |= _select(child, rest, (*names, str(name)))
        return found
    return _select(tree[head], rest, names) if head in tree else {}


def _text(value: Any, tree: bool = False, parent: bool = False) -> str:
    """A value as the page shows it; `tree`: a free-form mapping (its names only), `parent`: a mapping whose
    keys have rows of their own."""
    if parent and isinstance(value, dict):
        return "(keys below)"
    if value == "???":
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{}" if not value else ("mapping: " + ", ".join(map(str, value)) if tree else
                                       "{" + ", ".join(f"{k}: {_text(v)}" for k, v in value.items()) + "}")
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)


def _shown(found: dict[tuple[str, ...], Any], key: str, setting: Setting) -> str:
    """The values at one pattern: the value alone for a plain key, `name: value` per match for a pattern."""
    parent = any(k.startswith(key + ".") for k in SETTINGS)
    if list(found) == [()]:
        return _text(found[()], setting.tree, parent)
    if parent and all(isinstance(v, dict) for v in found.values()):
        return ", ".join("/".join(names) for names in found) + " (keys below)"
    return "; ".join(f"{'/'.join(names)}: {_text(v, setting.tree, parent)}" for names, v in found.items())


def scale_order(name: str) -> tuple[int, str]:
    """The presets from the smallest: smoke, mini..., then the rest (paper last)."""
    return ({"smoke": 0, "paper": 2}.get(name, 1), name)


def reference_rows() -> list[tuple[str, list[Row]]]:
    """Every key of SETTINGS as a Row, by section (see the module docstring for what default and set_by mean)."""
    synthetic = _compose(["~scale"])
    # Per source, the compositions a default is read from, the first that holds the key (files: data=files).
    bases = {None: {"": synthetic}, "synthetic": {"": synthetic},
             "text": {"": _compose(["~scale", "data=hf"]), "data=files": _compose(["~scale", "data=files"])}}
    scales = {name: _compose([f"scale={name}"]) for name in sorted(option_names("scale"), key=scale_order)}
    sections: dict[str, list[Row]] = {title: [] for title, _ in SECTIONS}
    for key, setting in SETTINGS.items():
        parts = key.split(".")
        everywhere = all(_select(cfg, parts) for cfg in scales.values())
        base, default = {}, "(each scale sets it)" if everywhere else "(none)"
        for where, cfg in bases[setting.source].items():
            base = _select(cfg, parts)
            if base:
                default = _shown(base, key, setting) + (f" ({where})" if where else "")
                break
        set_by = [f"{name}: {_shown(found, key, setting)}" for name, cfg in scales.items()
                  if (found := _select(cfg, parts)) and found != base]
        if key.startswith("variant."):
            set_by.append("each variant (table below)")
        title = next(t for t, belongs in SECTIONS if belongs(key, setting))
        sections[title].append(Row(key, default, setting.allowed_text, setting.doc, "; ".join(set_by)))
    return [(title, rows) for title, rows in sections.items() if rows]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _options_table(group: str, keys: tuple[str, ...]) -> list[str]:
    lines = ["| name | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in option_names(group):
        values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"))
        assert isinstance(values, dict)
        lines.append(f"| `{name}` | " + " | ".join(_cell(_text(values.get(k))) for k in keys) + " |")
    return lines


def reference_markdown() -> str:
    """docs/config.md."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `make docs` (python -m hybridlab.config_doc docs/config.md) from src/hybridlab/settings.py",
        "     and src/hybridlab/conf/. Do not edit: tests/unit/test_config_doc.py fails when this page is stale. -->",
        "",
        "Every key of a run's config. A run is (scale, variant, seed): `--scale`, `--variant` and `--seed` choose",
        "them; any key below is changed by a Hydra override after the command's flags, e.g.",
        "`hybridlab describe --scale mini train.steps=500 eval.niah_samples=64`, or in the workflow",
        "`snakemake --config overrides='[\"train.steps=500\"]'`. A group is swapped whole: `model=S3`, `data=hf`.",
        "`hybridlab describe --scale S [overrides]` prints what a scale with those overrides would run.",
        "",
        "- **default**: the value with no scale preset applied: the root config's choices (conf/config.yaml:",
        "  size `tiny`, variant `full`, data `synthetic`; `data=hf` for the real-text keys). `(required)` must be",
        "  set by an override.",
        "- **set by scales**: the value each scale preset composes where it differs from the default.",
        "- **allowed**: what validation accepts; a bad value is refused before any job starts, with one line naming",
        "  the key, the value and this text.",
        "- In a key, `*` stands for any name (a corpus, a document class).",
        "",
    ]
    for title, rows in reference_rows():
        lines += [f"## {title}", "", "| key | default | allowed | meaning | set by scales |", "|---|---|---|---|---|"]
        lines += [f"| `{r.key}` | {_cell(r.default)} | {_cell(r.allowed)} | {_cell(r.doc)} | {_cell(r.set_by)} |"
                  for r in rows]
        lines.append("")
    lines += ["## Variants (conf/variant/)", "", "Windows are given at the paper's 16K context and scaled by "
              "`scale.context / scale.ref_context`.", "", *_options_table("variant", VARIANT_KEYS), "",
              "## Model sizes (conf/model/)", "", *_options_table("model", SIZE_KEYS), ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = reference_markdown()
    if not argv or argv[0] == "-":
        sys.stdout.write(text)
    else:
        from hybridlab.io import write_bytes

        write_bytes(Path(argv[0]), text.encode())
        print(f"config reference -> {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
