"""Bidirectional gated linear attention (GLA; Yang et al. 2024, "Gated Linear Attention
Transformers with Hardware-Efficient Training") as an hthlight scanning mixer.

Each direction is the GLA recurrence ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t``,
``o_t = scale * q_t S_t`` with a data-dependent low-rank forget gate ``g_t`` (log-sigmoid);
the backward direction runs on the reversed scan and the two outputs are summed (the
addition-based bidirectional form of DiM/Vim). The fast path is flash-linear-attention's
``chunk_gla`` Triton kernel (CUDA only); ``backend="torch"`` runs :func:`gla_reference`, a slow
step-by-step recurrence for tests and CPU debugging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hthlight.mixers.base import ScanningMixer
from hthlight.mixers.norms import RMSNorm

BACKENDS = ("fla", "torch")
INSTALL_HINT = "pip install 'hthlight-fla[gpu]' (flash-linear-attention's fla-core with Triton) on a CUDA machine"


def gla_reference(q_BTHK, k_BTHK, v_BTHV, g_BTHK, scale: float) -> torch.Tensor:
    """GLA by its recurrence, in float32 (or float64): ``(B, T, H, V)`` in the dtype of ``v``."""
    dtype = torch.promote_types(v_BTHV.dtype, torch.float32)
    q, k, v, g = (t.to(dtype) for t in (q_BTHK, k_BTHK, v_BTHV, g_BTHK))
    b, length, h, key_dim = q.shape
    state_BHKV = q.new_zeros(b, h, key_dim, v.shape[-1])
    outputs = []
    for t in range(length):
        state_BHKV = torch.exp(g[:, t])[..., None] * state_BHKV + k[:, t, :, :, None] * v[:, t, :, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, state_BHKV))
    return torch.stack(outputs, dim=1).to(v_BTHV.dtype)


def _fla_chunk_gla():
    try:
        from fla.ops.gla import chunk_gla
    except ImportError as exc:
        raise RuntimeError(f"the bi_gla mixer's 'fla' backend needs flash-linear-attention: {INSTALL_HINT}") from exc
    return chunk_gla


class BiGLAMixer(ScanningMixer):
    """Bidirectional GLA over the mixer's scan order.

    Args:
        dim: model width.
        scan: scan order (registry name or ScanOrder).
        num_heads: heads; key and value widths must divide by it.
        expand_k: key width as a multiple of ``dim`` (GLA: 0.5).
        expand_v: value width as a multiple of ``dim`` (GLA: 1).
        gate_low_rank_dim: rank of the forget-gate projection (GLA: 16).
        gate_logit_normalizer: divides the log-sigmoid forget gate (GLA: 16).
        norm_eps: epsilon of the per-head output RMSNorm.
        backend: ``fla`` (CUDA, flash-linear-attention) or ``torch`` (reference recurrence).
    """

    def __init__(
        self,
        dim: int,
        scan: str = "h",
        num_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        norm_eps: float = 1e-5,
        backend: str = "fla",
    ) -> None:
        super().__init__(dim, scan)
        if backend not in BACKENDS:
            raise ValueError(f"unknown bi_gla backend {backend!r}; allowed: {', '.join(BACKENDS)}")
        key_dim, value_dim = int(dim * expand_k), int(dim * expand_v)
        if key_dim % num_heads or value_dim % num_heads:
            raise ValueError(f"key width {key_dim} and value width {value_dim} must divide by num_heads={num_heads}")
        self.num_heads, self.backend, self.gate_logit_normalizer = num_heads, backend, gate_logit_normalizer
        self.q_proj = nn.Linear(dim, key_dim, bias=False)
        self.k_proj = nn.Linear(dim, key_dim, bias=False)
        self.v_proj = nn.Linear(dim, value_dim, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(dim, gate_low_rank_dim, bias=False), nn.Linear(gate_low_rank_dim, key_dim)
        )
        self.g_proj = nn.Linear(dim, value_dim)
        self.g_norm = RMSNorm(value_dim // num_heads, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, dim, bias=False)

    def _gla(self, q, k, v, g) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        if self.backend == "torch":
            return gla_reference(q, k, v, g, scale)
        if q.device.type != "cuda":
            raise RuntimeError(
                f"the bi_gla mixer's 'fla' backend runs on CUDA only (got a tensor on {q.device.type}); "
                f"{INSTALL_HINT}, or set backend: torch for the slow reference"
            )
        output, _ = _fla_chunk_gla()(q, k, v, g, scale=scale)
        return output

    def mix_sequence(self, x_BLD: torch.Tensor) -> torch.Tensor:
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1))  # (B, L, H*K) -> (B, L, H, K)
        q, k, v = heads(self.q_proj(x_BLD)), heads(self.k_proj(x_BLD)), heads(self.v_proj(x_BLD))
        g = heads(F.logsigmoid(self.gk_proj(x_BLD)) / self.gate_logit_normalizer)
        forward = self._gla(q, k, v, g)
        backward = self._gla(*(t.flip(1) for t in (q, k, v, g))).flip(1)
        o_BLHV = self.g_norm(forward + backward) * F.silu(heads(self.g_proj(x_BLD)))
        return self.o_proj(o_BLHV.flatten(2))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, backend={self.backend}"
