"""Pruned specialists served by real vLLM (the CPU build): the plugin's per-layer expert counts.

For both families, a tiny model with a non-uniform plan (16, 6, 11, 4 of 16 experts) and its unpruned base:
vLLM fp32 greedy token ids == transformers greedy token ids. A specialist whose config.json disagrees with its
tensors is refused with a message naming the layer and the numbers. One engine at a time, shut down after use.
The helpers here (tiny models, byte tokenizer, engines) are shared with tests/pruning/test_collect_vllm.py
and benchmarks/vllm_memory.py.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

COUNTS = [16, 6, 11, 4]
FAMILIES = ["qwen3_moe", "gpt_oss"]
VOCAB = 320
PROMPTS = [
    [5, 17, 42, 99, 3],
    [200, 201, 7, 7, 7, 150, 64, 12, 88, 31, 19],
    list(range(30, 70)),
    [255, 1, 128, 64, 32, 16, 8, 4],
]


def tiny_config(family: str, counts: list[int] | None = None, layers: int = 4, experts: int = 16) -> Any:
    """Hidden 128, head_dim 64 (vLLM's CPU attention needs >= 64), top-4, no EOS (greedy runs to the end)."""
    from transformers import GptOssConfig, Qwen3MoeConfig

    from moe_specialists.models.adapters import ADAPTERS

    common = dict(
        vocab_size=VOCAB, hidden_size=128, num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
        head_dim=64, num_experts_per_tok=4, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    if family == "qwen3_moe":
        config = Qwen3MoeConfig(**common, intermediate_size=256, moe_intermediate_size=64, num_experts=experts,
                                norm_topk_prob=True)
    else:
        config = GptOssConfig(**common, intermediate_size=64, num_local_experts=experts, sliding_window=128)
    adapter = ADAPTERS[family]
    config.architectures = [adapter.base_architecture]
    if counts is not None:
        config = type(config).from_dict(adapter.pruned_config_dict(config.to_dict(), counts))
    return config


def build_tiny(path: Path, family: str, counts: list[int] | None = None, seed: int = 0, **kw: Any) -> Path:
    """A random tiny checkpoint in the on-disk format `apply` writes (pruned when ``counts`` is given)."""
    from transformers import AutoModelForCausalLM

    import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, counts, **kw), dtype=torch.float32)
    model.save_pretrained(path)
    return path


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


def hf_greedy(path: Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            gen = model.generate(torch.tensor([p]), max_new_tokens=max_new_tokens, do_sample=False,
                                 attention_mask=torch.ones(1, len(p), dtype=torch.long))
            out.append(gen[0, len(p):].tolist())
    return out


@contextlib.contextmanager
def vllm_engine(path: Path, in_process: bool = True, **kw: Any) -> Iterator[Any]:
    """A vLLM engine on a tiny checkpoint (fp32, eager, small KV cache), shut down on exit.

    ``in_process``: engine core and worker live in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), which
    starts about 20 s faster per engine on 2 cores and raises the engine's own errors here.
    """
    import vllm.envs
    from vllm import LLM

    args = dict(dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=8, seed=0,
                skip_tokenizer_init=True)
    saved = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    threads = torch.get_num_threads()
    llm = None
    try:
        llm = LLM(str(path), **{**args, **kw})
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
