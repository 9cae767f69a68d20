"""Check the Triton Hydra forward against the float64 reference on CUDA (random inputs, many shapes).

Usage: python benchmarks/hydra_check.py  -- prints one line per case and the worst error per dtype.
"""

from __future__ import annotations

import torch

from hthlight.kernels.hydra_scan import hydra_scan_fwd
from hthlight.ssd.bidirectional import hydra_mix_torch


def case(batch, seqlen, nheads, headdim, ngroups, d_state, q, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    width = nheads * headdim + 4 * ngroups * d_state
    conv = torch.randn(batch, seqlen, width + 3, device="cuda", generator=g).to(dtype)
    x = conv[..., : nheads * headdim].unflatten(-1, (nheads, headdim))
    BC = conv[..., nheads * headdim : width].unflatten(-1, (4, ngroups, d_state))
    dt_raw = torch.randn(batch, seqlen, 2 * nheads, device="cuda", generator=g).to(dtype) - 2
    dt_bias = torch.randn(nheads, device="cuda", generator=g) * 0.5
    A = -torch.rand(nheads, device="cuda", generator=g) * 4 - 0.5
    diag = torch.randn(batch, seqlen, nheads, device="cuda", generator=g).to(dtype)
    y = torch.full((batch, seqlen, nheads, headdim), float("nan"), device="cuda", dtype=dtype)
    y = hydra_scan_fwd(x, dt_raw, dt_bias, A, BC, diag, chunk_size=q)
    args64 = [t.double() for t in (x, dt_raw, dt_bias, A, BC, diag)]
    ref = hydra_mix_torch(*args64, 64)
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert torch.isfinite(y).all()
    return err


def layer_case(dim, d_state, ngroups, seqlen, dtype, seed):
    """Whole layer: Triton (fused conv/norm without grad) vs the torch backend; and gradients."""
    from hthlight.mixers.hydra import HydraMixer

    torch.manual_seed(seed)
    layer = HydraMixer(dim, d_state=d_state, headdim=64, ngroups=ngroups, chunk_size=64, backend="torch").cuda()
    x = torch.randn(2, seqlen, dim, device="cuda")
    ref = layer.double().mix_sequence(x.double())
    layer = layer.to(dtype)
    layer.backend = "triton"
    with torch.no_grad():
        fast = layer.mix_sequence(x.to(dtype))
    fwd_err = ((fast.double() - ref).norm() / ref.norm()).item()
    xg = x.to(dtype).requires_grad_(True)
    layer.mix_sequence(xg).square().sum().backward()
    grads = {n: p.grad.double() for n, p in layer.named_parameters()} | {"x": xg.grad.double()}
    layer.zero_grad()
    layer = layer.double()
    layer.backend = "torch"
    x64 = x.double().requires_grad_(True)
    layer.mix_sequence(x64).square().sum().backward()
    ref_grads = {n: p.grad for n, p in layer.named_parameters()} | {"x": x64.grad}
    grad_err = max(((grads[n] - g).norm() / g.norm()).item() for n, g in ref_grads.items())
    return fwd_err, grad_err


def main() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        for dim, d_state, ngroups, seqlen in [(256, 64, 1, 1000), (128, 32, 2, 77)]:
            fwd, grad = layer_case(dim, d_state, ngroups, seqlen, dtype, seed=seqlen)
            print(f"layer {dtype} dim={dim} N={d_state} G={ngroups} L={seqlen}: fwd {fwd:.2e} worst grad {grad:.2e}")
    worst = {}
    for dtype in (torch.float32, torch.bfloat16):
        for b, L, H, P, G, N in [
            (1, 37, 2, 64, 1, 64),
            (2, 1000, 4, 64, 2, 64),
            (1, 4099, 8, 64, 1, 256),
            (1, 515, 4, 32, 2, 16),
            (1, 2048, 4, 128, 1, 128),
        ]:
            for q in (32, 64, 128, 256):
                err = case(b, L, H, P, G, N, q, dtype, seed=L + q)
                worst[dtype] = max(worst.get(dtype, 0.0), err)
                print(f"{dtype!s:15s} B={b} L={L} H={H} P={P} G={G} N={N} Q={q}: rel err {err:.2e}", flush=True)
    for dtype, err in worst.items():
        print(f"worst {dtype}: {err:.2e}")


if __name__ == "__main__":
    main()
