"""Sequence-level distillation data: English passages partitioned across the target languages (passage i goes
to ``languages[i % n]``), translated by the unpruned parent through the generation layer (vLLM when it starts,
else transformers), each translation cut out by the gateway's answer extractor."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from transformers import AutoTokenizer

from moe_specialists.models.checkpoint import resolve_model
from moe_specialists.models.extract import extract_answer
from moe_specialists.models.generation import Generator, TransformersGenerator, VllmGenerator
from moe_specialists.models.prompts import render
from moe_specialists.pruning.data import language_code
from moe_specialists.pruning.pairs import Pair

# The paper's distillation languages (German, Japanese, Russian, Spanish, Mandarin).
PAPER_DISTILL_LANGUAGES = ["de", "ja", "ru", "es", "zh"]
Backend = Literal["auto", "vllm", "transformers"]  # auto: vLLM when it starts for the parent, else transformers


def partition_languages(passages: list[str], languages: list[str]) -> list[tuple[str, str]]:
    """(target language, passage): passage i goes to ``languages[i % n]``, so every passage is translated
    once and the languages get equal shares (within one)."""
    if not languages:
        raise ValueError("distillation needs at least one target language")
    return [(languages[i % len(languages)], p) for i, p in enumerate(passages)]


def parent_generator(
    parent_dir: Path,
    backend: Backend,
    max_model_len: int,
    batch_size: int,
    device: str,
    dtype: str,
    seed: int,
    experts_implementation: str | None = None,
) -> tuple[Generator, str]:
    """(generator, backend used) for the parent: vLLM when asked or (``auto``) when it starts, else
    transformers."""
    if backend in ("auto", "vllm"):
        try:
            gen = VllmGenerator(parent_dir, dtype=dtype, seed=seed, max_model_len=max_model_len,
                                enable_prefix_caching=True)  # fmt: skip
            return gen, "vllm"
        except Exception as e:  # not installed, no usable device, unsupported model: fall back (auto) or fail
            if backend == "vllm":
                raise ValueError(f"vLLM could not generate with {parent_dir}: {e}") from e
            print(f"vLLM unavailable for distillation ({type(e).__name__}: {e}); using transformers generate")
    return TransformersGenerator.load(parent_dir, dtype, device, batch_size, experts_implementation), "transformers"


def distillation_pairs(
    parent: str | Path,
    passages: list[str],
    languages: list[str],
    backend: Backend = "auto",
    max_new_tokens: int = 256,
    batch_size: int = 16,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    pivot: str = "en",
    experts_implementation: str | None = None,
) -> tuple[list[Pair], list[bool], str]:
    """The parent's greedy translation of each passage into its assigned language (``partition_languages``):
    one pair per passage, whether each output ended with EOS (unfinished ones are usually loops), and the
    backend used ("vllm" or "transformers"; ``auto`` tries vLLM and falls back, saying why)."""
    parent_dir, _ = resolve_model(parent)
    tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    jobs = partition_languages(passages, languages)
    for lang, _ in jobs:
        if language_code(lang) == language_code(pivot):
            raise ValueError(f"cannot distil into {lang!r}: it is the language of the passages ({pivot!r})")
    prompts = [
        tokenizer(render(tokenizer, pivot, lang, text), add_special_tokens=False)["input_ids"] for lang, text in jobs
    ]
    longest = max(len(p) for p in prompts) + max_new_tokens
    generator, used = parent_generator(
        parent_dir, backend, longest, batch_size, device, dtype, seed, experts_implementation
    )
    with generator:
        outputs = generator.generate(prompts, max_new_tokens)
    pairs, finished = [], []
    for (lang, text), g in zip(jobs, outputs, strict=True):
        # the answer extractor the gateway uses: the specialist learns what the gateway would answer
        pairs.append(Pair(pivot, lang, text, extract_answer(g.text, generator.end_markers)[0]))
        finished.append(g.finished)
    return pairs, finished, used
