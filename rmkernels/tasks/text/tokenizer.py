"""The character-level tokenizer of the arithmetic task, in the Hugging Face format.

Ids are fixed (documented in ``docs/text.md``):

| ids | tokens |
|---|---|
| 0-9 | the digits ``0``-``9`` (id = digit) |
| 10-15 | ``+ - * = ; #`` |
| 16 | ``<eos>``: end of the work |
| 17 | ``<pad>``: fills the generation window after ``<eos>`` (and the padding of shorter rows) |
| 18 | ``<mask>``: the mask token of the diffusion model |

``tokenizer.json`` is built with the ``tokenizers`` library (a word-level model over single
characters: a split pre-tokenizer isolating every character, a fuse decoder) and loaded with
``transformers.PreTrainedTokenizerFast``, as a user's real tokenizer would be. Nothing downloads.
"""
from __future__ import annotations

import os
from importlib.resources import files


CHARS = "0123456789+-*=;#"
EOS, PAD, MASK = "<eos>", "<pad>", "<mask>"
EOS_ID, PAD_ID, MASK_ID = 16, 17, 18
VOCAB_SIZE = 19
MAX_LENGTH = 128  # tokenizer_config.json's model_max_length (a task sequence is at most 16 + 52 tokens)
HASH_ID, MINUS_ID = CHARS.index("#"), CHARS.index("-")
ASSETS = files("rmkernels.tasks.text") / "assets"


def build_tokenizer():
    """A ``tokenizers.Tokenizer`` with the fixed ids above."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(CHARS)}
    vocab.update({EOS: EOS_ID, PAD: PAD_ID, MASK: MASK_ID})
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in (EOS, PAD, MASK)])
    return tok


def save_tokenizer(directory: str) -> str:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` to ``directory``; returns it."""
    import json

    os.makedirs(directory, exist_ok=True)
    build_tokenizer().save(os.path.join(directory, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": PAD, "mask_token": MASK,
              "model_max_length": MAX_LENGTH}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        f.write(json.dumps(config, indent=2) + "\n")
    return directory


def load_tokenizer(directory: str | None = None):
    """``PreTrainedTokenizerFast`` from ``directory`` (default: the shipped one), checked against the
    fixed ids.

    Example
    -------
    >>> tok = load_tokenizer()
    >>> tok("37*4=")["input_ids"], tok.mask_token_id
    ([3, 7, 12, 4, 13], 18)
    """
    from transformers import PreTrainedTokenizerFast

    directory = str(directory or ASSETS)
    if not os.path.exists(os.path.join(directory, "tokenizer.json")):
        raise ValueError(f"no tokenizer.json in {directory!r}")
    tok = PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)
    got = (tok.eos_token_id, tok.pad_token_id, tok.mask_token_id, len(tok))
    if got != (EOS_ID, PAD_ID, MASK_ID, VOCAB_SIZE) or tok.convert_tokens_to_ids(list(CHARS)) != list(range(len(CHARS))):
        raise ValueError(f"tokenizer in {directory!r} does not have the task's fixed ids (eos, pad, mask, size = {got})")
    return tok


def encode(tok, texts) -> list[list[int]]:
    """Token ids of each text; ``ValueError`` naming a character outside the vocabulary."""
    out = []
    for t in texts:
        bad = set(t.replace(EOS, "").replace(PAD, "").replace(MASK, "")) - set(CHARS)
        if bad:
            raise ValueError(f"text {t!r} holds characters outside the tokenizer's vocabulary: {sorted(bad)}")
        out.append(tok(t, add_special_tokens=False)["input_ids"])
    return out


def decode_generation(tok, ids) -> str:
    """The text of generated ids up to the first ``<eos>`` (masks shown as ``_``, padding dropped)."""
    ids = [int(i) for i in ids]
    if EOS_ID in ids:
        ids = ids[: ids.index(EOS_ID)]
    return "".join("_" if i == MASK_ID else "" if i == PAD_ID else tok.convert_ids_to_tokens(i) for i in ids)


__all__ = ["ASSETS", "CHARS", "EOS_ID", "MASK_ID", "PAD_ID", "VOCAB_SIZE", "build_tokenizer", "decode_generation",
           "encode", "load_tokenizer", "save_tokenizer"]
