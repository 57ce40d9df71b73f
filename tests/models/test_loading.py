"""The loading policy for statistics and training: MXFP4 bases dequantized, every parameter in the asked dtype."""

from unittest import mock

import pytest
import torch
from safetensors import safe_open

from moe_specialists.models.checkpoint import shard_files
from moe_specialists.models.mxfp4 import decode_experts
from moe_specialists.models.pruned import load_causal_lm
from tests.released import save_released_gpt_oss, save_released_qwen3_moe


def stored(folder, name):
    for shard in shard_files(folder):
        with safe_open(shard, "pt") as f:
            if name in f.keys():  # noqa: SIM118
                return f.get_tensor(name)
    raise KeyError(name)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mxfp4_base_is_dequantized_into_the_requested_dtype(tmp_path, dtype):
    base = save_released_gpt_oss(tmp_path / "g", layers=2)
    model = load_causal_lm(base, dtype)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    experts = model.model.layers[1].mlp.experts
    assert type(experts).__name__ == "GptOssExperts"  # the family's own module, hooks and pruned classes fit
    p = "model.layers.1.mlp.experts."
    for proj in ("gate_up_proj", "down_proj"):
        want = decode_experts(stored(base, p + proj + "_blocks"), stored(base, p + proj + "_scales"))
        assert torch.equal(getattr(experts, proj), want.to(getattr(torch, dtype)))


def test_released_qwen3_loads_in_float32(tmp_path):
    base = save_released_qwen3_moe(tmp_path / "q", layers=2)
    model = load_causal_lm(base, "float32")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    gate = stored(base, "model.layers.1.mlp.experts.3.gate_proj.weight").float()
    assert torch.equal(model.model.layers[1].mlp.experts.gate_up_proj[3, :64], gate)


def test_the_mxfp4_kernel_module_is_never_swapped_in(tmp_path):
    """On a CUDA machine with the `kernels` package, transformers' own loading replaces the experts module by
    its MXFP4 kernel module (fetched through `get_kernel`). No GPU here: CUDA and `kernels` are faked (the
    only fakes), `get_kernel` raises, so the plain path fails where the swap would happen; ours dequantizes."""
    import transformers.integrations.hub_kernels as hub_kernels
    import transformers.quantizers.quantizer_mxfp4 as quantizer
    from transformers import AutoModelForCausalLM

    class Swapped(Exception):
        pass

    def get_kernel(*args, **kwargs):
        raise Swapped("transformers would swap in its MXFP4 kernel module here")

    base = save_released_gpt_oss(tmp_path / "g", layers=2)
    with (
        mock.patch.object(quantizer, "is_kernels_available", lambda: True),
        mock.patch.object(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cuda")),
        mock.patch.object(torch.cuda, "is_available", lambda: True),
        mock.patch.object(torch.cuda, "get_device_capability", lambda *a: (9, 0)),
        mock.patch.object(hub_kernels, "get_kernel", get_kernel),
    ):
        with pytest.raises(Swapped):
            AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = load_causal_lm(base, "float32")
    assert type(model.model.layers[0].mlp.experts).__name__ == "GptOssExperts"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
