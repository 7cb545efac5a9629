"""Tokenizers built locally (no download): word-level for the built-in task, byte-level BPE for
free text. Both come back as standard ``PreTrainedTokenizerFast`` objects that
``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "sep_token": "<sep>",
}


def build_tokenizer(
    texts: Iterable[str],
    kind: Literal["word", "bpe"] = "word",
    vocab_size: int = 8000,
    min_frequency: int = 1,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``texts``.

    ``word``: one token per word or punctuation run (the built-in task's vocabulary is small and
    closed, so every word is one token and decoding joins tokens with spaces). ``bpe``: byte-level
    BPE that can encode any text. Special tokens: ``<pad> <unk> <bos> <eos> <sep>``.
    """
    specials = list(SPECIAL_TOKENS.values())
    if kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            show_progress=False,
        )
    elif kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        raise ValueError(f"tokenizer kind must be 'word' or 'bpe', got {kind!r}")
    tok.train_from_iterator(texts, trainer=trainer)
    # Generation pads prompts on the left; saved with the tokenizer so reloads agree.
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **SPECIAL_TOKENS)
