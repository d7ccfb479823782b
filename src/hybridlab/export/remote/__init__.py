"""The model code an exported folder carries (copied beside its config.json): a thin Hugging Face wrapper
around hybridlab's own HybridLM, so the exported model computes exactly what the project's model computes."""
