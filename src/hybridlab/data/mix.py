"""The mix: which rows of the prepared groups each split uses, so that every split holds its streams in the
configured shares (the paper's 1:1 long:short by document length), and the report of what came out.

Per split, stream s (a corpus's long or short documents) is to give round(share_s * n_seqs) rows. If some
stream has fewer rows than that in all its groups, every stream of the split is scaled down by the same factor
(`fulfilled` < 1 in the report, and a warning): the shares are kept and the split is smaller, since the
step-indexed sampler cycles epochs anyway. A stream's rows are taken from its groups in proportion to what each
wrote (a prefix of each group's shard), so the unused slack is spread over the whole corpus.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from hybridlab.data import corpora as corp

log = logging.getLogger("hybridlab")


def apportion(total: int, sizes: list[int]) -> list[int]:
    """`total` split over parts in proportion to `sizes` (largest remainders, earlier parts first on ties),
    never more than a part's size; `total` must not exceed their sum."""
    whole = sum(sizes)
    if total > whole:
        raise ValueError(f"cannot take {total} of {whole}")
    if whole == 0:
        return [0] * len(sizes)
    take = [total * s // whole for s in sizes]
    order = sorted(range(len(sizes)), key=lambda i: (-(total * sizes[i] % whole), i))
    short = total - sum(take)
    for i in order:
        if short == 0:
            break
        if take[i] < sizes[i]:
            take[i] += 1
            short -= 1
    return take


def select(data_cfg: DictConfig, records: list[dict]) -> tuple[dict[str, list[dict]], dict]:
    """(split -> shard entries {tokens, rows, corpus, class, group}, the mix report) from the group records."""
    targets = corp.targets(data_cfg)
    found: dict[tuple[str, str, str], list[tuple[int, dict]]] = {k: [] for k in targets}
    for r in records:
        for s in r["streams"]:
            found.setdefault((s["split"], r["corpus"], s["class"]), []).append((r["group"], s))
    splits: dict[str, list[dict]] = {}
    report: dict[str, dict] = {}
    for split, n in corp.split_rows(data_cfg).items():
        keys = [k for k in targets if k[0] == split]
        avail = {k: sum(s["tokens"]["shape"][0] for _, s in found[k]) for k in keys}
        for k in keys:
            if targets[k] > 0 and avail[k] == 0:
                from hybridlab.config import ConfigError

                raise ConfigError(f"data.corpora.{k[1]}.take.{k[2]}", targets[k] / n,
                                  f"0 (corpus {k[1]} has no {k[2]} documents for the {split} split; a document is "
                                  f"long from data.long_doc_min={data_cfg.long_doc_min} of the context)")
        fulfilled = min([1.0] + [avail[k] / targets[k] for k in keys if targets[k] > 0])
        chosen = {k: targets[k] if fulfilled == 1.0 else int(fulfilled * targets[k]) for k in keys}
        entries, streams = [], []
        for k in keys:
            groups = sorted(found[k], key=lambda gs: gs[0])
            takes = apportion(chosen[k], [s["tokens"]["shape"][0] for _, s in groups])
            entries += [{"tokens": s["tokens"], "rows": [0, t], "corpus": k[1], "class": k[2], "group": g}
                        for (g, s), t in zip(groups, takes, strict=True) if t > 0]
            streams.append({"corpus": k[1], "class": k[2], "target_rows": targets[k], "available_rows": avail[k],
                            "rows": chosen[k], "share": chosen[k] / max(1, sum(chosen.values())),
                            "docs_written": sum(s["docs"] for _, s in groups)})
        if fulfilled < 1.0:
            log.warning("%s split: %.1f%% of the %d sequences (a stream ran short; shares kept): %s", split,
                        100 * fulfilled, n, [(s["corpus"], s["class"], s["available_rows"], s["target_rows"])
                                             for s in streams])
        splits[split] = entries
        total = sum(chosen.values())
        report[split] = {"target_rows": n, "rows": total, "fulfilled": fulfilled,
                         "long_share": sum(s["rows"] for s in streams if s["class"] == "long") / max(1, total),
                         "streams": streams}
    return splits, report


def document_counts(records: list[dict]) -> dict[str, dict[str, int]]:
    """Per corpus, the document counts of its groups summed (read, dropped by class or full stream, ...)."""
    out: dict[str, dict[str, int]] = {}
    for r in records:
        c = out.setdefault(r["corpus"], {})
        for k, v in r["documents"].items():
            c[k] = c.get(k, 0) + v
        for s in r["streams"]:
            key = f"{s['split']}_{s['class']}"
            c[key] = c.get(key, 0) + s["docs"]
    return out
