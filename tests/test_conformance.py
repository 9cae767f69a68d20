"""The conformance kit (hthlight.testing): built-ins pass it, deliberately broken doubles fail the intended check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hthlight import testing
from hthlight.mixers.base import ScanningMixer, TokenMixer
from hthlight.mixers.hydra import HydraMixer
from hthlight.registry import BUILT_IN, registry
from hthlight.scans import ScanOrder, VerticalScan, check_grid
from hthlight.testing import TINY_KWARGS, _check_own_token, _Failure, _mixer_subject, check_mixer, check_scan


def _builtins(kind):
    return [entry.name for entry in registry(kind).entries() if entry.source == BUILT_IN]


# ------------------------------------------------------------------ built-ins pass
@pytest.mark.parametrize("name", _builtins("mixer"))
def test_builtin_mixer_conforms(name):
    check_mixer(name, **TINY_KWARGS.get(name, {}))


@pytest.mark.parametrize("name", _builtins("scan"))
def test_builtin_scan_conforms(name):
    check_scan(name)


def test_every_builtin_mixer_has_tiny_kwargs():
    assert set(_builtins("mixer")) <= set(TINY_KWARGS)


def test_check_builtins_covers_every_builtin(monkeypatch):
    seen = []
    monkeypatch.setattr(testing, "check_mixer", lambda name, **kwargs: seen.append(("mixer", name, kwargs)))
    monkeypatch.setattr(testing, "check_scan", lambda name: seen.append(("scan", name, {})))
    testing.check_builtins()
    assert seen == [("mixer", n, TINY_KWARGS[n]) for n in _builtins("mixer")] + [
        ("scan", n, {}) for n in _builtins("scan")
    ]


@pytest.mark.parametrize(
    ("mixer", "kwargs"),
    [
        (HydraMixer, {**TINY_KWARGS["hydra"], "scan": "tv"}),  # a class, called as HydraMixer(dim=..., **kwargs)
        ({"class_path": "hthlight.mixers.ssm.SSMMixer", "init_args": TINY_KWARGS["ssm"]}, {}),
        ({"name": "attention", "num_heads": 2}, {"rope": True}),  # kwargs merge over the spec's
    ],
    ids=["class", "class_path_spec", "name_spec_with_rope"],
)
def test_mixer_given_as_class_or_spec_conforms(mixer, kwargs):
    check_mixer(mixer, dim=16, grids=((2, 2, 3),), **kwargs)


def test_scan_given_as_class_instance_or_spec_conforms():
    check_scan(VerticalScan)
    check_scan(VerticalScan())
    check_scan({"name": "th"})


def test_caller_random_state_is_left_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_mixer(PointwiseMixer, dim=8, grids=((1, 2, 3),))
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------ doubles
class PointwiseMixer(ScanningMixer):
    """A correct (if trivial) scanning mixer: a per-token linear map."""

    def __init__(self, dim, scan="h"):
        super().__init__(dim, scan)
        self.proj = nn.Linear(dim, dim)

    def mix_sequence(self, x_BLD):
        return self.proj(x_BLD)


class ScanOrderOutput(PointwiseMixer):
    """Broken: returns tokens in scan order (forgets the inverse permutation)."""

    def forward(self, x_BLD, grid):
        t, h, w = check_grid(grid)
        if x_BLD.shape[1] != t * h * w:
            raise ValueError("grid does not match")
        return self.mix_sequence(x_BLD[:, self.scan.permutation(t, h, w)])


class PermutingMixer(TokenMixer):
    """Broken, not a ScanningMixer: permutes tokens vertically and never permutes them back."""

    def __init__(self, dim):
        super().__init__(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLD, grid):
        t, h, w = check_grid(grid)
        if x_BLD.shape[1] != t * h * w:
            raise ValueError("grid does not match")
        return self.proj(x_BLD[:, VerticalScan().permutation(t, h, w)])


class BatchMixing(PointwiseMixer):
    """Broken: adds the batch mean, so samples see each other."""

    def mix_sequence(self, x_BLD):
        return self.proj(x_BLD) + x_BLD.mean(0, keepdim=True)


class DetachedBatchMixing(PointwiseMixer):
    """Broken, invisibly to gradients: subtracts a detached batch statistic."""

    def mix_sequence(self, x_BLD):
        return self.proj(x_BLD) - x_BLD.mean(0, keepdim=True).detach()


class NoisyMixer(PointwiseMixer):
    """Broken: dropout-like noise also in eval mode."""

    def mix_sequence(self, x_BLD):
        return self.proj(x_BLD) + 1e-3 * torch.randn_like(x_BLD)


class UnusedParameter(PointwiseMixer):
    """Broken: a parameter that never takes part in forward."""

    def __init__(self, dim, scan="h"):
        super().__init__(dim, scan)
        self.unused = nn.Linear(dim, dim)


class WrongShape(PointwiseMixer):
    """Broken: returns half the channels."""

    def mix_sequence(self, x_BLD):
        return self.proj(x_BLD)[..., : self.dim // 2]


class NotReinitialisable(PointwiseMixer):
    """Broken for meta-device init: a directly created parameter without reset_parameters()."""

    def __init__(self, dim, scan="h"):
        super().__init__(dim, scan)
        self.scale = nn.Parameter(torch.ones(dim))

    def mix_sequence(self, x_BLD):
        return self.proj(x_BLD) * self.scale


class GridMisuse(TokenMixer):
    """Broken: uses the grid without checking it matches the sequence."""

    def __init__(self, dim):
        super().__init__(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLD, grid):
        return self.proj(x_BLD) * grid[2]


class NotAPermutation(ScanOrder):
    """Broken: visits token 0 twice and the last token never."""

    def order(self, t, h, w):
        perm = torch.arange(t * h * w)
        perm[-1] = 0
        return perm


class UnequalInstances(ScanOrder):
    """Broken cache key: each instance carries its own object, so fresh instances are never equal."""

    def __init__(self):
        self.token = object()

    def order(self, t, h, w):
        return torch.arange(t * h * w)


# ------------------------------------------------------------------ doubles fail the intended check
@pytest.mark.parametrize(
    ("mixer", "check", "detail"),
    [
        (ScanOrderOutput, "canonical order", r"mix_sequence\(x\[:, perm\]\)\[:, inverse\]"),
        (PermutingMixer, "canonical order", "do not depend on their own input token"),
        (BatchMixing, "canonical order", "gradient .* from other samples"),
        (DetachedBatchMixing, "canonical order", "changing the other samples"),
        (NoisyMixer, "determinism", "two forwards in eval mode differ"),
        (UnusedParameter, "gradient flow", r"parameters \['unused.weight', 'unused.bias'\] got no gradient"),
        (WrongShape, "shapes", r"output shape \(2, 15, 8\); expected the input's"),
        (NotReinitialisable, "construction", r"parameters \['scale'\] were not re-initialised"),
        (GridMisuse, "grid handling", "expected an exception"),
    ],
)
def test_broken_mixer_fails_the_intended_check(mixer, check, detail):
    with pytest.raises(AssertionError, match=rf"^{mixer.__qualname__}: {check}: .*{detail}"):
        check_mixer(mixer, dim=16)


@pytest.mark.parametrize(
    ("scan", "check", "detail"),
    [
        (NotAPermutation, "permutation", "not a permutation"),
        (UnequalInstances, "equality", "are not equal"),
    ],
)
def test_broken_scan_fails_the_intended_check(scan, check, detail):
    with pytest.raises(AssertionError, match=rf"^{scan.__qualname__}: {check}: .*{detail}"):
        check_scan(scan)


def test_own_token_check_catches_scan_order_output_for_non_identity_scans():
    """The gradient check alone catches tokens returned in scan order, except under an identity scan."""
    subject = _mixer_subject(ScanOrderOutput, 8, {}, ((1, 3, 4),), 2, 0)
    for scan, broken in (("v", True), ("h", False)):
        mixer = ScanOrderOutput(8, scan=scan).double()
        if broken:
            with pytest.raises(_Failure, match=r"output tokens \[1, 2, .*\] do not depend on their own input token"):
                _check_own_token(subject, mixer, scan, (1, 3, 4))
        else:
            _check_own_token(subject, mixer, scan, (1, 3, 4))
    _check_own_token(subject, PointwiseMixer(8, scan="v").double(), "v", (1, 3, 4))


def test_locally_defined_mixer_is_wrapped_for_the_block():
    class Local(PointwiseMixer):
        pass

    check_mixer(Local, dim=8, grids=((1, 2, 3),), scan="v")


def test_unknown_registry_name_is_reported():
    with pytest.raises(Exception, match="unknown mixer 'nope'"):
        check_mixer("nope")
