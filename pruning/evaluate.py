"""The `evaluate` job: translate a split of parallel data with a model or specialist and score it.

Per direction S->T: the model translates the first ``limit`` S passages of ``data_dir``'s ``split`` (``pruning.data``:
FLORES+ from the hub, the shipped sample or a FLORES-style folder; prompt:
``models.prompts.render``), the translation is extracted from the generated text, and the corpus is scored
against ``T.txt`` with sacrebleu (chrF, BLEU). A *degenerate* output (empty, looping, or carrying template
residue such as role tags / special tokens) is scored as an EMPTY hypothesis (it contributes 0) and counted
separately: ``degenerate_rate`` = degenerate / n. When sampling (temperature > 0) every seed is a full pass
and scores are reported as mean and (sample) std over seeds; greedy decoding runs once.

Backends: ``transformers`` (batched ``generate`` with left padding; always works) and ``vllm`` (the ``LLM``
engine; pruned specialists load through the project's vLLM plugin).

xCOMET (or any COMET model) when the user has it: ``comet_model="Unbabel/XCOMET-XL"`` (hub id or a local
checkpoint), scored by unbabel-comet in its own Python (``comet_python``; see ``CometScorer``). It is reported
x 100 as the mean segment score with degenerate outputs scored 0, like chrF's empty hypotheses.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moe_specialists.models.generation import Backend, Generator, open_generator
from moe_specialists.models.languages import canonical, split_direction
from moe_specialists.models.prompts import render
from moe_specialists.pruning.comet import CometScorer
from moe_specialists.pruning.config import (
    CommaInts,
    CommaList,
    DataRef,
    Device,
    DType,
    ExpertsImplementation,
    JobConfig,
    ModelRef,
)
from moe_specialists.pruning.data import DEFAULT_DATA, read_parallel
from moe_specialists.pruning.quality import Degeneracy, SegmentScorer, classify, corpus_scores, segment_mean


def parse_directions(directions: Sequence[str | tuple[str, str]]) -> list[tuple[str, str]]:
    """ "en-de", "eng_Latn-deu_Latn" or ("en", "de") -> ("en", "de"): canonical codes (``models.languages``)."""
    pairs = []
    for d in directions:
        pair = split_direction(d) if isinstance(d, str) else tuple(canonical(x) for x in d)
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"a direction is 'src-tgt' with two different languages, e.g. 'en-de'; got {d!r}")
        pairs.append(pair)
    if not pairs:
        raise ValueError("give at least one direction, e.g. ['en-de', 'de-en']")
    return pairs


class SeedScore(BaseModel):
    seed: int
    chrf: float
    bleu: float
    comet: float | None = None  # x 100, degenerate outputs 0
    degenerate: dict[str, int]  # kind -> count
    truncated: int  # outputs that hit max_new_tokens without an end marker


class PairResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    direction: str
    n: int
    chrf: float  # mean over seeds
    chrf_std: float
    bleu: float
    bleu_std: float
    comet: float | None = None  # mean over seeds, when a COMET model scored it
    degenerate_rate: float  # mean over seeds of degenerate / n
    seeds: list[SeedScore]
    seconds: float


class EvalResults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    backend: Backend
    split: str
    limit: int | None
    temperature: float
    max_new_tokens: int
    comet_model: str | None = None
    config: dict[str, Any] = {}  # the EvaluationConfig that produced these results
    directions: dict[str, PairResult] = Field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1))
        return path

    def mean(self, key: str = "chrf", directions: Sequence[str] | None = None) -> float:
        rows = [self.directions[d] for d in (directions or list(self.directions))]
        return statistics.fmean(getattr(r, key) for r in rows)

@dataclass(frozen=True)
class Scored:
    """One pass of ``translate_and_score``: the hypotheses as scored ("" for a degenerate output), why each
    output is degenerate (None: usable), how many hit their token budget without an end marker, and the
    corpus scores."""

    hypotheses: list[str]
    kinds: list[Degeneracy | None]
    truncated: int
    chrf: float
    bleu: float

    @property
    def degenerate(self) -> dict[str, int]:
        """kind -> count, every kind present."""
        return {kind: self.kinds.count(kind) for kind in ("empty", "loop", "residue")}


def translate_and_score(
    generator: Generator,
    source: str,
    target: str,
    sources: list[str],
    references: list[str],
    temperature: float = 0.0,
    seed: int = 0,
    max_new_tokens: int = 256,
    length_ratio: float = 2.0,
) -> Scored:
    """THE translate-and-score step of evaluation, recovery's dev chrF and the tiny translator's training job:
    ``sources`` rendered with ``models.prompts.render``, generated (greedy at temperature 0) with at most
    ``min(max_new_tokens, length_ratio * source tokens + 16)`` new tokens each, every output read with the
    gateway's extractor and classified (``quality.classify``: a degenerate one is scored as an EMPTY
    hypothesis), and the corpus scored against ``references`` (``quality.corpus_scores``: chrF, BLEU)."""
    tokenizer = generator.tokenizer
    prompts = [render(tokenizer, source, target, s) for s in sources]
    lengths = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in sources]
    budgets = [min(max_new_tokens, int(length_ratio * n) + 16) for n in lengths]
    outputs = generator.generate(prompts, budgets, temperature, seed)
    classified = [classify(g.text, generator.end_markers) for g in outputs]
    hyps = [text if kind is None else "" for text, kind in classified]
    chrf, bleu = corpus_scores(hyps, references, target)
    return Scored(hyps, [kind for _, kind in classified], sum(not g.finished for g in outputs), chrf, bleu)


def evaluate_direction(
    generator: Generator,
    source: str,
    target: str,
    sources: list[str],
    references: list[str],
    seeds: Sequence[int] = (0,),
    temperature: float = 0.0,
    max_new_tokens: int = 256,
    length_ratio: float = 2.0,
    comet: SegmentScorer | None = None,
) -> PairResult:
    """Translate and score one direction (``translate_and_score``) once per seed when sampling, once when
    greedy; COMET scores the same hypotheses, degenerate ones as 0."""
    started = time.perf_counter()
    per_seed = []
    for seed in seeds if temperature > 0 else list(seeds)[:1] or [0]:
        scored = translate_and_score(
            generator, source, target, sources, references, temperature, seed, max_new_tokens, length_ratio
        )
        degenerate = [kind is not None for kind in scored.kinds]
        neural = None if comet is None else segment_mean(comet, sources, scored.hypotheses, references, degenerate)
        per_seed.append(SeedScore(seed=seed, chrf=scored.chrf, bleu=scored.bleu, comet=neural,
                                  degenerate=scored.degenerate, truncated=scored.truncated))
    n = len(sources)
    std = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    return PairResult(
        direction=f"{source}-{target}",
        n=n,
        chrf=statistics.fmean(s.chrf for s in per_seed),
        chrf_std=std([s.chrf for s in per_seed]),
        bleu=statistics.fmean(s.bleu for s in per_seed),
        bleu_std=std([s.bleu for s in per_seed]),
        comet=None if comet is None else statistics.fmean(s.comet for s in per_seed),
        degenerate_rate=statistics.fmean(sum(s.degenerate.values()) / max(n, 1) for s in per_seed),
        seeds=per_seed,
        seconds=time.perf_counter() - started,
    )


class EvaluationConfig(JobConfig):
    """Translate ``split`` passages of ``data_dir`` in every direction with ``model`` and score them (module
    docstring); results go to ``out`` as JSON when given. ``comet_model`` is scored in ``comet_python``."""

    model: ModelRef
    directions: CommaList = Field(min_length=1)  # pairs "en-de"
    data_dir: DataRef = DEFAULT_DATA
    split: str = "devtest"
    limit: int | None = Field(None, ge=1)
    backend: Backend = "transformers"
    seeds: CommaInts = [0]
    temperature: float = 0.0
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(32, ge=1)
    dtype: DType = "float32"
    device: Device = "cpu"
    experts_implementation: ExpertsImplementation | None = None
    out: Path | None = None
    comet_model: str | None = None
    comet_python: str = sys.executable

    @model_validator(mode="after")
    def _feasible(self) -> EvaluationConfig:
        parse_directions(self.directions)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.temperature > 0 and not self.seeds:
            raise ValueError("sampling (temperature > 0) needs at least one seed, e.g. seeds: [0, 1, 2]")
        return self

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return parse_directions(self.directions)


def evaluate(
    config: EvaluationConfig, generator: Generator | None = None, comet: SegmentScorer | None = None
) -> EvalResults:
    """Run ``config``. ``generator`` reuses an already loaded model, ``comet`` an already loaded scorer (else
    ``config.comet_model`` is loaded). The results record the config."""
    c = config
    pairs = c.pairs
    texts = read_parallel(c.data_dir, c.split, sorted({lang for p in pairs for lang in p}), c.limit)
    own = generator is None
    generator = generator or open_generator(
        c.model, c.backend, c.dtype, c.batch_size, experts_implementation=c.experts_implementation, device=c.device
    )
    own_comet = comet is None and c.comet_model is not None
    if own_comet:
        comet = CometScorer(c.comet_model, c.comet_python)  # loads its model while we translate
    results = EvalResults(
        model=c.model,
        backend=c.backend,
        split=c.split,
        limit=c.limit,
        temperature=c.temperature,
        max_new_tokens=c.max_new_tokens,
        comet_model=c.comet_model,
        config=c.model_dump(mode="json"),
    )
    try:
        for src, tgt in pairs:
            results.directions[f"{src}-{tgt}"] = evaluate_direction(
                generator, src, tgt, texts[src], texts[tgt], c.seeds, c.temperature, c.max_new_tokens, comet=comet
            )
    finally:
        if own:
            generator.close()
        if own_comet:
            comet.close()
    if c.out is not None:
        results.save(c.out)
    return results
