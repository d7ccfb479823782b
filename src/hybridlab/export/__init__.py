"""Export of the project's checkpoints to Hugging Face format (hf.py): config, safetensors weights, the model code
in remote/ (loaded by AutoModelForCausalLM with trust_remote_code) and the tokenizer (tokenizer.py)."""
