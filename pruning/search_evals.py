"""The evaluations a search judges candidates by: the parent loaded once (transformers, or a vLLM engine whose
workers mask experts), each candidate's dropped experts masked out of its routers or answered by their constants
(``models.masking``, ``models.vllm_masking``: the numbers of the sliced specialist, no copy written), scored per
direction on a split, and cached per (kept experts, direction, split, limit, decoding) under ``work_dir/evals``,
so a rerun, another floor or a fleet reuses what was measured."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moe_specialists.models.plan import Dropped
from moe_specialists.pruning.evaluate import EvaluationConfig, PairResult, evaluate
from moe_specialists.pruning.quality import SegmentScorer

if TYPE_CHECKING:
    import torch

    from moe_specialists.models.adapters import FamilyAdapter
    from moe_specialists.pruning.search import SearchConfig


class Evaluations:
    """Cached per-direction results of the parent and of candidates for one search's config."""

    def __init__(self, config: SearchConfig, model_dir: Path, adapter: FamilyAdapter,
                 constants: dict[int, torch.Tensor] | None, comet: SegmentScorer | None = None):
        """``constants``: decoder layer -> [E, H] mean outputs of its experts (substitute candidates); ``comet``: a
        loaded segment scorer for metric "comet" (default: ``CometScorer`` of the config's model, started at the
        first evaluation)."""
        self.config, self.model_dir, self.adapter, self.constants = config, model_dir, adapter, constants
        self._comet = comet
        self._generator: Any = None
        self.new = 0  # candidate evaluations on the search split measured (not read from the cache)

    def scores(self, kept: dict[int, list[int]] | None, split: str, mode: Dropped = "drop") -> dict[str, PairResult]:
        """Per direction results of the parent (``kept`` None) or the plan on ``split`` (its dropped experts
        masked, or substituted), cached."""
        c = self.config
        files = {d: self._cache_file(kept, d, split, mode) for d in c.directions}
        missing = [d for d, f in files.items() if not f.exists()]
        if missing:
            from moe_specialists.models.masking import experts_masked, experts_substituted  # torch: when measured

            self.new += kept is not None and split == c.split
            job = EvaluationConfig(model=self.model_dir, directions=missing, data_dir=c.data_dir, split=split,
                                   limit=c.limit, max_new_tokens=c.max_new_tokens, batch_size=c.batch_size,
                                   dtype=c.dtype, device=c.device)
            generator = self.generator()
            scorer = self.comet_scorer() if c.metric == "comet" else None
            constants = self.constants if mode == "substitute" and kept else None
            if c.backend == "vllm":
                from moe_specialists.models.vllm_masking import experts_masked_in_vllm

                routed = experts_masked_in_vllm(generator.llm, kept or None, constants)
            elif constants is not None:
                routed = experts_substituted(generator.model, self.adapter, kept, constants)  # type: ignore[arg-type]
            else:
                routed = experts_masked(generator.model, self.adapter, kept or {})
            with routed:
                res = evaluate(job, generator, comet=scorer)
            for d in missing:
                files[d].parent.mkdir(parents=True, exist_ok=True)
                files[d].write_text(res.directions[d].model_dump_json(indent=1))
        return {d: PairResult.model_validate_json(f.read_text()) for d, f in files.items()}

    def _cache_file(self, kept: dict[int, list[int]] | None, direction: str, split: str, mode: Dropped) -> Path:
        c = self.config
        parts = [sorted(kept.items()) if kept else None, direction, split, c.limit, c.max_new_tokens, c.dtype,
                 str(self.model_dir)]
        if kept and mode == "substitute":  # the constants are the statistics' (the drop key stays as it was)
            parts += [mode, str(c.statistics), c.statistics.stat().st_mtime_ns]
        if c.metric == "comet":  # results with COMET scores (chrF-only keys stay as they were)
            parts += ["comet", c.comet_model]
        if c.backend == "vllm":  # judged in vLLM (transformers keys stay as they were)
            parts += ["vllm"]
        key = json.dumps(parts)
        return c.work_dir / "evals" / f"{direction}-{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def comet_scorer(self) -> SegmentScorer:
        if self._comet is None:
            from moe_specialists.pruning.comet import CometScorer

            c = self.config
            self._comet = CometScorer(c.comet_model, c.comet_python)  # type: ignore[arg-type]
        return self._comet

    def value(self, r: PairResult) -> float:
        """A direction's result in the metric."""
        if self.config.metric == "chrf":
            return r.chrf
        assert r.comet is not None
        return r.comet

    def generator(self) -> Any:
        """The parent, loaded once: in transformers, or in a vLLM engine whose workers can mask its experts
        (``models.vllm_masking``; eager: a compiled graph would keep the routers it was traced with; no prefix
        cache: a cached prefix would be another candidate's)."""
        if self._generator is None:
            from moe_specialists.models.generation import TransformersGenerator, VllmGenerator

            c = self.config
            if c.backend == "vllm":
                from moe_specialists.models.vllm_masking import MASKING

                self._generator = VllmGenerator(self.model_dir, c.dtype, worker_extension_cls=MASKING,
                                                enforce_eager=True, enable_prefix_caching=False,
                                                max_num_seqs=c.batch_size)
            else:
                self._generator = TransformersGenerator.load(self.model_dir, c.dtype, c.device, c.batch_size)
        return self._generator


    def close(self) -> None:
        if hasattr(self._generator, "close"):
            self._generator.close()
        self._generator = None
        if hasattr(self._comet, "close"):
            self._comet.close()  # type: ignore[union-attr]
