"""MXFP4 (OCP microscaling FP4) as gpt-oss checkpoints store their experts: pure tensor functions.

Layout (what transformers' ``integrations/mxfp4.py`` and vLLM dequantize): a weight ``W[..., n]`` is cut into
blocks of 32 consecutive values along the last dim. Each block has one shared E8M0 scale (a byte ``s``: the
power of two ``2^(s - 127)``) and 32 FP4 e2m1 codes (bit 3 the sign, bits 0-2 the magnitude index into
``0, 0.5, 1, 1.5, 2, 3, 4, 6``), packed two per byte: value ``2i`` in the low nibble, ``2i+1`` in the high one.
``blocks[..., n/32, 16]`` and ``scales[..., n/32]`` are uint8.

gpt-oss experts: the checkpoint's ``*_blocks`` are ``[E, out, in/32, 16]`` (rows = output features), while
transformers' parameters are ``[E, in, out]``; ``encode_experts`` / ``decode_experts`` do that transpose.

Encoding picks the smallest scale ``2^e`` with ``max|block| <= 6 * 2^e`` (no clipping: triton_kernels' default
"round up" scale) and rounds ``x / 2^e`` to the nearest FP4 value, ties to the even code. A value that is an
FP4 value times the block's power of two comes back exactly.
"""

from __future__ import annotations

import torch

BLOCK = 32  # values per shared scale
SCALE_BIAS = 127  # E8M0: scale = 2^(byte - 127)
FP4_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # code & 7 -> |value|; code & 8 -> negative
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_ROWS_PER_CHUNK = 1 << 18  # blocks encoded at once (bounds the float32 temporaries to ~32 MiB)


def block_exponents(amax: torch.Tensor) -> torch.Tensor:
    """Smallest integer e with ``amax <= 6 * 2^e`` (int32), clamped to E8M0's [-127, 127]; -127 for 0.

    With ``amax = m * 2^p`` (m in [0.5, 1)): e = p - 3 if m <= 0.75 else p - 2 (6 * 2^(p-3) = 0.75 * 2^p)."""
    m, p = torch.frexp(amax.float())
    e = torch.where(m <= 0.75, p - 3, p - 2)
    e = torch.where(amax > 0, e, torch.full_like(e, -SCALE_BIAS))
    return e.clamp(-SCALE_BIAS, SCALE_BIAS).to(torch.int32)


def fp4_codes(x: torch.Tensor) -> torch.Tensor:
    """FP4 e2m1 code (uint8, 0..15) of each value of ``x`` (already divided by its scale, |x| <= 6):
    nearest magnitude, ties to the even code, bit 3 set for negative values."""
    mag = x.abs()
    mids = torch.tensor(_MIDPOINTS, dtype=mag.dtype, device=mag.device)
    idx = torch.bucketize(mag, mids)  # ties go to the lower code
    tie = (idx < len(_MIDPOINTS)) & (mag == mids[idx.clamp(max=len(_MIDPOINTS) - 1)])
    idx = idx + (tie & (idx % 2 == 1)).to(idx.dtype)  # ...unless that code is odd
    return (idx + 8 * (x < 0).to(idx.dtype)).to(torch.uint8)


def encode_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w[..., n]`` (n a multiple of 32, finite) -> ``(blocks[..., n/32, 16], scales[..., n/32])``, uint8."""
    *prefix, n = w.shape
    if n % BLOCK:
        raise ValueError(f"MXFP4 needs the last dim to be a multiple of {BLOCK}, got shape {list(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("MXFP4 cannot encode inf or NaN")
    rows = w.reshape(-1, BLOCK)
    blocks = torch.empty(rows.shape[0], BLOCK // 2, dtype=torch.uint8, device=w.device)
    scales = torch.empty(rows.shape[0], dtype=torch.uint8, device=w.device)
    for r0 in range(0, rows.shape[0], _ROWS_PER_CHUNK):
        chunk = rows[r0 : r0 + _ROWS_PER_CHUNK].float()
        e = block_exponents(chunk.abs().amax(dim=1))
        codes = fp4_codes(torch.ldexp(chunk, -e[:, None].float()))
        blocks[r0 : r0 + _ROWS_PER_CHUNK] = codes[:, 0::2] | (codes[:, 1::2] << 4)
        scales[r0 : r0 + _ROWS_PER_CHUNK] = (e + SCALE_BIAS).to(torch.uint8)
    return blocks.reshape(*prefix, n // BLOCK, BLOCK // 2), scales.reshape(*prefix, n // BLOCK)


def decode_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of ``encode_mxfp4``: ``value = magnitude[code & 7] * (-1 if code & 8) * 2^(scale - 127)``."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {list(blocks.shape)} and scales {list(scales.shape)} do not match")
    lut = torch.tensor(FP4_MAGNITUDES + tuple(-v for v in FP4_MAGNITUDES), dtype=torch.float32)
    codes = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1).reshape(*blocks.shape[:-1], BLOCK).long()
    values = torch.ldexp(lut[codes], (scales.to(torch.int32) - SCALE_BIAS)[..., None].float())
    return values.reshape(*scales.shape[:-1], scales.shape[-1] * BLOCK).to(dtype)


def encode_experts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' gpt-oss expert parameter ``[E, in, out]`` -> checkpoint ``*_blocks [E, out, in/32, 16]``
    and ``*_scales [E, out, in/32]``."""
    return encode_mxfp4(weight.transpose(1, 2))


def decode_experts(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Checkpoint ``*_blocks``/``*_scales`` -> transformers' expert parameter ``[E, in, out]``."""
    return decode_mxfp4(blocks, scales, dtype).transpose(1, 2).contiguous()



EXPERT_MATRICES = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def mxfp4_state_dict(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A trained gpt-oss state dict in the released layout: each expert matrix ``[E, in, out]`` becomes its
    ``*_blocks`` / ``*_scales`` (``encode_experts``); every other tensor is cast to ``dtype``."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(EXPERT_MATRICES):
            out[f"{name}_blocks"], out[f"{name}_scales"] = encode_experts(tensor.detach().float())
        else:
            out[name] = tensor.detach().to(dtype).contiguous()
    return out
