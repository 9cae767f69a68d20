"""The Triton conv + SiLU and gated-RMSNorm kernels (kernels/conv_norm.py) against PyTorch.

References: ``F.silu(F.conv1d(x^T, w, b, padding=K//2, groups=C))^T`` and
``GatedRMSNorm(norm_before_gate=True)``, through autograd. Tolerances (relative Frobenius
error): float32 inputs against float64 on the same values, 1e-5 for the outputs and every
gradient; bfloat16 activations against float64 on the same rounded values, 1e-2 (the kernels
compute in float32 and round their outputs to bfloat16, about 4e-3 relative each). On CPU the
kernels run in Triton's interpreter in a subprocess, on tiny shapes with ragged blocks.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import run_interpreted

from hthlight.mixers.norms import GatedRMSNorm

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def conv_silu_reference(x_BLC, weight_C1K, bias_C):
    k = weight_C1K.shape[-1]
    pre = F.conv1d(x_BLC.transpose(1, 2), weight_C1K, bias_C, padding=k // 2, groups=x_BLC.shape[-1])
    return F.silu(pre.transpose(1, 2))


def gated_norm_reference(y_BLD, z_BLD, weight_D, eps):
    norm = GatedRMSNorm(y_BLD.shape[-1], eps=eps, norm_before_gate=True).to(weight_D.device)
    return torch.func.functional_call(norm, {"weight": weight_D}, (y_BLD, z_BLD))


def conv_case(batch, seqlen, channels, k, has_bias, dtype, param_dtype, device, seed):
    """x is a channel slice of a wider tensor (as the input projection's output is), all leaves."""
    g = torch.Generator(device=device).manual_seed(seed)
    wide = torch.randn(batch, seqlen, channels + 9, device=device, generator=g).to(dtype).requires_grad_(True)
    weight = (torch.randn(channels, 1, k, device=device, generator=g) * 0.4).to(param_dtype).requires_grad_(True)
    bias = (torch.randn(channels, device=device, generator=g) * 0.5).to(param_dtype).requires_grad_(True)
    dy = torch.randn(batch, seqlen, channels, device=device, generator=g).to(dtype)
    return wide, weight, bias if has_bias else None, dy


def conv_errors(wide, weight, bias, dy, offset=4):
    """Forward and gradient errors of conv1d_silu against float64 autograd through the reference."""
    from hthlight.kernels.conv_norm import conv1d_silu

    leaves = [t for t in (wide, weight, bias) if t is not None]
    c = weight.shape[0]
    out = conv1d_silu(wide[..., offset : offset + c], weight, bias)
    grads = torch.autograd.grad(out, leaves, dy)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    rw, rweight = ref_leaves[0], ref_leaves[1]
    rbias = ref_leaves[2] if bias is not None else None
    ref = conv_silu_reference(rw[..., offset : offset + c], rweight, rbias)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy.double())
    for g, leaf in zip(grads, leaves):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape
    names = ["out", "x", "weight", "bias"][: 1 + len(leaves)]
    return dict(zip(names, [rel_err(out, ref)] + [rel_err(g, r) for g, r in zip(grads, ref_grads)]))


def norm_case(batch, seqlen, dim, dtype, param_dtype, device, seed):
    """y is a row-strided slice, z a slice of a wider tensor (both leaves through their bases)."""
    g = torch.Generator(device=device).manual_seed(seed)
    y_wide = torch.randn(batch, seqlen, dim + 3, device=device, generator=g).to(dtype).requires_grad_(True)
    z_wide = (torch.randn(batch, seqlen, 2 * dim + 5, device=device, generator=g) * 2).to(dtype).requires_grad_(True)
    weight = (1 + 0.3 * torch.randn(dim, device=device, generator=g)).to(param_dtype).requires_grad_(True)
    dout = torch.randn(batch, seqlen, dim, device=device, generator=g).to(dtype)
    return y_wide, z_wide, weight, dout


