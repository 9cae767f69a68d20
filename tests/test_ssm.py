"""SSMMixer and BiSSMMixer against explicit per-step recurrences, plus their contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hthlight.errors import ConfigError
from hthlight.mixers.ssm import BiSSMMixer, SSMMixer
from hthlight.registry import build

SMALL = dict(d_state=3, d_conv=4, expand=2, headdim=4, chunk_size=4)  # dim 8: d_inner 16, 4 heads
MIXERS = {"ssm": SSMMixer, "bi_ssm": BiSSMMixer}


def randomize_(mixer):
    """Non-trivial values for every parameter (the default init has D = 1 and equal directions)."""
    with torch.no_grad():
        for name, param in mixer.named_parameters():
            if name in ("A_log", "A_b_log"):
                param.uniform_(-1.5, 0.5)
            elif name == "norm.weight":
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif name.endswith("weight"):
                fan_in = param[0].numel()
                param.copy_(torch.randn_like(param) / fan_in**0.5)
            else:  # biases, dt_bias, D
                param.copy_(0.5 * torch.randn_like(param))
    return mixer


def make_mixer(kind="ssm", dim=8, seed=0, **kwargs):
    torch.manual_seed(seed)
    return randomize_(MIXERS[kind](dim, **{**SMALL, **kwargs}).double())


def conv_explicit(xBC_BLC, weight_C1K, bias_C, reverse=False):
    """Depthwise convolution written out. Causal: out[t] = b + sum_k w[k] in[t - (K-1) + k].

    ``reverse``: the same convolution run over the reversed sequence, i.e. anti-causal in the
    original order: out[t] = b + sum_k w[k] in[t + (K-1) - k].
    """
    _, seqlen, _ = xBC_BLC.shape
    K = weight_C1K.shape[-1]
    out = bias_C.expand_as(xBC_BLC).clone()
    for t in range(seqlen):
        for k in range(K):
            s = t + (K - 1) - k if reverse else t - (K - 1) + k
            if 0 <= s < seqlen:
                out[:, t] += weight_C1K[:, 0, k] * xBC_BLC[:, s]
    return out


def recurrence(x_BLHP, dt_BLH, A_H, B_BLGN, C_BLGN, D_H, times):
    """h_t = exp(dt_t A) h_prev + dt_t x_t B_t^T ; y_t = h_t C_t + D x_t, visiting ``times`` in order."""
    batch, _, nheads, headdim = x_BLHP.shape
    ngroups, d_state = B_BLGN.shape[-2:]
    y = torch.zeros_like(x_BLHP)
    for b in range(batch):
        for head in range(nheads):
            grp = head // (nheads // ngroups)
            h = torch.zeros(headdim, d_state, dtype=x_BLHP.dtype)
            for t in times:
                dt = dt_BLH[b, t, head]
                h = torch.exp(dt * A_H[head]) * h + dt * torch.outer(x_BLHP[b, t, head], B_BLGN[b, t, grp])
                y[b, t, head] = h @ C_BLGN[b, t, grp] + D_H[head] * x_BLHP[b, t, head]
    return y


def gated_norm_out(m, y_BLE, z_BLE):
    gated = y_BLE * F.silu(z_BLE)  # Mamba-2 gates before normalising (norm_before_gate=False)
    y = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + m.norm.eps) * m.norm.weight
    return F.linear(y, m.out_proj.weight, m.out_proj.bias)


def reference_ssm(m: SSMMixer, u_BLD):
    batch, seqlen, _ = u_BLD.shape
    e, h, p, g, n = m.d_inner, m.nheads, m.headdim, m.ngroups, m.d_state
    proj = F.linear(u_BLD, m.in_proj.weight, m.in_proj.bias)
    z, xBC, dt = proj[..., :e], proj[..., e : 2 * e + 2 * g * n], proj[..., 2 * e + 2 * g * n :]
    assert dt.shape[-1] == h
    xBC = F.silu(conv_explicit(xBC, m.conv1d.weight, m.conv1d.bias))
    x = xBC[..., :e].reshape(batch, seqlen, h, p)
    B = xBC[..., e : e + g * n].reshape(batch, seqlen, g, n)
    C = xBC[..., e + g * n :].reshape(batch, seqlen, g, n)
    dt = F.softplus(dt + m.dt_bias)
    y = recurrence(x, dt, -torch.exp(m.A_log), B, C, m.D, range(seqlen))
    return gated_norm_out(m, y.reshape(batch, seqlen, e), z)


def reference_bi_ssm(m: BiSSMMixer, u_BLD):
    batch, seqlen, _ = u_BLD.shape
    e, h, p, g, n = m.d_inner, m.nheads, m.headdim, m.ngroups, m.d_state
    gn = g * n
    proj = F.linear(u_BLD, m.in_proj.weight, m.in_proj.bias)
    z, x_in = proj[..., :e], proj[..., e : 2 * e]
    B_f, C_f, B_b, C_b = (proj[..., 2 * e + i * gn : 2 * e + (i + 1) * gn] for i in range(4))
    dt_f, dt_b = proj[..., 2 * e + 4 * gn : 2 * e + 4 * gn + h], proj[..., 2 * e + 4 * gn + h :]
    assert dt_b.shape[-1] == h

    def direction(B_in, C_in, dt, conv, dt_bias, A_log, D, reverse):
        xBC = F.silu(conv_explicit(torch.cat([x_in, B_in, C_in], -1), conv.weight, conv.bias, reverse=reverse))
        x = xBC[..., :e].reshape(batch, seqlen, h, p)
        B = xBC[..., e : e + gn].reshape(batch, seqlen, g, n)
        C = xBC[..., e + gn :].reshape(batch, seqlen, g, n)
        times = range(seqlen - 1, -1, -1) if reverse else range(seqlen)
        return recurrence(x, F.softplus(dt + dt_bias), -torch.exp(A_log), B, C, D, times)

    y_f = direction(B_f, C_f, dt_f, m.conv1d, m.dt_bias, m.A_log, m.D, reverse=False)
    y_b = direction(B_b, C_b, dt_b, m.conv1d_b, m.dt_bias_b, m.A_b_log, m.D_b, reverse=True)
    return gated_norm_out(m, (y_f + y_b).reshape(batch, seqlen, e), z)


REFERENCES = {"ssm": reference_ssm, "bi_ssm": reference_bi_ssm}


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("kind", ["ssm", "bi_ssm"])
@pytest.mark.parametrize(
    ("seqlen", "ngroups", "bias", "d_conv"),
    [(7, 1, False, 4), (13, 2, False, 4), (8, 2, True, 3), (10, 1, True, 1), (1, 1, False, 4), (3, 2, False, 5)],
)
def test_matches_explicit_recurrence(kind, seqlen, ngroups, bias, d_conv):
    # chunk_size 4: lengths below, equal to a multiple of and not a multiple of the chunk size.
    m = make_mixer(kind, ngroups=ngroups, bias=bias, d_conv=d_conv, seed=seqlen)
    u = torch.randn(2, seqlen, 8, dtype=torch.float64)
    with torch.no_grad():
        out = m(u, grid=(1, 1, seqlen))
        assert rel_err(out, REFERENCES[kind](m, u)) < 1e-10


def test_causality():
    seqlen, t = 11, 5
    u = torch.randn(2, seqlen, 8, dtype=torch.float64)
    v = u.clone()
    v[:, t + 1 :] = torch.randn(2, seqlen - t - 1, 8, dtype=torch.float64)
    ssm, bi = make_mixer("ssm"), make_mixer("bi_ssm")
    with torch.no_grad():
        a, b = ssm(u, grid=(1, 1, seqlen)), ssm(v, grid=(1, 1, seqlen))
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-14)
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])
        a, b = bi(u, grid=(1, 1, seqlen)), bi(v, grid=(1, 1, seqlen))
        assert (a[:, : t + 1] - b[:, : t + 1]).abs().amax(-1).min() > 1e-6  # every earlier token changes


@pytest.mark.parametrize("kind", ["ssm", "bi_ssm"])
def test_vertical_scan_equals_horizontal_on_transposed_grid(kind):
    hh, ww = 3, 4
    m_v = make_mixer(kind, scan="v")
    m_h = make_mixer(kind, scan="h", seed=1)
    m_h.load_state_dict(m_v.state_dict())
    u_BHWD = torch.randn(2, hh, ww, 8, dtype=torch.float64)
    with torch.no_grad():
        out_v = m_v(u_BHWD.flatten(1, 2), grid=(1, hh, ww)).unflatten(1, (hh, ww))
        u_BWHD = u_BHWD.transpose(1, 2)
        out_h = m_h(u_BWHD.flatten(1, 2), grid=(1, ww, hh)).unflatten(1, (ww, hh)).transpose(1, 2)
        torch.testing.assert_close(out_v, out_h, rtol=1e-12, atol=1e-12)
        out_plain = m_h(u_BHWD.flatten(1, 2), grid=(1, hh, ww)).unflatten(1, (hh, ww))
        assert not torch.allclose(out_v, out_plain)  # the scan order matters


def test_bi_ssm_mirror_symmetry():
    """Swapping the two directions' parameters and reversing the input reverses the output."""
    m = make_mixer("bi_ssm", ngroups=2, bias=True)
    e, h, gn = m.d_inner, m.nheads, m.ngroups * m.d_state
    swapped = BiSSMMixer(8, **SMALL, ngroups=2, bias=True).double()
    state = dict(m.state_dict())
    for a, b in [("conv1d", "conv1d_b"), ("dt_bias", "dt_bias_b"), ("A_log", "A_b_log"), ("D", "D_b")]:
        for suffix in ("", ".weight", ".bias"):
            if a + suffix in state:
                state[a + suffix], state[b + suffix] = state[b + suffix], state[a + suffix]
    rows = list(range(2 * e))
    rows += list(range(2 * e + 2 * gn, 2 * e + 4 * gn)) + list(range(2 * e, 2 * e + 2 * gn))  # (B, C)_f <-> _b
    rows += list(range(2 * e + 4 * gn + h, 2 * e + 4 * gn + 2 * h)) + list(range(2 * e + 4 * gn, 2 * e + 4 * gn + h))
    state["in_proj.weight"] = state["in_proj.weight"][rows]
    state["in_proj.bias"] = state["in_proj.bias"][rows]
    swapped.load_state_dict(state)
    u = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(swapped(u.flip(1), grid=(1, 1, 9)), m(u, grid=(1, 1, 9)).flip(1))


