"""Scan orders exactly as DESIGN.md defines them."""

from __future__ import annotations

import itertools

import pytest
import torch

import hthlight
from hthlight.scans import ScanOrder

T, H, W = 2, 3, 5


def expected_order(key):
    """Canonical indices sorted by ``key(t, h, w)``."""
    cells = list(itertools.product(range(T), range(H), range(W)))
    canonical = {cell: i for i, cell in enumerate(cells)}
    return [canonical[c] for c in sorted(cells, key=lambda c: key(*c))]


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("h", lambda t, h, w: (t, h, w)),
        ("ht", lambda t, h, w: (t, h, w)),
        ("v", lambda t, h, w: (t, w, h)),
        ("vt", lambda t, h, w: (t, w, h)),
        ("th", lambda t, h, w: (h, w, t)),
        ("tv", lambda t, h, w: (w, h, t)),
    ],
)
def test_orders_on_non_square_video_grid(name, key):
    perm = hthlight.build("scan", name).permutation(T, H, W)
    assert perm.dtype == torch.long
    assert perm.tolist() == expected_order(key)


def test_scanned_sequence_is_x_indexed_by_perm_and_inverse_restores():
    x = torch.randn(1, T * H * W, 4)
    scan = hthlight.build("scan", "tv")
    perm, inverse = scan.permutation(T, H, W), scan.inverse(T, H, W)
    assert torch.equal(x[:, perm][:, inverse], x)
    # first tokens of a tv scan: every frame of position (h=0, w=0), then (h=1, w=0)
    assert perm[:4].tolist() == [0, H * W, W, H * W + W]


@pytest.mark.parametrize(("temporal", "spatial"), [("th", "h"), ("tv", "v")])
def test_temporal_scans_equal_spatial_ones_for_one_frame(temporal, spatial):
    a = hthlight.build("scan", temporal).permutation(1, 4, 3)
    b = hthlight.build("scan", spatial).permutation(1, 4, 3)
    assert torch.equal(a, b)


def test_permutations_are_cached_per_grid_and_device():
    scan = hthlight.build("scan", "v")
    assert scan.permutation(1, 4, 4) is scan.permutation(1, 4, 4)
    assert hthlight.build("scan", "v").permutation(1, 4, 4) is scan.permutation(1, 4, 4)
    assert scan.permutation(1, 4, 5) is not scan.permutation(1, 4, 4)


def test_bad_grid_and_bad_custom_order_are_reported():
    with pytest.raises(ValueError, match="three positive integers"):
        hthlight.build("scan", "h").permutation(0, 2, 2)

    class Broken(ScanOrder):
        def order(self, t, h, w):
            return torch.zeros(t * h * w, dtype=torch.long)

    with pytest.raises(ValueError, match="not a permutation"):
        Broken().permutation(1, 2, 2)


def test_permutations_first_built_under_inference_mode_still_train():
    from hthlight.mixers.hydra import HydraMixer

    mixer = HydraMixer(dim=8, scan="v", d_state=2, headdim=4, chunk_size=4)
    x = torch.randn(1, 3 * 7, 8)
    with torch.inference_mode():  # as in Lightning's sanity-check validation
        mixer(x, (1, 3, 7))
    mixer(x.requires_grad_(), (1, 3, 7)).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("name", ["h", "v", "ht", "vt", "th", "tv"])
def test_axis_scans_know_when_they_are_the_identity(name):
    """The shape-only answer (what a compiled model uses) agrees with the built permutation."""
    scan = hthlight.build("scan", name)
    for grid in itertools.product([1, 2, 3], repeat=3):
        perm = scan.permutation(*grid)
        assert scan.is_identity(*grid) == torch.equal(perm, torch.arange(perm.numel())), grid


def test_custom_scans_without_a_shape_rule_are_compared_as_built():
    from hthlight.mixers.base import _is_identity

    class Reversed(ScanOrder):
        def order(self, t, h, w):
            return torch.arange(t * h * w).flip(0)

    assert Reversed().is_identity(1, 1, 4) is None
    assert not _is_identity(Reversed(), (1, 1, 4)) and _is_identity(Reversed(), (1, 1, 1))


def test_permute_tokens_matches_indexing_forward_and_backward():
    """The scanning mixers' permutation: same values and gradients as ``x[:, perm]`` (float64)."""
    from hthlight.mixers.base import permute_tokens

    scan = hthlight.build("scan", "tv")
    perm, inverse = scan.permutation(2, 3, 4), scan.inverse(2, 3, 4)
    x = torch.randn(2, 24, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 24, 5, dtype=torch.float64)
    y = permute_tokens(x, perm, inverse)
    assert torch.equal(y, x[:, perm])
    (grad,) = torch.autograd.grad((y * weights).sum(), x)
    (expected,) = torch.autograd.grad((x[:, perm] * weights).sum(), x)
    assert torch.equal(grad, expected)
    assert torch.autograd.gradcheck(lambda t: permute_tokens(t, perm, inverse), (x,))
