"""The data stage: corpora (synthetic by default, or real text), packed token shards, and the eval sets.

See docs/data.md. Entry point: `prepare.prepare(cfg, out_dir)`; readers: `shards.load_split`,
`shards.load_key_mask`, `niah.load_niah`, `evalsets.load_evalset`.
"""
