"""hybridlab: a replication pipeline for hybrid efficient-attention language models."""
__version__ = "0.1.0"
