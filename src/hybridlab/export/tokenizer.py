"""The tokenizer of a data folder as a Hugging Face tokenizer (transformers' fast tokenizer).

Real text: the folder's tokenizer.json (trained BPE or a pretrained one), with the data config's BOS and pad
tokens; the pipeline separates documents with BOS, so BOS is also the end-of-text token. The synthetic corpus:
a word-level tokenizer over its token names (<pad> <bos> <def> <qry> <sep>, keys k0.., values v0.., filler
words w0..), whitespace-separated; a word outside the vocabulary encodes as <pad>.
"""

from __future__ import annotations

from pathlib import Path

from hybridlab.data.synthetic import N_SPECIAL, SPECIAL_NAMES, Vocab


def synthetic_names(vocab: Vocab) -> list[str]:
    """The name of every synthetic token id, in id order."""
    names = list(SPECIAL_NAMES)
    assert len(names) == N_SPECIAL
    names += [f"k{i}" for i in range(vocab.n_keys)] + [f"v{i}" for i in range(vocab.n_values)]
    return names + [f"w{i}" for i in range(vocab.n_words)]


def synthetic_tokenizer(vocab: Vocab):
    """A PreTrainedTokenizerFast whose ids are the synthetic corpus's token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = synthetic_names(vocab)
    tok = Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)}, unk_token=SPECIAL_NAMES[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL_NAMES[1], eos_token=SPECIAL_NAMES[1],
                                   pad_token=SPECIAL_NAMES[0], unk_token=SPECIAL_NAMES[0])


def data_tokenizer(cfg, data_dir: str | Path, manifest: dict):
    """The data folder's tokenizer as a PreTrainedTokenizerFast (see the module docstring)."""
    from transformers import PreTrainedTokenizerFast

    if manifest.get("tokenizer", {}).get("kind", "synthetic") == "synthetic":
        from hybridlab.data.synthetic import CorpusSpec

        vocab = CorpusSpec.from_config(cfg.data).vocab
        if vocab.size != int(manifest["vocab_size"]):
            from hybridlab.config import ConfigError

            raise ConfigError("data", f"vocabulary of {vocab.size}", f"the data folder's ({manifest['vocab_size']}): "
                              "give the same data settings as prepare-data")
        return synthetic_tokenizer(vocab)
    t = cfg.data.tokenizer
    bos, pad = t.get("bos_token", "<bos>"), t.get("pad_token", "<pad>") or t.get("bos_token", "<bos>")
    return PreTrainedTokenizerFast(tokenizer_file=str(Path(data_dir) / manifest["tokenizer"]["file"]),
                                   bos_token=bos, eos_token=bos, pad_token=pad)
