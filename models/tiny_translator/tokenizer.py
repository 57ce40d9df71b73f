"""Byte-level BPE tokenizer of the bundled tiny translator, trained on the English-X pairs.

Saved as a ``PreTrainedTokenizerFast`` (tokenizer.json + tokenizer_config.json) with a small chat template, so
``models.prompts.render`` gives the prompt and the training sequence:

    <|user|>Translate this passage from English to German.\\n\\n{text}<|end|><|assistant|>{translation}<|end|>

``<|end|>`` is the eos token: it closes every turn, so greedy decoding stops after the translation.

    python -m moe_specialists.models.tiny_translator.tokenizer --pairs pairs.jsonl.gz --out models/tiny_translator
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from moe_specialists.models.prompts import LANGUAGE_NAMES, instruction

PAD, USER, ASSISTANT, END = "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, USER, ASSISTANT, END]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}" + USER + "{{ message['content'] }}" + END
    + "{%- elif message['role'] == 'assistant' -%}" + ASSISTANT + "{{ message['content'] }}" + END
    + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ASSISTANT + "{%- endif -%}"
)


def read_pairs(path: Path) -> Iterator[dict]:
    """Rows {"lang", "en", "xx", ...} of a gzipped JSONL file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _corpus(pairs: Path) -> Iterator[str]:
    for row in read_pairs(pairs):
        yield row["en"]
        yield row["xx"]
    # The instruction of every direction, so its words become single tokens.
    for src in LANGUAGE_NAMES:
        for tgt in LANGUAGE_NAMES:
            if src != tgt:
                for _ in range(50):
                    yield instruction(src, tgt, "")


def train_tokenizer(pairs: Path, vocab_size: int = 12_000) -> PreTrainedTokenizerFast:
    """Train byte-level BPE (GPT-2 pre-tokenisation, no normaliser) and wrap it with the special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(pairs), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--vocab-size", type=int, default=12_000)
    args = parser.parse_args()
    tokenizer = train_tokenizer(args.pairs, args.vocab_size)
    tokenizer.save_pretrained(args.out)
    print(f"saved a {len(tokenizer)}-token tokenizer to {args.out}")


if __name__ == "__main__":
    main()
