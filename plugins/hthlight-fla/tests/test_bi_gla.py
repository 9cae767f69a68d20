"""bi_gla: reference recurrence, CPU behaviour, and (on CUDA) the fla kernel against the reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hthlight_fla import BiGLAMixer, gla_reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def explicit_gla(q, k, v, g, scale):
    """o_t = scale * sum_{s<=t} (q_t * prod_{s<r<=t} exp(g_r)) . k_s  v_s, written as a double loop."""
    b, length, h, _ = q.shape
    out = torch.zeros(b, length, h, v.shape[-1], dtype=q.dtype)
    for t in range(length):
        for s in range(t + 1):
            decay = torch.exp(g[:, s + 1 : t + 1].sum(1)) if t > s else torch.ones_like(g[:, 0])
            out[:, t] += ((q[:, t] * decay * k[:, s]).sum(-1) * scale)[..., None] * v[:, s]
    return out


def test_reference_matches_the_explicit_sum():
    torch.manual_seed(0)
    q, k, g = (torch.randn(2, 6, 3, 4, dtype=torch.float64) for _ in range(3))
    v = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    g = F.logsigmoid(g)
    torch.testing.assert_close(gla_reference(q, k, v, g, 0.5), explicit_gla(q, k, v, g, 0.5), rtol=1e-10, atol=1e-12)


def test_bidirectional_output_depends_on_both_sides():
    mixer = BiGLAMixer(16, num_heads=2, backend="torch").double()
    x = torch.randn(1, 6, 16, dtype=torch.float64, requires_grad=True)
    mixer(x, (1, 2, 3))[0, 2].sum().backward()
    assert x.grad[0, 0].abs().sum() > 0 and x.grad[0, 5].abs().sum() > 0


def test_conforms_to_the_mixer_contract_with_the_reference_backend():
    from hthlight.testing import check_mixer

    check_mixer(BiGLAMixer, dim=16, num_heads=2, backend="torch")


def test_default_backend_on_cpu_names_the_requirement():
    mixer = BiGLAMixer(16, num_heads=2)
    with pytest.raises(RuntimeError, match=r"CUDA only .*hthlight-fla\[gpu\]"):
        mixer(torch.randn(1, 4, 16), (1, 2, 2))
    with pytest.raises(ValueError, match="allowed: fla, torch"):
        BiGLAMixer(16, backend="triton")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_kernel_matches_reference_forward_and_backward(dtype):
    pytest.importorskip("fla")
    torch.manual_seed(0)
    fast = BiGLAMixer(64, num_heads=2).cuda()
    ref = BiGLAMixer(64, num_heads=2, backend="torch").cuda()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 8 * 9, 64, device="cuda")
    grads = []
    for module, inp in ((fast, x.to(dtype)), (ref, x)):
        inp = inp.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out = module(inp, (1, 8, 9))
        out.float().square().mean().backward()
        grads.append((out.float().detach(), inp.grad.float()))
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    for a, b in zip(grads[0], grads[1]):
        assert ((a - b).norm() / b.norm()).item() < tol