def norm_errors(y_wide, z_wide, weight, dout, eps=1e-5, split=False):
    """Errors of the forward and the y, z, weight gradients against float64; ``split``: the gradients from the
    ``dy`` pass (row chunks) and the ``dz`` + ``dweight`` pass instead of the autograd Function's one kernel."""
    from hthlight.kernels.conv_norm import gated_rmsnorm, gated_rmsnorm_bwd

    d = weight.shape[0]
    leaves = [y_wide, z_wide, weight]
    y, z = y_wide[..., :d], z_wide[..., d + 5 :]
    out = gated_rmsnorm(y, z, weight, eps)
    if split:
        args = (dout, y.detach(), z.detach(), weight.detach(), eps)
        dy, (_, dz, dweight) = gated_rmsnorm_bwd(*args, grads="dy")[0], gated_rmsnorm_bwd(*args, grads="dz")
        grads = [torch.zeros_like(y_wide), torch.zeros_like(z_wide), dweight]
        grads[0][..., :d], grads[1][..., d + 5 :] = dy, dz
    else:
        grads = torch.autograd.grad(out, leaves, dout)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ref = gated_norm_reference(ref_leaves[0][..., :d], ref_leaves[1][..., d + 5 :], ref_leaves[2], eps)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout.double())
    for g, leaf in zip(grads, leaves):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape
    return dict(
        zip(["out", "y", "z", "weight"], [rel_err(out, ref)] + [rel_err(g, r) for g, r in zip(grads, ref_grads)])
    )


