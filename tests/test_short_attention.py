"""Cross-attention's Triton kernels (hthlight.kernels.short_attention) against SDPA, and its dispatch.

Tolerances (relative Frobenius error against float64 SDPA on the same rounded inputs): float32
inputs 1e-5 (IEEE float32 products) for the output and the gradients of q, k and v; bfloat16
inputs 1e-2. On CPU the kernels run in Triton's interpreter in a subprocess, on tiny shapes.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import run_interpreted

from hthlight.conditioning.cross_attention import CrossAttention, check_cross_attention_backend
from hthlight.errors import ConfigError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def compare_with_sdpa(B, L, S, H, D, masked, dtype, device, seed):
    """Relative errors of the output and of dq, d(kv) against float64 SDPA; (o, dq, dkv).

    k and v are the two halves of one projection (strided views, as the layer makes them); with
    ``masked`` some keys are masked and batch element 0 has every key masked (zeros out).
    """
    from hthlight.kernels.short_attention import short_attention

    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, L, H, D, device=device, generator=g).to(dtype).requires_grad_(True)
    kv = torch.randn(B, S, 2, H, D, device=device, generator=g).to(dtype).requires_grad_(True)
    mask = None
    if masked:
        mask = torch.rand(B, S, device=device, generator=g) > 0.4
        mask[0] = False
        mask[-1, 0] = True
    out = short_attention(q, *kv.unbind(2), mask)
    dout = torch.randn(out.shape, device=device, generator=g).to(dtype)
    grads = torch.autograd.grad(out, [q, kv], dout)
    q64, kv64 = (t.detach().double().requires_grad_(True) for t in (q, kv))
    k64, v64 = kv64.unbind(2)
    attn_mask = None if mask is None else mask[:, None, None, :]
    ref = F.scaled_dot_product_attention(
        q64.transpose(1, 2), k64.transpose(1, 2), v64.transpose(1, 2), attn_mask=attn_mask
    ).transpose(1, 2)
    ref_grads = torch.autograd.grad(ref, [q64, kv64], dout.double())
    assert out.dtype == dtype and out.shape == (B, L, H, D)
    return rel_err(out, ref), *(rel_err(a, b) for a, b in zip(grads, ref_grads))


# (B, L, S, H, D, masked, key block, programs per SM): one and several key blocks, head widths
# below a power of two, several query splits, key masks with a fully masked batch element.
INTERPRETER_CASES = [
    (2, 37, 5, 2, 24, True, 128, 1),
    (1, 70, 40, 3, 16, False, 16, 64),
    (2, 45, 33, 2, 32, True, 16, 64),
]

INTERPRETER_CHECK = textwrap.dedent(
    """
    import torch
    from hthlight.kernels import short_attention
    from tests.test_short_attention import INTERPRETER_CASES, compare_with_sdpa

    short_attention.CONFIG_FP32.update(fwd_bm=16, dq_bm=16, dkdv_bm=16)
    for B, L, S, H, D, masked, bs, per_sm in INTERPRETER_CASES:
        short_attention.CONFIG.update(bs=bs, fwd_programs_per_sm=per_sm, dkdv_programs_per_sm=per_sm)
        print(max(compare_with_sdpa(B, L, S, H, D, masked, torch.float32, "cpu", seed=L)))
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests below run the compiled kernels")
def test_short_attention_matches_sdpa_in_interpreter():
    """Forward and all gradients in Triton's CPU interpreter, float32, against float64 SDPA."""
    errors = [float(line) for line in run_interpreted(INTERPRETER_CHECK).split()]
    assert len(errors) == len(INTERPRETER_CASES) and max(errors) < 1e-5, errors


@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize(
    "B,L,S,H,D,masked",
    [(1, 16384, 120, 4, 96, False), (2, 1000, 77, 3, 64, True), (2, 333, 300, 2, 128, True), (1, 65, 7, 1, 40, False)],
)
def test_short_attention_matches_sdpa_on_gpu(B, L, S, H, D, masked, dtype, tol):
    errors = compare_with_sdpa(B, L, S, H, D, masked, dtype, "cuda", seed=S)
    assert max(errors) < tol, errors