@pytest.mark.parametrize(("kind", "names"), [("ssm", ("A_log", "dt_bias")), ("bi_ssm", ("A_log", "A_b_log", "D_b"))])
def test_gradcheck_input_and_parameters(kind, names):
    m = make_mixer(kind, dim=4, d_state=2, d_conv=3, headdim=2, chunk_size=4)
    u = torch.randn(1, 6, 4, dtype=torch.float64, requires_grad=True)
    params = dict(m.named_parameters())
    inputs = (u, *(params[name].detach().clone().requires_grad_() for name in names))

    def f(u, *values):
        state = {**params, **dict(zip(names, values))}
        return torch.func.functional_call(m, state, (u,), {"grid": (1, 2, 3)})

    assert torch.autograd.gradcheck(f, inputs)


def test_parameter_names_and_shapes():
    # d_inner 16, nheads 4, ngroups * d_state = 6, conv_dim 16 + 2*6 = 28
    ssm = SSMMixer(8, d_state=3, d_conv=4, expand=2, headdim=4, ngroups=2)
    expected_ssm = {
        "in_proj.weight": (2 * 16 + 2 * 6 + 4, 8),
        "conv1d.weight": (28, 1, 4),
        "conv1d.bias": (28,),
        "dt_bias": (4,),
        "A_log": (4,),
        "D": (4,),
        "norm.weight": (16,),
        "out_proj.weight": (8, 16),
    }
    assert {name: tuple(p.shape) for name, p in ssm.named_parameters()} == expected_ssm
    assert {name: tuple(t.shape) for name, t in ssm.state_dict().items()} == expected_ssm

    bi = BiSSMMixer(8, d_state=3, d_conv=4, expand=2, headdim=4, ngroups=2)
    expected_bi = {
        "in_proj.weight": (2 * 16 + 4 * 6 + 2 * 4, 8),
        "conv1d.weight": (28, 1, 4),
        "conv1d.bias": (28,),
        "conv1d_b.weight": (28, 1, 4),
        "conv1d_b.bias": (28,),
        "dt_bias": (4,),
        "dt_bias_b": (4,),
        "A_log": (4,),
        "A_b_log": (4,),
        "D": (4,),
        "D_b": (4,),
        "norm.weight": (16,),
        "out_proj.weight": (8, 16),
    }
    assert {name: tuple(p.shape) for name, p in bi.named_parameters()} == expected_bi
    assert {name: tuple(t.shape) for name, t in bi.state_dict().items()} == expected_bi

    for cls, expected in [(SSMMixer, expected_ssm), (BiSSMMixer, expected_bi)]:
        m = cls(8, d_state=3, d_conv=4, expand=2, headdim=4, ngroups=2, bias=True, conv_bias=False)
        shapes = {name: tuple(p.shape) for name, p in m.named_parameters()}
        no_conv_bias = {k: v for k, v in expected.items() if not k.startswith("conv1d") or k.endswith("weight")}
        n_in = expected["in_proj.weight"][0]
        assert shapes == {**no_conv_bias, "in_proj.bias": (n_in,), "out_proj.bias": (8,)}
    assert all(getattr(ssm, name)._no_weight_decay for name in ("dt_bias", "A_log", "D"))
    assert all(getattr(bi, n)._no_weight_decay for n in ("dt_bias", "dt_bias_b", "A_log", "A_b_log", "D", "D_b"))


