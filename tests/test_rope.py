"""Axial rotary positions (RoFormer, Su et al. 2024) in the attention mixer, float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from hthlight.mixers.attention import AttentionMixer
from hthlight.models.embeddings import apply_rope, rope_axis_pairs, rope_tables


def token_index(grid, t, h, w):
    return (t * grid[1] + h) * grid[2] + w


def reference_rotate(x_BHLK, grid, theta=10000.0):
    """Independent RoPE: each pair (x_i, x_{i+K/2}) as a complex number times exp(i * angle)."""
    k = x_BHLK.shape[-1]
    axis_pairs = rope_axis_pairs(k)
    coords = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), -1).reshape(-1, 3)
    angles = []
    for axis, pairs in enumerate(axis_pairs):
        for j in range(pairs):
            angles.append(coords[:, axis].double() * theta ** (-j / pairs))
    angle_LP = torch.stack(angles, -1)
    z = torch.complex(x_BHLK[..., : k // 2], x_BHLK[..., k // 2 :]) * torch.polar(torch.ones_like(angle_LP), angle_LP)
    return torch.cat([z.real, z.imag], -1)


def test_axis_split_is_documented_and_checked():
    assert rope_axis_pairs(64) == (8, 12, 12)
    assert rope_axis_pairs(128) == (16, 24, 24)
    assert rope_axis_pairs(96) == (12, 18, 18)  # HTH-5B: 3072 wide, 32 heads
    assert rope_axis_pairs(8) == (2, 1, 1)
    with pytest.raises(ValueError, match="even head width"):
        rope_axis_pairs(7)
    with pytest.raises(ValueError, match="even head width"):
        AttentionMixer(dim=14, num_heads=2, rope=True)


def test_rotation_preserves_norms_and_matches_the_complex_reference():
    grid = (2, 3, 5)
    x = torch.randn(2, 3, 30, 16, dtype=torch.float64)
    cos, sin = rope_tables(grid, 16, dtype=torch.float64)
    assert cos.shape == sin.shape == (30, 8)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, reference_rotate(x, grid), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shift", [(0, 2, 0), (0, 0, 3), (1, 1, 2)])
def test_scores_depend_only_on_the_offset(shift):
    grid, k = (3, 7, 6), 16
    cos, sin = rope_tables(grid, k, dtype=torch.float64)
    q, key = torch.randn(2, k, dtype=torch.float64)

    def score(pq, pk):
        iq, ik = token_index(grid, *pq), token_index(grid, *pk)
        rq = apply_rope(q[None, None, None], cos[iq], sin[iq])
        rk = apply_rope(key[None, None, None], cos[ik], sin[ik])
        return float((rq * rk).sum())

    pq, pk = (0, 1, 2), (1, 4, 0)
    moved = [tuple(p + s for p, s in zip(pos, shift, strict=True)) for pos in (pq, pk)]
    assert math.isclose(score(pq, pk), score(*moved), rel_tol=1e-10, abs_tol=1e-12)
    assert not math.isclose(score(pq, pk), score(pq, moved[1]), rel_tol=1e-6)  # a different offset differs


def test_one_frame_leaves_the_time_pairs_alone_and_frame_zero_equals_the_image():
    n_t = rope_axis_pairs(16)[0]
    cos_img, sin_img = rope_tables((1, 4, 3), 16, dtype=torch.float64)
    torch.testing.assert_close(cos_img[:, :n_t], torch.ones(12, n_t, dtype=torch.float64))
    torch.testing.assert_close(sin_img[:, :n_t], torch.zeros(12, n_t, dtype=torch.float64))
    cos_vid, sin_vid = rope_tables((3, 4, 3), 16, dtype=torch.float64)
    torch.testing.assert_close(cos_vid[:12], cos_img)
    torch.testing.assert_close(sin_vid[:12], sin_img)
    assert not torch.allclose(cos_vid[12:24], cos_img)  # frame 1 is rotated in time


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("grid", [(1, 3, 5), (2, 5, 3), (3, 1, 7), (1, 4, 4)])
def test_rope_attention_matches_explicit_softmax_on_rotated_qk(grid, qk_norm):
    dim, heads = 32, 2
    mixer = AttentionMixer(dim=dim, num_heads=heads, qk_norm=qk_norm, rope=True).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-trivial QK-norm weights
    length = grid[0] * grid[1] * grid[2]
    x = torch.randn(2, length, dim, dtype=torch.float64)
    q, k, v = (part.view(2, length, heads, -1).transpose(1, 2) for part in mixer.qkv(x).chunk(3, dim=-1))
    if qk_norm:
        rms = lambda t, w: t / t.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * w
        q, k = rms(q, mixer.q_norm.weight), rms(k, mixer.k_norm.weight)
    q, k = reference_rotate(q, grid), reference_rotate(k, grid)
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(2, length, dim)
    torch.testing.assert_close(mixer(x, grid), mixer.proj(y), rtol=1e-10, atol=1e-12)


def test_rope_makes_attention_position_aware():
    mixer = AttentionMixer(dim=16, num_heads=2, rope=True)
    x = torch.randn(1, 9, 16)
    perm = torch.randperm(9)
    assert not torch.allclose(mixer(x[:, perm], (1, 3, 3)), mixer(x, (1, 3, 3))[:, perm], atol=1e-4)
    plain = AttentionMixer(dim=16, num_heads=2)
    plain.load_state_dict(mixer.state_dict())  # rope adds no parameters
    assert not torch.allclose(plain(x, (1, 3, 3)), mixer(x, (1, 3, 3)))


def test_rope_needs_a_matching_grid():
    mixer = AttentionMixer(dim=16, num_heads=2, rope=True)
    with pytest.raises(ValueError, match="needs the token grid"):
        mixer(torch.randn(1, 6, 16))
    with pytest.raises(ValueError, match=r"does not match grid \(1, 2, 2\)"):
        mixer(torch.randn(1, 6, 16), (1, 2, 2))


def test_tables_are_cached_and_safe_to_build_in_inference_mode():
    with torch.inference_mode():
        cos, _ = rope_tables((1, 5, 7), 8)
    assert rope_tables((1, 5, 7), 8)[0] is cos
    assert not cos.is_inference()
    mixer = AttentionMixer(dim=16, num_heads=2, rope=True)
    x = torch.randn(1, 35, 16, requires_grad=True)
    mixer(x, (1, 5, 7)).sum().backward()  # a table first built under inference mode serves training
    assert x.grad is not None


def test_low_precision_inputs_keep_their_dtype():
    mixer = AttentionMixer(dim=16, num_heads=2, rope=True)
    x = torch.randn(2, 12, 16)
    out = mixer.to(torch.bfloat16)(x.bfloat16(), (1, 3, 4))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), mixer.float()(x, (1, 3, 4)), rtol=0.05, atol=0.05)
