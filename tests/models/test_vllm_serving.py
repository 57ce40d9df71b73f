"""Pruned specialists served by real vLLM (the CPU build): the plugin's per-layer expert counts.

For both families, a tiny model with a non-uniform plan (16, 6, 11, 4 of 16 experts) and its unpruned base:
vLLM fp32 greedy token ids == transformers greedy token ids. A specialist whose config.json disagrees with its
tensors is refused with a message naming the layer and the numbers. One engine at a time, shut down after use.
The helpers here (byte tokenizer, engines with the tiny settings) are shared with tests/pruning/test_collect_vllm.py;
the tiny models and the engine context manager are in the package (``models.random_tiny``,
``models.generation``) for the benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import os
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from moe_specialists.models.random_tiny import TINY_ENGINE, build_tiny, tiny_config  # noqa: E402, F401

COUNTS = [16, 6, 11, 4]
FAMILIES = ["qwen3_moe", "gpt_oss"]
PROMPTS = [
    [5, 17, 42, 99, 3],
    [200, 201, 7, 7, 7, 150, 64, 12, 88, 31, 19],
    list(range(30, 70)),
    [255, 1, 128, 64, 32, 16, 8, 4],
]


def byte_tokenizer() -> Any:
    """A real tokenizer without downloads: byte-level, one token per byte (ids 0..255)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab = {c: i for i, c in enumerate(sorted(vocab))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def hf_greedy(path: Path, prompts: list[list[int]], max_new_tokens: int, dtype: str = "float32") -> list[list[int]]:
    """Greedy tokens of transformers (the pruned classes registered), run to ``max_new_tokens`` as vLLM with
    ``ignore_eos``."""
    from moe_specialists.models.pruned import load_causal_lm

    model = load_causal_lm(path, dtype).eval()
    model.generation_config.eos_token_id = None
    out = []
    with torch.no_grad():
        for p in prompts:
            gen = model.generate(torch.tensor([p]), max_new_tokens=max_new_tokens, do_sample=False,
                                 attention_mask=torch.ones(1, len(p), dtype=torch.long))
            out.append(gen[0, len(p):].tolist())
    return out


def vllm_engine(path: Path, in_process: bool = True, **kw: Any) -> contextlib.AbstractContextManager[Any]:
    """``models.generation.vllm_engine`` with the tiny models' settings; ``in_process`` by default (about 20 s
    faster per engine on 2 cores, and the engine's own errors are raised here)."""
    from moe_specialists.models.generation import vllm_engine as engine

    return engine(path, in_process, **{**TINY_ENGINE, **kw})


def require_vllm_mxfp4() -> None:
    """Skip, saying why, where vLLM has no MXFP4 backend (``vllm_serving_problem``: a CPU without AMX tiles,
    e.g. before Sapphire Rapids; some CI machines): the serving steps cannot run there at all."""
    from moe_specialists.models.generation import vllm_serving_problem

    problem = vllm_serving_problem({"quantization_config": {"quant_method": "mxfp4"}}, torch.cuda.is_available(),
                                   torch.cpu._is_amx_tile_supported())
    if problem:
        pytest.skip(f"vLLM cannot serve MXFP4 here: {problem}")


def vllm_greedy(llm: Any, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


# ---------------------------------------------------------------------------------------------------------


def test_register_is_idempotent() -> None:
    from vllm import ModelRegistry

    from moe_specialists.models.adapters import ADAPTERS
    from moe_specialists.models.vllm_plugin import register

    register()
    register()
    archs = ModelRegistry.get_supported_archs()
    for adapter in ADAPTERS.values():
        assert adapter.pruned_architecture in archs


@pytest.mark.parametrize("pruned", [True, False], ids=["specialist", "base"])
@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_greedy_equals_transformers(tmp_path: Path, family: str, pruned: bool) -> None:
    path = build_tiny(tmp_path / "m", family, COUNTS if pruned else None)
    expected = hf_greedy(path, PROMPTS, max_new_tokens=12)
    with vllm_engine(path) as llm:
        got = vllm_greedy(llm, PROMPTS, max_new_tokens=12)
    assert got == expected


def test_expert_parallel_is_refused(tmp_path: Path) -> None:
    from vllm.engine.arg_utils import EngineArgs

    from moe_specialists.models.adapters import QWEN3_MOE
    from moe_specialists.models.vllm_models import refuse_expert_parallel

    path = build_tiny(tmp_path / "m", "qwen3_moe", COUNTS)
    config = EngineArgs(str(path), skip_tokenizer_init=True).create_engine_config()
    refuse_expert_parallel(config, QWEN3_MOE)
    config.parallel_config.enable_expert_parallel = True
    with pytest.raises(ValueError, match="expert parallelism .* not supported"):
        refuse_expert_parallel(config, QWEN3_MOE)


def _break_config(path: Path, **changes: Any) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_inconsistent_specialist_is_refused(tmp_path: Path) -> None:
    """Qwen3: config says layer 1 keeps 8 experts, the tensors hold 6. GPT-OSS: the same for packed tensors.
    Plus a per-layer list shorter than the model."""
    from moe_specialists.models.adapters import EXPERTS_PER_LAYER_KEY

    cases = []
    for family in FAMILIES:
        path = build_tiny(tmp_path / family, family, COUNTS)
        _break_config(path, **{EXPERTS_PER_LAYER_KEY: [16, 8, 11, 4]})
        cases.append((path, ["layer 1", "= 8", "6 expert"]))
    short = build_tiny(tmp_path / "short", "gpt_oss", COUNTS)
    _break_config(short, **{EXPERTS_PER_LAYER_KEY: COUNTS[:3]})
    cases.append((short, ["3 entries", "4 layers"]))
    for path, phrases in cases:
        with pytest.raises(Exception) as info, vllm_engine(path):  # noqa: B017 (vLLM may wrap the error)
            pass
        err = "".join(traceback.format_exception(info.value))
        for phrase in phrases:
            assert phrase in err, f"{phrase!r} not in the engine's error for {path.name}:\n{err[-3000:]}"
