"""The MXFP4 encoder: hand-computed bytes, and round trips through transformers' own dequantization."""

import pytest
import torch
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from moe_specialists.models.mxfp4 import (
    block_exponents,
    decode_experts,
    decode_mxfp4,
    encode_experts,
    encode_mxfp4,
    fp4_codes,
)


def test_block_of_32_by_hand():
    # 0, .5, 1, 1.5, 2, 3, 4, 6, then their negatives, then ties and in-betweens, all times 2^-3
    values = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, -1, -1.5, -2, -3, -4, -6, -0.0]
    values += [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.9, 0.1, 0.3, -0.74, -2.6, 1.0, 1.0, 1.0, 1.0]
    blocks, scales = encode_mxfp4(torch.tensor(values) / 8)
    assert scales.tolist() == [127 - 3]  # max 6/8 = 6 * 2^-3
    # low nibble = even element: (0, .5) -> 0x10, (1, 1.5) -> 0x32, (2, 3) -> 0x54, (4, 6) -> 0x76;
    # (-.5, -1) -> 0xA9, (-1.5, -2) -> 0xCB, (-3, -4) -> 0xED, (-6, -0) -> 0x0F (-0 is code 0)
    # ties to the even code: .25 -> 0, .75 -> 1.0 (2); 1.25 -> 1.0 (2), 1.75 -> 2.0 (4); 2.5 -> 2 (4),
    # 3.5 -> 4 (6); 5 -> 4 (6), 5.9 -> 6 (7); .1 -> 0, .3 -> .5 (1); -.74 -> -.5 (9), -2.6 -> -3 (13)
    assert blocks.tolist() == [[0x10, 0x32, 0x54, 0x76, 0xA9, 0xCB, 0xED, 0x0F,
                                0x20, 0x42, 0x64, 0x76, 0x10, 0xD9, 0x22, 0x22]]


def test_scale_is_the_smallest_power_of_two_that_fits():
    amax = torch.tensor([6.0, 6.01, 4.0, 3.0, 0.75, 1e-30, 0.0, 12.0])
    e = block_exponents(amax)
    assert e.tolist() == [0, 1, 0, -1, -3, -102, -127, 1]
    assert (amax <= 6 * torch.pow(2.0, e.double())).all()
    assert fp4_codes(torch.tensor([-0.25, 6.0, -6.0])).tolist() == [8, 7, 15]  # -0.25 ties to -0


def test_refuses_what_it_cannot_encode():
    with pytest.raises(ValueError, match="multiple of 32"):
        encode_mxfp4(torch.zeros(4, 48))
    with pytest.raises(ValueError, match="inf or NaN"):
        encode_mxfp4(torch.full((32,), float("nan")))


def grid_values(shape, seed=0):
    """Random FP4 values times a random power of two per block of 32: exactly representable."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, shape, generator=g)
    lut = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])
    exp = torch.randint(-20, 10, (*shape[:-1], shape[-1] // 32), generator=g).repeat_interleave(32, dim=-1)
    return torch.ldexp(lut[codes], exp.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_through_transformers_dequantization(dtype):
    """Experts [E, in, out] -> blocks/scales -> transformers' convert_moe_packed_tensors -> [E, in, out]."""
    E, n_in, n_out = 3, 96, 40  # noqa: N806
    exact = grid_values((E, n_out, n_in)).transpose(1, 2).to(dtype)
    blocks, scales = encode_experts(exact)
    assert blocks.shape == (E, n_out, n_in // 32, 16) and scales.shape == (E, n_out, n_in // 32)
    assert blocks.dtype == scales.dtype == torch.uint8
    assert torch.equal(convert_moe_packed_tensors(blocks, scales, dtype=dtype), exact)
    assert torch.equal(decode_experts(blocks, scales, dtype), exact)  # ours agrees with theirs

    g = torch.Generator().manual_seed(1)
    w = (torch.randn(E, n_in, n_out, generator=g) * 0.02).to(dtype)
    back = convert_moe_packed_tensors(*encode_experts(w), dtype=torch.float32)
    # the error of each value is at most half the FP4 grid step at its magnitude, in its block's scale:
    # steps are 0.5 below 2, 1 in [2, 4), 2 in [4, 6]
    blocks_of = lambda t: t.transpose(1, 2).reshape(E, n_out, -1, 32)  # noqa: E731
    wb, bb = blocks_of(w.float()), blocks_of(back)
    scale = torch.pow(2.0, block_exponents(wb.abs().amax(-1)).float())[..., None]
    mag = wb.abs() / scale
    step = torch.where(mag < 2, 0.5, torch.where(mag < 4, 1.0, 2.0))
    assert ((bb - wb).abs() <= step / 2 * scale + 1e-12).all()
    assert (bb - wb).abs().max() > 0  # really lossy for values off the grid


def test_decode_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        decode_mxfp4(torch.zeros(2, 3, 16, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.uint8))