@cuda
@pytest.mark.parametrize("qk_norm", [False, True])
def test_cross_attention_backends_agree_on_gpu(qk_norm):
    torch.manual_seed(0)
    attn = CrossAttention(dim=192, context_dim=48, num_heads=2, qk_norm=qk_norm, backend="sdpa").cuda()
    fast = CrossAttention(dim=192, context_dim=48, num_heads=2, qk_norm=qk_norm, backend="triton").cuda()
    fast.load_state_dict(attn.state_dict())
    x = torch.randn(2, 300, 192, device="cuda", requires_grad=True)
    context = torch.randn(2, 20, 48, device="cuda")
    mask = torch.arange(20, device="cuda")[None] < torch.tensor([[7], [20]], device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outs = [m(x, context, mask) for m in (attn, fast)]
    grads = [torch.autograd.grad(o.float().square().sum(), [x, m.kv.weight]) for o, m in zip(outs, (attn, fast))]
    assert rel_err(outs[1], outs[0]) < 1e-2
    assert all(rel_err(a, b) < 1e-2 for a, b in zip(grads[1], grads[0]))


def test_cross_attention_auto_runs_sdpa_on_cpu_and_triton_needs_cuda():
    attn = CrossAttention(dim=8, context_dim=6, num_heads=2)
    x, context = torch.randn(1, 5, 8), torch.randn(1, 3, 6)
    assert attn.resolved_backend(x, 3) == "sdpa"
    if torch.cuda.is_available():
        assert attn.resolved_backend(x.cuda(), 3) == "triton"
        assert attn.resolved_backend(x.cuda(), 513) == "sdpa"  # long contexts: flash-style kernels
    assert attn(x, context).shape == (1, 5, 8)
    pytest.importorskip("triton")
    fast = CrossAttention(dim=8, context_dim=6, num_heads=2, backend="triton")
    with pytest.raises(ValueError, match="'triton' needs CUDA tensors, got cpu"):
        fast(x, context)


def test_cross_attention_backend_errors_name_what_is_allowed():
    with pytest.raises(ConfigError, match="unknown cross-attention backend 'flash'; allowed: auto, sdpa, triton"):
        CrossAttention(dim=8, context_dim=6, num_heads=2, backend="flash")
    pytest.importorskip("triton")
    with pytest.raises(ConfigError, match="head widths up to 128, got 256"):
        check_cross_attention_backend("triton", 256)


def test_short_attention_rejects_bad_shapes_and_masks():
    pytest.importorskip("triton")
    from hthlight.kernels.short_attention import short_attention

    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 3, 2, 8)
    with pytest.raises(ValueError, match="differ in batch, heads or head width"):
        short_attention(q, torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 8))
    with pytest.raises(ValueError, match=r"one dtype among float16, bfloat16 and float32, got torch\.float32, "):
        short_attention(q, k.bfloat16(), k)
    with pytest.raises(ValueError, match="key mask must be bool"):
        short_attention(q, k, k, torch.ones(1, 3))
    with pytest.raises(ValueError, match="head widths up to 128, got 160"):
        short_attention(torch.randn(1, 4, 1, 160), torch.randn(1, 3, 1, 160), torch.randn(1, 3, 1, 160))


@cuda
def test_short_attention_under_torch_compile_matches_eager():
    """The custom operators trace into a compiled graph (no graph break) and give the eager result."""
    from hthlight.kernels.short_attention import short_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 500, 4, 64, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    kv = torch.randn(2, 30, 2, 4, 64, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    mask = torch.rand(2, 30, device="cuda", generator=g) > 0.3

    def loss(q, kv):
        return short_attention(q * 2, *kv.unbind(2), mask).float().square().sum()

    compiled = torch.compile(loss, fullgraph=True)
    eager_grads = torch.autograd.grad(loss(q, kv), [q, kv])
    compiled_grads = torch.autograd.grad(compiled(q, kv), [q, kv])
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
