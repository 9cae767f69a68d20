"""HydraMixer against an explicitly materialised quasiseparable mixing matrix, plus its contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hthlight.errors import ConfigError
from hthlight.mixers.hydra import HydraMixer
from hthlight.mixers.norms import GatedRMSNorm, RMSNorm
from hthlight.registry import build
from hthlight.scans import TemporalHorizontalScan

SMALL = dict(d_state=3, d_conv=5, expand=2, headdim=4, chunk_size=4)  # dim 8: d_inner 16, 4 heads


def randomize_(mixer: HydraMixer) -> HydraMixer:
    """Non-trivial values for every parameter (the default init has A_log = 0, D = 1)."""
    with torch.no_grad():
        for name, param in mixer.named_parameters():
            if name == "A_log":
                param.uniform_(-1.0, 1.0)
            elif name == "norm.weight":
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif name.endswith("weight"):
                fan_in = param[0].numel()
                param.copy_(torch.randn_like(param) / fan_in**0.5)
            else:  # biases, dt_bias, D
                param.copy_(0.5 * torch.randn_like(param))
    return mixer


def make_mixer(dim=8, seed=0, **kwargs) -> HydraMixer:
    torch.manual_seed(seed)
    return randomize_(HydraMixer(dim, **{**SMALL, **kwargs}).double())


def reference_hydra(m: HydraMixer, u_BLD: torch.Tensor) -> torch.Tensor:
    """Hydra as y = M x with M = shift(forward SSM) + shift(backward SSM) + diag, built entry by entry."""
    batch, seqlen, _ = u_BLD.shape
    e, h, p, g, n = m.d_inner, m.nheads, m.headdim, m.ngroups, m.d_state
    proj = F.linear(u_BLD, m.in_proj.weight, m.in_proj.bias)
    z, xBC, dt = proj[..., :e], proj[..., e : 2 * e + 4 * g * n], proj[..., 2 * e + 4 * g * n :]
    assert dt.shape[-1] == 2 * h

    # Centered depthwise convolution, written out: out[t] = bias + sum_k w[k] * in[t + k - K // 2].
    k_half = m.d_conv // 2
    conv = m.conv1d.bias.expand_as(xBC).clone()
    for k in range(m.d_conv):
        for t in range(seqlen):
            s = t + k - k_half
            if 0 <= s < seqlen:
                conv[:, t] += m.conv1d.weight[:, 0, k] * xBC[:, s]
    xBC = F.silu(conv)
    x = xBC[..., :e]
    bc = xBC[..., e:].reshape(batch, seqlen, 4, g, n)
    B_f, C_f, B_b, C_b = bc.unbind(2)
    dt = F.softplus(dt + torch.cat([m.dt_bias, m.dt_bias]))
    dt_f, dt_b = dt[..., :h], dt[..., h:]
    A = -torch.exp(m.A_log)
    diag = F.linear(x, m.fc_D.weight) + m.D

    y = torch.zeros(batch, seqlen, h, p, dtype=u_BLD.dtype)
    for b in range(batch):
        for head in range(h):
            grp = head // (h // g)
            M = torch.zeros(seqlen, seqlen, dtype=u_BLD.dtype)
            for t in range(seqlen):
                M[t, t] = diag[b, t, head]
                for s in range(t):  # forward part, shifted: scan output of t - 1
                    decay = torch.exp(A[head] * dt_f[b, s + 1 : t, head].sum())
                    M[t, s] = (C_f[b, t - 1, grp] @ B_f[b, s, grp]) * decay * dt_f[b, s, head]
                for s in range(t + 1, seqlen):  # backward part, shifted: scan output of t + 1
                    decay = torch.exp(A[head] * dt_b[b, t + 1 : s, head].sum())
                    M[t, s] = (C_b[b, t + 1, grp] @ B_b[b, s, grp]) * decay * dt_b[b, s, head]
            y[b, :, head] = M @ x[b, :, head * p : (head + 1) * p]

    y = y.reshape(batch, seqlen, e)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + m.norm.eps) * m.norm.weight * F.silu(z)
    return F.linear(y, m.out_proj.weight, m.out_proj.bias)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(("seqlen", "ngroups", "bias"), [(7, 1, False), (13, 2, False), (10, 2, True), (1, 1, False)])
def test_matches_materialised_matrix(seqlen, ngroups, bias):
    m = make_mixer(ngroups=ngroups, bias=bias, seed=seqlen)
    u = torch.randn(2, seqlen, 8, dtype=torch.float64)
    with torch.no_grad():
        out = m(u, grid=(1, 1, seqlen))
        assert rel_err(out, reference_hydra(m, u)) < 1e-8


def test_vertical_scan_equals_horizontal_on_transposed_grid():
    hh, ww = 3, 4
    m_v = make_mixer(scan="v")
    m_h = make_mixer(scan="h")
    m_h.load_state_dict(m_v.state_dict())
    u_BHWD = torch.randn(2, hh, ww, 8, dtype=torch.float64)
    with torch.no_grad():
        out_v = m_v(u_BHWD.flatten(1, 2), grid=(1, hh, ww)).unflatten(1, (hh, ww))
        u_BWHD = u_BHWD.transpose(1, 2)
        out_h = m_h(u_BWHD.flatten(1, 2), grid=(1, ww, hh)).unflatten(1, (ww, hh)).transpose(1, 2)
        torch.testing.assert_close(out_v, out_h, rtol=1e-12, atol=1e-12)
        out_plain = m_h(u_BHWD.flatten(1, 2), grid=(1, hh, ww)).unflatten(1, (hh, ww))
        assert not torch.allclose(out_v, out_plain)  # the scan order matters


def test_temporal_scan_uses_scan_permutation():
    t, hh, ww = 2, 3, 5
    perm = build("scan", "th").permutation(t, hh, ww)
    # th: time varies fastest, then columns, then rows.
    expected = [ti * hh * ww + hi * ww + wi for hi in range(hh) for wi in range(ww) for ti in range(t)]
    assert perm.tolist() == expected
    m_th = make_mixer(scan="th")
    assert isinstance(m_th.scan, TemporalHorizontalScan)
    u = torch.randn(2, t * hh * ww, 8, dtype=torch.float64)
    with torch.no_grad():
        out = m_th(u, grid=(t, hh, ww))
        ref = torch.empty_like(out)
        ref[:, perm] = m_th.mix_sequence(u[:, perm])
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        assert rel_err(ref, reference_hydra(m_th, u[:, perm])[:, torch.argsort(perm)]) < 1e-8


def test_gradcheck_input_and_parameters():
    m = make_mixer(dim=4, d_state=2, d_conv=3, headdim=2, chunk_size=4)
    u = torch.randn(1, 7, 4, dtype=torch.float64, requires_grad=True)
    names = ("A_log", "dt_bias")
    params = {name: p for name, p in m.named_parameters()}
    inputs = (u, *(params[name].detach().clone().requires_grad_() for name in names))

    def f(u, *values):
        state = {**params, **dict(zip(names, values))}
        return torch.func.functional_call(m, state, (u,), {"grid": (1, 1, 7)})

    assert torch.autograd.gradcheck(f, inputs)


def test_parameter_names_and_shapes():
    torch.manual_seed(0)
    m = HydraMixer(8, d_state=3, d_conv=5, expand=2, headdim=4, ngroups=2)
    # d_inner 16, nheads 4, conv_dim 16 + 4*2*3 = 40, in_proj 2*16 + 2*(2*2*3) + 2*4 = 64
    expected = {
        "in_proj.weight": (64, 8),
        "conv1d.weight": (40, 1, 5),
        "conv1d.bias": (40,),
        "dt_bias": (4,),
        "A_log": (4,),
        "D": (4,),
        "fc_D.weight": (4, 16),
        "norm.weight": (16,),
        "out_proj.weight": (8, 16),
    }
    assert {name: tuple(p.shape) for name, p in m.named_parameters()} == expected
    assert {name: tuple(t.shape) for name, t in m.state_dict().items()} == expected
    with_bias = HydraMixer(8, d_state=3, d_conv=5, expand=2, headdim=4, ngroups=2, bias=True)
    shapes = {name: tuple(p.shape) for name, p in with_bias.named_parameters()}
    assert shapes == {**expected, "in_proj.bias": (64,), "out_proj.bias": (8,)}
    assert all(getattr(m, name)._no_weight_decay for name in ("dt_bias", "A_log", "D"))


def test_default_init():
    torch.manual_seed(0)
    m = HydraMixer(32, d_state=4, headdim=8, dt_min=0.01, dt_max=0.05)
    assert torch.equal(m.A_log, torch.zeros(8)) and torch.equal(m.D, torch.ones(8))
    assert torch.equal(m.norm.weight, torch.ones(64))
    dt = F.softplus(m.dt_bias)
    assert (dt > 0.01 - 1e-6).all() and (dt < 0.05 + 1e-6).all()


def test_state_dict_round_trip():
    a = make_mixer(seed=0, ngroups=2)
    b = make_mixer(seed=1, ngroups=2)
    u = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.allclose(a(u, grid=(1, 3, 3)), b(u, grid=(1, 3, 3)))
        b.load_state_dict(a.state_dict())
        assert torch.equal(a(u, grid=(1, 3, 3)), b(u, grid=(1, 3, 3)))


def test_meta_device_and_dtype_conversion():
    with torch.device("meta"):
        m = HydraMixer(64, d_state=16, headdim=16)
    assert all(p.is_meta for p in m.parameters())
    torch.manual_seed(0)
    m = HydraMixer(16, d_state=4, headdim=8, chunk_size=8).to(torch.bfloat16)
    u = torch.randn(2, 12, 16, dtype=torch.bfloat16)
    out = m(u, grid=(1, 3, 4))
    assert out.dtype == torch.bfloat16 and out.shape == u.shape and torch.isfinite(out).all()
    assert m.dt_bias._no_weight_decay


def test_registry_builds_hydra():
    m = build("mixer", "hydra", dim=8, **SMALL, scan="v")
    assert isinstance(m, HydraMixer) and m.scan_name == "v"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_conv": 4}, r"d_conv must be odd \(e\.g\. 3, 5, 7\)"),
        ({"headdim": 5}, r"headdim must divide expand \* dim = 16.*Allowed: 1, 2, 4, 8, 16"),
        ({"headdim": 4, "ngroups": 3}, r"ngroups must divide the number of heads \(4.*Allowed: 1, 2, 4"),
        ({"backend": "cuda"}, r"unknown Hydra backend 'cuda'; allowed: auto, torch, triton, mamba_ssm"),
        ({"chunk_size": 0}, r"chunk_size must be positive integers \(chunk_size may be null.*chunk_size=0"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        HydraMixer(8, **{**SMALL, **kwargs})


def test_unset_chunk_size_takes_the_backends_default(monkeypatch):
    """``chunk_size: null`` runs each backend with its own tiling (Triton 128, the others 256)."""
    from hthlight.ssd import bidirectional

    assert bidirectional.chunk_size_for("triton", None) == 128
    assert bidirectional.chunk_size_for("torch", None) == 256
    assert bidirectional.chunk_size_for("triton", 64) == 64
    seen = []
    reference = bidirectional.HYDRA_BACKENDS["torch"]
    monkeypatch.setitem(bidirectional.HYDRA_BACKENDS, "torch", lambda *args: seen.append(args[-1]) or reference(*args))
    unset, explicit = make_mixer(chunk_size=None), make_mixer(chunk_size=256)
    u = torch.randn(2, 300, 8, dtype=torch.float64)
    torch.testing.assert_close(unset(u, (1, 15, 20)), explicit(u, (1, 15, 20)), rtol=0, atol=0)
    assert seen == [256, 256]


def test_norms():
    torch.manual_seed(0)
    x, z = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    norm = GatedRMSNorm(6, eps=1e-5).double()
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * F.silu(z)
    torch.testing.assert_close(norm(x, z), expected)
    plain = RMSNorm(6, eps=1e-6).double()
    torch.testing.assert_close(plain(x), torch.nn.functional.rms_norm(x, (6,), eps=1e-6))
    assert plain(x.bfloat16()).dtype == torch.bfloat16
