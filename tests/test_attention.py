"""Attention mixer and cross-attention against explicit softmax attention (float64)."""

from __future__ import annotations

import pytest
import torch

from hthlight.conditioning.cross_attention import CrossAttention
from hthlight.mixers.attention import AttentionMixer


def reference_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def heads(x, n):
    b, length, d = x.shape
    return x.view(b, length, n, d // n).transpose(1, 2)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_self_attention_matches_explicit_softmax(qk_norm):
    mixer = AttentionMixer(dim=12, num_heads=3, qk_norm=qk_norm).double()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    q, k, v = (heads(p, 3) for p in mixer.qkv(x).chunk(3, dim=-1))
    if qk_norm:
        rms = lambda t, w: t / t.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * w
        q, k = rms(q, mixer.q_norm.weight), rms(k, mixer.k_norm.weight)
    y = reference_attention(q, k, v).transpose(1, 2).reshape(2, 7, 12)
    torch.testing.assert_close(mixer(x, (1, 1, 7)), mixer.proj(y), rtol=1e-10, atol=1e-12)


def test_attention_is_permutation_equivariant():
    mixer = AttentionMixer(dim=8, num_heads=2)
    x = torch.randn(1, 9, 8)
    perm = torch.randperm(9)
    torch.testing.assert_close(mixer(x[:, perm], (1, 3, 3)), mixer(x, (1, 3, 3))[:, perm], rtol=1e-5, atol=1e-6)


def test_cross_attention_mask_hides_padded_context():
    attn = CrossAttention(dim=8, context_dim=6, num_heads=2).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    context = torch.randn(2, 4, 6, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = attn(x, context, mask)
    changed = context.clone()
    changed[0, 2:] = 100.0  # masked tokens of sample 0 must not matter
    torch.testing.assert_close(attn(x, changed, mask)[0], out[0])
    q = heads(attn.q(x), 2)
    k, v = (heads(p, 2) for p in attn.kv(context).chunk(2, dim=-1))
    y = reference_attention(q, k, v, mask[:, None, None, :]).transpose(1, 2).reshape(2, 5, 8)
    torch.testing.assert_close(out, attn.proj(y), rtol=1e-10, atol=1e-12)


def test_bad_head_count():
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        AttentionMixer(dim=8, num_heads=3)