INTERPRETER_CHECK = textwrap.dedent(
    """
    import torch
    from hthlight.kernels import conv_norm
    from tests.test_conv_norm_triton import (
        conv_case, conv_errors, conv_silu_reference, gated_norm_reference, norm_case, norm_errors, rel_err,
    )

    worst = 0.0
    # The autograd Functions with their default blocks (one ragged channel block of 128).
    for k in (3, 7):
        for has_bias in (True, False):
            case = conv_case(2, 37, 20, k, has_bias, torch.float32, torch.float32, "cpu", seed=k + has_bias)
            errs = conv_errors(*case)
            print("conv", k, has_bias, errs)
            worst = max(worst, *errs.values())
    # Both kernels of each direction with small blocks: several programs along L and C, so every
    # halo crosses a block boundary and the partial sums are reduced over several blocks. Widths up
    # to 7 run the one-pass (rolling) kernels by default, wider ones (9) the tiled kernels.
    for rolling, k in ((True, 3), (True, 7), (False, 3), (False, 7), (None, 9)):
        for bl in (16, 8):
            wide, weight, bias, dy = conv_case(2, 37, 20, k, True, torch.float32, torch.float32, "cpu", seed=10 + k)
            x = wide.detach()[..., 4:24]
            blocks = dict(rolling=rolling, block_l=bl, block_c=16 if bl == 16 else 4)  # ragged / even channel blocks
            out = conv_norm.conv1d_silu_fwd(x, weight.detach(), bias.detach(), **blocks)
            got = conv_norm.conv1d_silu_bwd(dy, x, weight.detach(), bias.detach(), **blocks)
            ref_in = [t.detach().double().requires_grad_(True) for t in (x, weight, bias)]
            ref_out = conv_silu_reference(*ref_in)
            ref = torch.autograd.grad(ref_out, ref_in, dy.double())
            errs = [rel_err(out, ref_out)] + [rel_err(a, b) for a, b in zip(got, ref)]
            print("blocks", rolling, k, bl, errs)
            worst = max(worst, *errs)
    errs = norm_errors(*norm_case(2, 37, 48, torch.float32, torch.float32, "cpu", seed=5))
    print("norm", errs)
    worst = max(worst, *errs.values())
    errs = norm_errors(*norm_case(1, 3, 2304, torch.float32, torch.float32, "cpu", seed=9), split=True)
    print("norm_split_chunks", errs)  # XL's row of 2304: the dy pass in 3 chunks of 1024, the last one part masked
    worst = max(worst, *errs.values())
    y_wide, z_wide, weight, dout = norm_case(2, 37, 48, torch.float32, torch.float32, "cpu", seed=6)
    y, z = y_wide.detach()[..., :48], z_wide.detach()[..., 53:]
    got = conv_norm.gated_rmsnorm_bwd(dout, y, z, weight.detach(), 1e-5, rows_per_program=5)
    ref_in = [t.detach().double().requires_grad_(True) for t in (y, z, weight)]
    ref = torch.autograd.grad(gated_norm_reference(*ref_in, 1e-5), ref_in, dout.double())
    errs = [rel_err(a, b) for a, b in zip(got, ref)]
    print("norm_bwd", errs)
    worst = max(worst, *errs)
    # In two passes: dy alone (row chunks), then dz and dweight, dz into a slice of a wider buffer.
    dy1, none_dz, none_dw = conv_norm.gated_rmsnorm_bwd(dout, y, z, weight.detach(), 1e-5, grads="dy")
    wide = torch.full((2, 37, 60), 3.0)
    none_dy, dz2, dw2 = conv_norm.gated_rmsnorm_bwd(
        dout, y, z, weight.detach(), 1e-5, rows_per_program=5, grads="dz", dz_out=wide[..., 7:55]
    )
    same = rel_err(dy1, got[0]) < 1e-6 and torch.equal(dw2, got[2]) and torch.equal(wide[..., 7:55], got[1])
    untouched = bool((wide[..., :7] == 3).all() and (wide[..., 55:] == 3).all())
    print("norm_bwd_split", same, untouched, none_dz is None and none_dy is None and none_dw is None)
    # out.sum().backward(): the Functions get an expanded (all strides 0) output gradient.
    wide, weight, bias, _ = conv_case(1, 37, 20, 7, True, torch.float32, torch.float32, "cpu", seed=7)
    ref_in = [t.detach().double().requires_grad_(True) for t in (wide, weight, bias)]
    conv_norm.conv1d_silu(wide[..., 4:24], weight, bias).sum().backward()
    conv_silu_reference(ref_in[0][..., 4:24], ref_in[1], ref_in[2]).sum().backward()
    errs = [rel_err(a.grad, b.grad) for a, b in zip((wide, weight, bias), ref_in)]
    print("conv_sum", errs)
    worst = max(worst, *errs)
    y_wide, z_wide, weight, _ = norm_case(1, 37, 48, torch.float32, torch.float32, "cpu", seed=8)
    ref_in = [t.detach().double().requires_grad_(True) for t in (y_wide, z_wide, weight)]
    conv_norm.gated_rmsnorm(y_wide[..., :48], z_wide[..., 53:], weight, 1e-5).sum().backward()
    gated_norm_reference(ref_in[0][..., :48], ref_in[1][..., 53:], ref_in[2], 1e-5).sum().backward()
    errs = [rel_err(a.grad, b.grad) for a, b in zip((y_wide, z_wide, weight), ref_in)]
    print("norm_sum", errs)
    worst = max(worst, *errs)
    print("WORST", worst)
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests below run the compiled kernels")
def test_kernels_match_reference_in_interpreter():
    """Forward and every gradient in Triton's CPU interpreter: K 3, 7 and 9, one-pass and tiled kernels,
    with and without bias, odd L."""
    stdout = run_interpreted(INTERPRETER_CHECK)
    lines = stdout.strip().splitlines()
    assert "norm_bwd_split True True True" in lines, stdout
    assert len(lines) == 4 + 10 + 3 + 1 + 2 + 1 and lines[-1].startswith("WORST"), stdout
    assert float(lines[-1].split()[1]) <= 1e-5, stdout


def test_bad_inputs_raise_value_errors():
    """Even kernel widths and non-contiguous channels are refused, forward and backward, before any launch."""
    pytest.importorskip("triton")
    from hthlight.kernels.conv_norm import conv1d_silu, conv1d_silu_bwd, gated_rmsnorm, gated_rmsnorm_bwd

    x = torch.randn(2, 9, 6)
    dy = torch.randn(2, 9, 6)
    with pytest.raises(ValueError, match="kernel width must be odd"):
        conv1d_silu_bwd(dy, x, torch.randn(6, 1, 4), None)
    with pytest.raises(ValueError, match="kernel width odd"):
        conv1d_silu(x, torch.randn(6, 1, 4), None)
    x_t = torch.randn(2, 6, 9).transpose(1, 2)  # (2, 9, 6) with stride(-1) == 9
    with pytest.raises(ValueError, match=r"x and dy must be contiguous in their channels"):
        conv1d_silu_bwd(dy, x_t, torch.randn(6, 1, 3), None)
    with pytest.raises(ValueError, match=r"x and dy must be contiguous in their channels"):
        conv1d_silu_bwd(torch.randn(2, 6, 9).transpose(1, 2), x, torch.randn(6, 1, 3), None)
    with pytest.raises(ValueError, match="x must be contiguous in its channels"):
        conv1d_silu(x_t, torch.randn(6, 1, 3), None)
    y, w = torch.randn(2, 9, 6), torch.ones(6)
    with pytest.raises(ValueError, match="grads must be 'all', 'dy' or 'dz', got 'dw'"):
        gated_rmsnorm_bwd(dy, y, dy, w, 1e-5, grads="dw")
    with pytest.raises(ValueError, match=r"dz_out has shape \(2, 9, 5\), y has \(2, 9, 6\)"):
        gated_rmsnorm_bwd(dy, y, dy, w, 1e-5, grads="dz", dz_out=torch.empty(2, 9, 5))
    with pytest.raises(ValueError, match=r"z must be contiguous in its last dimension"):
        gated_rmsnorm_bwd(dy, y, x_t, w, 1e-5)
    with pytest.raises(ValueError, match=r"dout must be contiguous in its last dimension"):
        gated_rmsnorm_bwd(x_t, y, dy, w, 1e-5)
    with pytest.raises(ValueError, match="y and z must be contiguous in their last dimension"):
        gated_rmsnorm(y, x_t, w, 1e-5)


GPU_DTYPES = [
    (torch.float32, torch.float32, 1e-5),
    (torch.bfloat16, torch.float32, 1e-2),  # bf16 activations, float32 parameters (autocast training)
    (torch.bfloat16, torch.bfloat16, 1e-2),
]


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("dtype,param_dtype,tol", GPU_DTYPES)
def test_conv_silu_matches_reference_gpu(dtype, param_dtype, tol, has_bias):
    """Hydra's shape (HTH-5B conv width 7168, K = 7): forward and the x, weight, bias gradients."""
    errs = conv_errors(*conv_case(1, 4096, 7168, 7, has_bias, dtype, param_dtype, "cuda", seed=1 + has_bias))
    assert max(errs.values()) <= tol, errs


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("rolling,k", [(True, 3), (True, 7), (False, 3), (False, 7), (None, 9)])
def test_conv_silu_ragged_gpu(rolling, k):
    """Float32, ragged L and C, batch 2, many blocks along L and C: forward and backward, one-pass
    (rolling) and tiled kernels."""
    from hthlight.kernels.conv_norm import conv1d_silu_bwd, conv1d_silu_fwd

    wide, weight, bias, dy = conv_case(2, 3001, 1000, k, True, torch.float32, torch.float32, "cuda", seed=k)
    x = wide.detach()[..., 4:1004]
    out = conv1d_silu_fwd(x, weight.detach(), bias.detach(), rolling=rolling)
    got = conv1d_silu_bwd(dy, x, weight.detach(), bias.detach(), rolling=rolling)
    ref_in = [t.detach().double().requires_grad_(True) for t in (x, weight, bias)]
    ref_out = conv_silu_reference(*ref_in)
    ref = torch.autograd.grad(ref_out, ref_in, dy.double())
    errs = [rel_err(out, ref_out)] + [rel_err(a, b) for a, b in zip(got, ref)]
    assert max(errs) <= 1e-5, errs


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype,param_dtype,tol", GPU_DTYPES)
@pytest.mark.parametrize("split", [False, True])
def test_gated_rmsnorm_matches_reference_gpu(dtype, param_dtype, tol, split):
    """HTH-5B's shape (d_inner 6144): forward and the y, z, weight gradients, in one kernel or split in the
    ``dy`` pass (3 row chunks of 2048) and the ``dz`` + ``dweight`` pass."""
    errs = norm_errors(*norm_case(1, 4096, 6144, dtype, param_dtype, "cuda", seed=2), split=split)
    assert max(errs.values()) <= tol, errs


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_row_aligned_slices_gpu(dtype, tol):
    """The XL layout: conv input, conv dx, norm z and norm dz are slices of rows 4936 long (a multiple
    of 8, not 16), which the kernels load and store in 16-byte vectors (``_row_align`` 8); short
    sequences run 16-row segments. Forward and every gradient against float64."""
    from hthlight.kernels.conv_norm import (
        _row_align,
        conv1d_silu_bwd,
        conv1d_silu_fwd,
        gated_rmsnorm_bwd,
        gated_rmsnorm_fwd,
    )

    g = torch.Generator(device="cuda").manual_seed(3)
    batch, seqlen, inner, channels, width = 2, 1000, 2304, 2560, 4936
    proj = torch.randn(batch, seqlen, width, device="cuda", generator=g).to(dtype)
    grad = torch.full_like(proj, 7.0)
    x, z = proj[..., inner : inner + channels], proj[..., :inner]
    assert _row_align(*x.stride()[:2], *grad.stride()[:2]) == 8
    weight = torch.randn(channels, 1, 7, device="cuda", generator=g) * 0.4
    bias = torch.randn(channels, device="cuda", generator=g) * 0.5
    dy = torch.randn(batch, seqlen, channels, device="cuda", generator=g).to(dtype)
    out = conv1d_silu_fwd(x, weight, bias)
    dx, dweight, dbias = conv1d_silu_bwd(dy, x, weight, bias, dx_out=grad[..., inner : inner + channels])
    ref_in = [t.double().requires_grad_(True) for t in (x, weight, bias)]
    ref_out = conv_silu_reference(*ref_in)
    ref = torch.autograd.grad(ref_out, ref_in, dy.double())
    errs = [rel_err(out, ref_out)] + [rel_err(a, b) for a, b in zip((dx, dweight, dbias), ref)]

    y = torch.randn(batch, seqlen, inner, device="cuda", generator=g).to(dtype)
    norm_weight = 1 + 0.3 * torch.randn(inner, device="cuda", generator=g)
    dout = torch.randn(batch, seqlen, inner, device="cuda", generator=g).to(dtype)
    norm_out = gated_rmsnorm_fwd(y, z, norm_weight, 1e-5)
    dy_norm = gated_rmsnorm_bwd(dout, y, z, norm_weight, 1e-5, grads="dy")[0]
    dnorm_weight = gated_rmsnorm_bwd(dout, y, z, norm_weight, 1e-5, grads="dz", dz_out=grad[..., :inner])[2]
    ref_in = [t.double().requires_grad_(True) for t in (y, z, norm_weight)]
    ref_norm = gated_norm_reference(*ref_in, 1e-5)
    ref = torch.autograd.grad(ref_norm, ref_in, dout.double())
    errs += [rel_err(norm_out, ref_norm)] + [
        rel_err(a, b) for a, b in zip((dy_norm, grad[..., :inner], dnorm_weight), ref)
    ]
    assert max(errs) <= tol, errs
    assert bool((grad[..., inner + channels :] == 7).all()), "writes outside the gradient slices"
