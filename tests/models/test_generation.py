"""The generation layer: length-sorted left-padded batches, one trim at end ids, engines always shut down."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from moe_specialists.models.generation import (
    TransformersGenerator,
    VllmGenerator,
    check_vllm_can_serve,
    left_pad,
    length_sorted_batches,
    stop_token_ids,
    trim_at_end,
    vllm_engine,
    vllm_serving_problem,
)
from tests.released import save_released_gpt_oss
from tests.tiny import build_model, save_tiny, tiny_tokenizer

PAD, EOS = 0, 1  # tests.tiny: <pad> = 0, <eos> = 1


def test_stop_token_ids() -> None:
    tok = SimpleNamespace(eos_token_id=1)
    assert stop_token_ids(tok) == [1]
    assert stop_token_ids(tok, 7) == [1, 7]
    assert stop_token_ids(tok, [9, 1, 3]) == [1, 3, 9]
    assert stop_token_ids(SimpleNamespace(eos_token_id=None), None) == []


def test_length_sorted_batches() -> None:
    # lengths 3, 1, 2, 3, 5 -> longest first, ties in input order: 4, 0, 3, 2, 1
    assert length_sorted_batches([3, 1, 2, 3, 5], 2) == [[4, 0], [3, 2], [1]]
    assert length_sorted_batches([3, 1, 2], 8) == [[0, 2, 1]]
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches([1], 0)


def test_left_pad() -> None:
    ids, mask = left_pad([[10, 11, 12], [30, 31], [20]], pad_id=0)
    assert ids.tolist() == [[10, 11, 12], [0, 30, 31], [0, 0, 20]]
    assert mask.tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1]]


def test_trim_at_end() -> None:
    assert trim_at_end([5, 6, 1, 0, 0], [1], budget=5) == ([5, 6, 1], True)  # end kept, padding cut
    assert trim_at_end([5, 6, 1, 0, 0], [1], budget=2) == ([5, 6], False)  # own budget first
    assert trim_at_end([5, 9, 6, 1], [1, 9], budget=9) == ([5, 9], True)  # the first of several end ids
    assert trim_at_end([5, 6, 7], [1], budget=9) == ([5, 6, 7], False)


class Recording(torch.nn.Module):
    """The real tiny model, recording what ``generate`` receives."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner, self.calls = model, []
        self.generation_config = model.generation_config

    def generate(self, **kw):
        self.calls.append({k: kw[k].tolist() for k in ("input_ids", "attention_mask")} | {"max": kw["max_new_tokens"]})
        return self.inner.generate(**kw)


def greedy_alone(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """Unbatched, unpadded greedy continuation that never stops early (the reference)."""
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=PAD, min_new_tokens=n)  # fmt: skip
    return out[0, len(prompt) :].tolist()


def test_transformers_generator_pads_sorts_and_trims() -> None:
    model = build_model("qwen3_moe", seed=0)
    tokenizer = tiny_tokenizer()
    prompts = [[10, 11, 12], [20], [30, 31]]
    reference = [greedy_alone(model, p, 6) for p in prompts]
    # end at the token the first prompt's reference emits third: its continuation must stop just after it
    end = reference[0][2]
    assert end not in reference[0][:2] + reference[1][:3] + reference[2][:4], "pick another seed"
    gen = TransformersGenerator(Recording(model), tokenizer, batch_size=2, end_ids=[end])
    out = gen.generate(prompts, max_new_tokens=[6, 3, 4])

    calls = gen.model.calls
    assert calls[0]["input_ids"] == [[10, 11, 12], [PAD, 30, 31]]  # longest first, left padding
    assert calls[0]["attention_mask"] == [[1, 1, 1], [0, 1, 1]]
    assert calls[1]["input_ids"] == [[20]] and calls[0]["max"] == 6 and calls[1]["max"] == 3
    for i, (g, ref, budget) in enumerate(zip(out, reference, [6, 3, 4], strict=True)):
        expected, finished = trim_at_end(ref, [end], budget)  # the reference, cut by hand
        assert (g.ids, g.finished) == (expected, finished), i
        assert g.text == tokenizer.decode(expected, skip_special_tokens=False)
    assert [(g.ids, g.finished) for g in out] == [
        (reference[0][:3], True),  # cut just after the end id, which is kept
        (reference[1][:3], False),  # its own budget of 3
        (reference[2][:4], False),
    ]


def test_transformers_generator_stops_at_eos_and_encodes_text(tmp_path: Path) -> None:
    path = save_tiny("qwen3_moe", tmp_path / "m")
    gen = TransformersGenerator.load(path, batch_size=4)
    assert gen.end_ids == [EOS] and gen.end_markers == ("<eos>",)
    text = "Hello"
    (g,) = gen.generate([text], max_new_tokens=5)
    ref = greedy_alone(gen.model, gen.encode(text), 5)
    assert (g.ids, g.finished) == trim_at_end(ref, [EOS], 5)


def test_vllm_generator_shuts_down_when_the_body_raises(tmp_path: Path) -> None:
    """A multiprocess engine: after the ``with`` block raised, none of its processes is left."""
    import psutil

    path = save_tiny("qwen3_moe", tmp_path / "m")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    engine = {"in_process": False, "enforce_eager": True, "max_model_len": 128, "max_num_seqs": 2}
    with pytest.raises(RuntimeError, match="the body failed"), VllmGenerator(path, **engine) as gen:  # noqa: PT012
        started = {p.pid for p in psutil.Process().children(recursive=True)} - before
        assert started, "the engine runs in child processes"
        (g,) = gen.generate([[10, 11, 12]], max_new_tokens=3)
        assert 1 <= len(g.ids) <= 3
        raise RuntimeError("the body failed")
    alive = {}
    for pid in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive[pid] = " ".join(proc.cmdline())
    # multiprocessing's resource tracker belongs to this process (it lives as long as we do), not to the engine
    engine_left = {pid: cmd for pid, cmd in alive.items() if "resource_tracker" not in cmd}
    assert engine_left == {}, engine_left


MXFP4 = {"quant_method": "mxfp4"}


@pytest.mark.parametrize(("quantization", "cuda", "amx", "refused"), [
    (MXFP4, False, False, True),  # vLLM's only CPU MXFP4 kernel needs AMX
    (MXFP4, False, True, False),
    (MXFP4, True, False, False),  # GPU kernels
    (None, False, False, False),  # bf16 experts: vLLM's CPU MoE path
    ({"quant_method": "fp8"}, False, False, False),  # not ours to judge: vLLM says
])
def test_vllm_serving_problem(quantization, cuda, amx, refused) -> None:
    config = {"model_type": "gpt_oss"} | ({"quantization_config": quantization} if quantization else {})
    problem = vllm_serving_problem(config, cuda, amx)
    assert (problem is not None) == refused
    assert not refused or "AMX tiles" in problem


def test_an_mxfp4_checkpoint_on_a_cpu_without_amx_is_refused_before_vllm_starts(
    tmp_path: Path, cpu_without_amx: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The released GPT-OSS layout on a CPU without AMX: a clear ValueError, no engine process left; a hub id is
    left to vLLM; with AMX the same folder passes."""
    import psutil

    path = save_released_gpt_oss(tmp_path / "gpt-oss", layers=2, experts=4, top_k=2, shards=1)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ValueError, match=r"vLLM cannot serve .*gpt-oss here: its experts are MXFP4.*AMX tiles"), \
            vllm_engine(path, in_process=False, max_model_len=128):
        pass
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()
    check_vllm_can_serve("openai/gpt-oss-20b")  # no local folder: nothing to read, vLLM decides
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    check_vllm_can_serve(path)