@pytest.mark.parametrize("cls", [SSMMixer, BiSSMMixer])
def test_default_init(cls):
    torch.manual_seed(0)
    m = cls(32, d_state=4, headdim=8, dt_min=0.01, dt_max=0.05, A_init_range=(2.0, 4.0))
    logs = [m.A_log] + ([m.A_b_log] if cls is BiSSMMixer else [])
    for A_log in logs:
        assert (A_log >= math.log(2.0) - 1e-6).all() and (A_log <= math.log(4.0) + 1e-6).all()
        assert A_log.std() > 0
    for name in ("D", "D_b") if cls is BiSSMMixer else ("D",):
        assert torch.equal(getattr(m, name), torch.ones(8))
    for name in ("dt_bias", "dt_bias_b") if cls is BiSSMMixer else ("dt_bias",):
        dt = F.softplus(getattr(m, name))
        assert (dt > 0.01 - 1e-6).all() and (dt < 0.05 + 1e-6).all()
    assert torch.equal(m.norm.weight, torch.ones(64))
    assert m.conv1d.padding == (m.d_conv - 1,)  # Mamba2Simple's layout


@pytest.mark.parametrize("cls", [SSMMixer, BiSSMMixer])
def test_meta_device_and_dtype_conversion(cls):
    with torch.device("meta"):
        m = cls(64, d_state=16, headdim=16)
    assert all(p.is_meta for p in m.parameters())
    torch.manual_seed(0)
    m = cls(16, d_state=4, headdim=8, chunk_size=8).to(torch.bfloat16)
    u = torch.randn(2, 12, 16, dtype=torch.bfloat16)
    out = m(u, grid=(1, 3, 4))
    assert out.dtype == torch.bfloat16 and out.shape == u.shape and torch.isfinite(out).all()
    m32 = cls(16, d_state=4, headdim=8, chunk_size=8)
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    assert rel_err(out.float(), m32(u.float(), grid=(1, 3, 4))) < 0.05


