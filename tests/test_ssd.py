"""The chunked SSD scan against a plain sequential recurrence, and backend selection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hthlight.errors import ConfigError
from hthlight.ssd import scan_backends, segsum, select_backend, ssd_scan


def naive_scan(x_BLHP, dt_BLH, A_H, B_BLGN, C_BLGN):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t;  y_t = C_t . h_t, one token at a time."""
    batch, seqlen, nheads, headdim = x_BLHP.shape
    ngroups, d_state = B_BLGN.shape[-2:]
    group_of_head = torch.arange(nheads) // (nheads // ngroups)
    B_BLHN, C_BLHN = B_BLGN[:, :, group_of_head], C_BLGN[:, :, group_of_head]
    h_BHPN = x_BLHP.new_zeros(batch, nheads, headdim, d_state)
    ys = []
    for t in range(seqlen):
        decay_BH = torch.exp(dt_BLH[:, t] * A_H)
        inp_BHPN = (dt_BLH[:, t, :, None] * x_BLHP[:, t])[..., None] * B_BLHN[:, t, :, None, :]
        h_BHPN = decay_BH[..., None, None] * h_BHPN + inp_BHPN
        ys.append((h_BHPN * C_BLHN[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, dim=1)


def random_inputs(seqlen, nheads=4, headdim=3, ngroups=1, d_state=5, batch=2, dtype=torch.float64):
    x = torch.randn(batch, seqlen, nheads, headdim, dtype=dtype)
    dt = F.softplus(torch.randn(batch, seqlen, nheads, dtype=dtype))
    A = -torch.exp(torch.randn(nheads, dtype=dtype))
    B = torch.randn(batch, seqlen, ngroups, d_state, dtype=dtype)
    C = torch.randn(batch, seqlen, ngroups, d_state, dtype=dtype)
    return x, dt, A, B, C


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64])
@pytest.mark.parametrize("seqlen", [1, 5, 8, 13, 24])
def test_matches_sequential_recurrence(seqlen, chunk_size, ngroups):
    torch.manual_seed(0)
    inputs = random_inputs(seqlen, ngroups=ngroups)
    y = ssd_scan(*inputs, chunk_size=chunk_size)
    assert y.shape == inputs[0].shape and y.dtype == torch.float64
    assert rel_err(y, naive_scan(*inputs)) < 1e-10


def test_strong_decay_long_sequence_is_finite_and_exact():
    # Large dt * |A| over many tokens: prefix sums reach ~ -1e5; exp of differences would overflow.
    torch.manual_seed(1)
    x, _, _, B, C = random_inputs(300, batch=1)
    dt = torch.full((1, 300, 4), 20.0, dtype=torch.float64)
    A = -torch.tensor([0.1, 1.0, 10.0, 30.0], dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        args = [t.detach().to(dtype).requires_grad_() for t in (x, dt, A, B, C)]
        y = ssd_scan(*args, chunk_size=64)
        y.square().sum().backward()
        assert torch.isfinite(y).all()
        assert all(torch.isfinite(t.grad).all() for t in args)
        assert rel_err(y.double(), naive_scan(x, dt, A, B, C)) < (1e-10 if dtype == torch.float64 else 1e-5)


def test_causal_prefix_independent_of_suffix():
    torch.manual_seed(2)
    inputs = random_inputs(20)
    y_full = ssd_scan(*inputs, chunk_size=8)
    y_prefix = ssd_scan(*(t[:, :11] if t.dim() > 1 else t for t in inputs), chunk_size=8)
    torch.testing.assert_close(y_prefix, y_full[:, :11], rtol=1e-12, atol=1e-12)


def test_float32_and_bfloat16_inputs():
    torch.manual_seed(3)
    inputs = random_inputs(19, ngroups=2)
    reference = naive_scan(*inputs)
    y32 = ssd_scan(*(t.float() for t in inputs), chunk_size=8)
    assert y32.dtype == torch.float32
    assert rel_err(y32.double(), reference) < 1e-5
    y16 = ssd_scan(*(t.bfloat16() for t in inputs), chunk_size=8)
    assert y16.dtype == torch.bfloat16
    assert rel_err(y16.double(), reference) < 5e-2  # inputs rounded to bf16, computed in float32


def test_gradcheck():
    torch.manual_seed(4)
    inputs = [t.requires_grad_() for t in random_inputs(5, nheads=2, headdim=2, ngroups=2, d_state=2, batch=1)]
    assert torch.autograd.gradcheck(lambda *a: ssd_scan(*a, chunk_size=2), inputs)


def test_segsum():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    out = segsum(a)
    for i in range(4):
        for j in range(4):
            expected = a[j + 1 : i + 1].sum() if i >= j else float("-inf")
            assert out[i, j] == expected


def test_bad_shapes():
    x, dt, A, B, C = random_inputs(6, nheads=3, ngroups=1)
    with pytest.raises(ValueError, match="multiple of the number of groups"):
        ssd_scan(x, dt, A, B.expand(-1, -1, 2, -1), C.expand(-1, -1, 2, -1), chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_scan(x, dt, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="dt_BLH"):
        ssd_scan(x, dt[:, :5], A, B, C, chunk_size=4)


def test_backends():
    assert scan_backends() == ["torch"]
    assert select_backend() is ssd_scan
    assert select_backend("torch", torch.device("cpu")) is ssd_scan
    with pytest.raises(ConfigError, match=r"allowed: auto, torch"):
        select_backend("triton")
