"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3) for CPU inference, used per conv where faster.

Why by hand: oneDNN (PyTorch's CPU convolution) has dropped its Winograd kernels for fp32 and runs
the VGG convs directly; NNPACK's Winograd is not reachable on every CPU (it fails to initialise on
these AMD machines). F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2016) computes each 4x4 output tile from a 6x6 input tile with 36 multiplies per channel pair instead
of 144, as 36 independent GEMMs that MKL runs near peak. On conv3_1..conv5_3 and the RPN conv this is
1.3-2.4x faster than oneDNN on 2 cores (AMD EPYC, AVX2), conv2_x 1.0-1.3x, conv1_2 0.85-1.05x
(benchmarks/bench_infer.py --layers, docs/benchmarks.md). conv1_1 (3 input channels) is never converted.

Where it runs is a choice per conv and input among the CPU kernels (vggdet/model/cpu_kernels.py: this,
the prepacked oneDNN conv, its bf16 twin): the inference package times them once per machine
(vggdet/inference/tuning.py, like cuDNN's benchmark mode); without timings, the fixed width rule
`eligible` decides. This module is the arithmetic only: no timing, no file I/O, no module swap.

Arithmetic: exact in real numbers; in float32 the error is 1.1-4.8e-6 of the layer's output range
(float64 reference in tests/test_winograd.py), the same order as changing the summation order.

Memory: each conv that runs by Winograd caches its transformed weights, 36/9 = 4x the conv weights:
260 MiB for conv2_1..conv5_3 + the RPN conv (65 MiB of weights); a conv chosen for oneDNN drops it.
Measured 2026-11-28 (AMD EPYC, 2 cores), before tuning: process RSS after one eval-mode forward of
the full-size model on a 1x3x600x800 input is 1876-1964 MiB with Winograd vs 1568-1603 MiB without
(3 fresh processes each), ~340 MiB more on average: the cache plus work memory the allocator keeps.
`cpu_kernels.revert` frees the cache.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

M, A = 4, 6  # output tile, input tile (M + 3 - 1)
# Convs with fewer input channels are not converted at all (conv1_1, 3 channels): the 36 GEMMs have an
# inner dimension of C, so at C = 3 they are memory-bound, and the 36 product planes (2.25x the output)
# are written and read again whatever the CPU; measured 0.69x here, the largest map, never worth timing.
MIN_CANDIDATE_IN = 16
# The fixed rule (`eligible`), used without a timing cache: tuned on the AMD EPYC host (AVX2), where the
# narrower conv1_2 (64 -> 64) is faster on oneDNN; on an Intel Xeon (AVX-512) it was reported 1.17x faster by Winograd.
MIN_IN, MIN_OUT = 64, 128
CHUNK_ELEMENTS = 1 << 17  # tiles x channels per chunk: ~19 MB per 36-plane buffer, cache-friendly

# Transform matrices for the interpolation points 0, +-1, +-2 (Lavin & Gray, section 4.2).
_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
_KB = torch.kron(torch.tensor(_BT, dtype=torch.float64), torch.tensor(_BT, dtype=torch.float64)).float()
_KA = torch.kron(torch.tensor(_AT, dtype=torch.float64), torch.tensor(_AT, dtype=torch.float64)).float()


def candidate(conv: nn.Module) -> bool:
    """Whether `conv` is a 3x3/stride-1/pad-1 (zeros) Conv2d with at least MIN_CANDIDATE_IN input channels:
    one that Winograd computes exactly and may run faster (whether it does: `eligible` or a `choose`)."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.in_channels >= MIN_CANDIDATE_IN)


def eligible(conv: nn.Module) -> bool:
    """The fixed rule, used without a `choose` callable: a `candidate` at least MIN_IN -> MIN_OUT channels wide."""
    return candidate(conv) and conv.in_channels >= MIN_IN and conv.out_channels >= MIN_OUT


def usable(conv: nn.Module, x: Tensor) -> bool:
    """Whether `conv3x3(x, conv)` can run here: a `candidate` conv on a float32 [N,C,H,W] CPU tensor
    without grad or autocast."""
    return (candidate(conv) and x.dim() == 4 and x.device.type == "cpu" and x.dtype == torch.float32
            and conv.weight.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))


def transformed_weight(conv: nn.Conv2d) -> Tensor:
    """G w G^T for every (out, in) pair as [36, Cin, Cout], cached on the module until its weight changes."""
    w = conv.weight
    # The entry keeps `w` alive, so its storage address cannot pass to a new tensor behind our back:
    # the same object, address and in-place version mean unchanged weights.
    key = (w.data_ptr(), 0 if w.is_inference() else w._version, tuple(w.shape))
    cached: Optional[tuple] = getattr(conv, "_winograd_cache", None)
    if cached is None or cached[0] is not w or cached[1] != key:
        g = torch.tensor(_G, dtype=torch.float64)
        u = torch.einsum("ik,ockl,jl->ijco", g, w.detach().double(), g)  # exact in float64, then rounded once
        cached = (w, key, u.reshape(A * A, w.shape[1], w.shape[0]).float().contiguous())
        conv._winograd_cache = cached  # a plain attribute: not a parameter, not in the state_dict
    return cached[2]


def conv3x3(x: Tensor, conv: nn.Conv2d, relu: bool = False) -> Tensor:
    """conv(x) (and ReLU) for [N,C,H,W] x; returns a channels_last [N,Cout,H,W] tensor.

    The image is processed in chunks of whole tile rows so the work buffers stay small (bounded by
    CHUNK_ELEMENTS, whatever the image or batch size) and hot in cache.
    """
    n, c, h, w = x.shape
    u = transformed_weight(conv)
    co = u.shape[-1]
    th, tw = -(-h // M), -(-w // M)  # tile rows, tile columns
    rows = max(1, min(th, CHUNK_ELEMENTS // (tw * max(c, co))))  # tile rows per chunk
    xh = x.permute(0, 2, 3, 1)  # NHWC view (no copy when x is channels_last)
    out = torch.empty(n, h, w, co, dtype=x.dtype)
    # Work buffers, reused by every chunk: padded input rows, the 36 input planes (gathered, then
    # transformed), the 36 product planes and the 16 output planes.
    pad = x.new_zeros(rows * M + 2, tw * M + 2, c)
    d = x.new_empty(A * A, rows * tw * c)
    v = torch.empty_like(d)
    prod = x.new_empty(A * A, rows * tw, co)
    y = x.new_empty(M * M, rows * tw * co)
    # every output pixel gets the bias: added by the output transform's GEMM (bias + A^T m A)
    bias = conv.bias.detach().repeat(rows * tw) if conv.bias is not None else None
    s_h, s_w, s_c = pad.stride()
    for i in range(n):
        for r0 in range(0, th, rows):
            r = min(rows, th - r0)
            # input rows r0*M-1 .. (r0+r)*M+1 of image i go to pad rows 0 .. r*M+2 (zeros outside the image)
            y0, y1 = r0 * M - 1, (r0 + r) * M + 1
            lo, hi = max(y0, 0), min(y1, h)
            if lo > y0 or hi < y1:
                pad[: r * M + 2].zero_()
            pad[lo - y0: hi - y0, 1: w + 1].copy_(xh[i, lo:hi])
            k = r * tw  # tiles in this chunk
            dk = d[:, : k * c]
            dk.view(A, A, r, tw, c).copy_(pad.as_strided((A, A, r, tw, c), (s_h, s_w, M * s_h, M * s_w, s_c)))
            vk = torch.mm(_KB, dk, out=v[:, : k * c])  # B^T d B for every tile and channel
            pk = torch.bmm(vk.view(A * A, k, c), u, out=prod[:, :k])  # the 36 channel-mixing GEMMs
            yk = y[:, : k * co]
            if bias is not None:
                torch.addmm(bias[: k * co], _KA, pk.view(A * A, -1), out=yk)  # A^T m A + bias
            else:
                torch.mm(_KA, pk.view(A * A, -1), out=yk)
            _store(yk.view(M, M, r, tw, co).permute(2, 0, 3, 1, 4), out[i, r0 * M: (r0 + r) * M], relu)
    return out.permute(0, 3, 1, 2)


def _store(tiles: Tensor, dst: Tensor, relu: bool) -> None:
    """Write tiles [r,M,tw,M,C] into dst [h',w,C] (h' <= r*M, w <= tw*M), cropping the last tile row and
    column, with the ReLU applied on the way (one pass over the output instead of two)."""
    h, w, c = dst.shape
    fh, fw = h // M, w // M  # full tile rows / columns
    rh, rw = h - fh * M, w - fw * M

    def put(src: Tensor, part: Tensor) -> None:
        torch.clamp(src, min=0, out=part) if relu else part.copy_(src)

    put(tiles[:fh, :, :fw], dst[: fh * M, : fw * M].view(fh, M, fw, M, c))
    if rw:
        put(tiles[:fh, :, fw, :rw], dst[: fh * M, fw * M:].view(fh, M, rw, c))
    if rh:
        put(tiles[fh, :rh, :fw], dst[fh * M:, : fw * M].view(rh, fw, M, c))
        if rw:
            put(tiles[fh, :rh, fw, :rw], dst[fh * M:, fw * M:])