@pytest.mark.parametrize(("name", "cls"), [("ssm", SSMMixer), ("bi_ssm", BiSSMMixer)])
def test_registry_builds(name, cls):
    m = build("mixer", name, dim=8, **SMALL, scan="v")
    assert type(m) is cls and m.scan_name == "v" and m.d_conv == 4


@pytest.mark.parametrize("cls", [SSMMixer, BiSSMMixer])
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_conv": 0}, r"convolution is causal, so d_conv must be a positive integer.*got d_conv=0"),
        ({"headdim": 5}, r"headdim must divide expand \* dim = 16.*Allowed: 1, 2, 4, 8, 16"),
        ({"headdim": 4, "ngroups": 3}, r"ngroups must divide the number of heads \(4.*Allowed: 1, 2, 4"),
        ({"backend": "cuda"}, r"unknown SSD scan backend 'cuda'; allowed: auto, torch"),
        ({"expand": 0}, r"expand, d_state and chunk_size must be positive integers"),
        ({"A_init_range": (0.0, 4.0)}, r"A_init_range must satisfy 0 < low <= high"),
        ({"A_init_range": 3.0}, r"A_init_range must be a pair \(low, high\)"),
        ({"dt_min": 0.2}, r"need 0 < dt_min <= dt_max"),
    ],
)
def test_bad_config(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(8, **{**SMALL, **kwargs})
