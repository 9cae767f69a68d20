"""Zigzag scan orders: permutations, the neighbour property, the documented table, video modes."""

from __future__ import annotations

import itertools

import pytest
import torch
from hthlight_zigzag import NUM_PATHS, TEMPORAL_MODES, ZigzagScan, zigzag_path

from hthlight.registry import Registry
from hthlight.scans import ScanOrder

PATHS = range(NUM_PATHS)
GRIDS = [(1, 1), (1, 5), (4, 1), (2, 2), (2, 3), (3, 4), (4, 3), (5, 5), (4, 6), (7, 2)]
NAMES = {("frame", k): f"zigzag_{k}" for k in PATHS} | {("spatiotemporal", k): f"zigzag_st_{k}" for k in PATHS}


def cells(path_hw, w):
    """(row, column) of each canonical spatial index."""
    return [(int(i) // w, int(i) % w) for i in path_hw]


def reference_path(h, w, path):
    """The docstring's definition, written with coordinates: snake, then mirror the whole path."""
    if path % 2 == 0:  # row snake
        snake = [(r, c if r % 2 == 0 else w - 1 - c) for r in range(h) for c in range(w)]
    else:  # column snake
        snake = [(r if c % 2 == 0 else h - 1 - r, c) for c in range(w) for r in range(h)]
    flip_rows = path // 2 in (1, 3)  # flipped vertically, rotated 180°
    flip_cols = path // 2 in (2, 3)  # flipped horizontally, rotated 180°
    mirrored = [(h - 1 - r if flip_rows else r, w - 1 - c if flip_cols else c) for r, c in snake]
    return [r * w + c for r, c in mirrored]


@pytest.mark.parametrize("temporal", TEMPORAL_MODES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("t", "h", "w"), [(1, 3, 4), (3, 2, 5), (2, 4, 4), (1, 1, 1), (2, 1, 3)])
def test_every_path_is_a_permutation(path, temporal, t, h, w):
    perm = ZigzagScan(path, temporal).permutation(t, h, w)
    assert perm.dtype == torch.long and perm.shape == (t * h * w,)
    assert sorted(perm.tolist()) == list(range(t * h * w))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("h", "w"), GRIDS)
def test_consecutive_tokens_are_grid_neighbours(path, h, w):
    """The defining property of a zigzag: every step moves to a 4-neighbour (no raster jumps)."""
    visited = cells(zigzag_path(h, w, path), w)
    for (r0, c0), (r1, c1) in itertools.pairwise(visited):
        assert abs(r0 - r1) + abs(c0 - c1) == 1, (path, h, w, visited)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("t", "h", "w"), [(3, 3, 4), (2, 5, 2)])
def test_frame_mode_steps_are_neighbours_within_each_frame(path, t, h, w):
    perm = ZigzagScan(path).permutation(t, h, w).view(t, h * w)
    for frame, tokens in enumerate(perm.tolist()):
        assert all(i // (h * w) == frame for i in tokens)
        visited = cells([i % (h * w) for i in tokens], w)
        assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in itertools.pairwise(visited))


@pytest.mark.parametrize(("h", "w"), [(3, 4), (4, 3), (2, 3), (4, 4), (3, 5), (2, 2)])
def test_the_eight_paths_are_pairwise_distinct(h, w):
    paths = [tuple(zigzag_path(h, w, k).tolist()) for k in PATHS]
    assert len(set(paths)) == NUM_PATHS
    scans = [ZigzagScan(k).permutation(1, h, w).tolist() for k in PATHS]
    assert all(a != b for a, b in itertools.combinations(scans, 2))


def test_path_0_on_2x3_written_out():
    # 0 1 2      row 0 left -> right, then row 1 right -> left
    # 3 4 5
    assert ZigzagScan(0).permutation(1, 2, 3).tolist() == [0, 1, 2, 5, 4, 3]


def test_all_paths_on_2x3_written_out():
    expected = {
        0: [0, 1, 2, 5, 4, 3],  # row snake from top-left
        1: [0, 3, 4, 1, 2, 5],  # column snake from top-left
        2: [3, 4, 5, 2, 1, 0],  # row snake flipped vertically: from bottom-left
        3: [3, 0, 1, 4, 5, 2],  # column snake flipped vertically: up column 0
        4: [2, 1, 0, 3, 4, 5],  # row snake flipped horizontally: from top-right
        5: [2, 5, 4, 1, 0, 3],  # column snake flipped horizontally: down the last column
        6: [5, 4, 3, 0, 1, 2],  # row snake rotated 180°: from bottom-right
        7: [5, 2, 1, 4, 3, 0],  # column snake rotated 180°: up the last column
    }
    assert {k: zigzag_path(2, 3, k).tolist() for k in PATHS} == expected


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("h", "w"), GRIDS)
def test_paths_match_the_documented_definition(path, h, w):
    assert zigzag_path(h, w, path).tolist() == reference_path(h, w, path)


@pytest.mark.parametrize(
    ("path", "start", "second"),
    [  # docstring table on a 3 x 4 grid: starting corner and first move
        (0, (0, 0), (0, 1)),
        (1, (0, 0), (1, 0)),
        (2, (2, 0), (2, 1)),
        (3, (2, 0), (1, 0)),
        (4, (0, 3), (0, 2)),
        (5, (0, 3), (1, 3)),
        (6, (2, 3), (2, 2)),
        (7, (2, 3), (1, 3)),
    ],
)
def test_start_corner_and_first_move_as_documented(path, start, second):
    visited = cells(zigzag_path(3, 4, path), 4)
    assert visited[:2] == [start, second]


@pytest.mark.parametrize("path", PATHS)
def test_frame_mode_scans_frame_by_frame(path):
    t, h, w = 3, 3, 4
    perm = ZigzagScan(path, "frame").permutation(t, h, w)
    spatial = zigzag_path(h, w, path)
    assert sorted(perm[: h * w].tolist()) == list(range(h * w))  # the first h*w entries are frame 0
    assert torch.equal(perm[: h * w], spatial)
    assert torch.equal(perm.view(t, h * w), spatial[None] + h * w * torch.arange(t)[:, None])


@pytest.mark.parametrize("path", PATHS)
def test_spatiotemporal_mode_is_time_fastest(path):
    t, h, w = 3, 3, 4
    perm = ZigzagScan(path, "spatiotemporal").permutation(t, h, w)
    spatial = zigzag_path(h, w, path)
    first = int(spatial[0])
    assert perm[:t].tolist() == [first + f * h * w for f in range(t)]  # one position, every frame
    assert torch.equal(perm.view(h * w, t), spatial[:, None] + h * w * torch.arange(t)[None, :])


@pytest.mark.parametrize("path", PATHS)
def test_modes_agree_for_one_frame(path):
    assert torch.equal(
        ZigzagScan(path, "frame").permutation(1, 4, 5), ZigzagScan(path, "spatiotemporal").order(1, 4, 5)
    )


@pytest.mark.parametrize("temporal", TEMPORAL_MODES)
@pytest.mark.parametrize("path", PATHS)
def test_check_scan_contract(path, temporal):
    from hthlight.testing import check_scan

    check_scan(ZigzagScan(path, temporal))
    # through the constructor (fresh instances are built, not copied), on larger non-square grids too
    spec = {"class_path": "hthlight_zigzag.ZigzagScan", "path": path, "temporal": temporal}
    check_scan(spec, grids=((1, 4, 6), (3, 5, 2), (2, 2, 2)))


def test_scans_are_hashable_values_and_share_the_cache():
    assert ZigzagScan(3) == ZigzagScan(3, "frame") and hash(ZigzagScan(3)) == hash(ZigzagScan(3))
    assert ZigzagScan(3) != ZigzagScan(4) and ZigzagScan(3) != ZigzagScan(3, "spatiotemporal")
    assert len({ZigzagScan(k, m) for k in PATHS for m in TEMPORAL_MODES}) == 2 * NUM_PATHS
    assert ZigzagScan(5).permutation(2, 3, 4) is ZigzagScan(5).permutation(2, 3, 4)
    x = torch.randn(2, 24, 3)
    scan = ZigzagScan(6, "spatiotemporal")
    assert torch.equal(x[:, scan.permutation(2, 3, 4)][:, scan.inverse(2, 3, 4)], x)
    assert repr(scan) == "ZigzagScan(path=6, temporal='spatiotemporal')"


@pytest.mark.parametrize("path", [-1, 8, "3", 2.0, True, None])
def test_invalid_path_names_the_allowed_values(path):
    with pytest.raises(ValueError, match=r"one of 0, 1, 2, 3, 4, 5, 6, 7; got"):
        ZigzagScan(path)


def test_invalid_temporal_mode_names_the_allowed_values():
    with pytest.raises(ValueError, match=r"one of 'frame', 'spatiotemporal'; got 'first'"):
        ZigzagScan(0, temporal="first")


def test_a_scanning_mixer_runs_and_trains_with_a_zigzag_scan():
    from hthlight.mixers.hydra import HydraMixer

    spec = {"class_path": "hthlight_zigzag.ZigzagScan", "init_args": {"path": 5, "temporal": "spatiotemporal"}}
    mixer = HydraMixer(dim=8, scan=spec, d_state=2, headdim=4, chunk_size=4)
    assert mixer.scan == ZigzagScan(5, "spatiotemporal")
    x = torch.randn(2, 2 * 3 * 5, 8, requires_grad=True)
    y = mixer(x, grid=(2, 3, 5))
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()


def test_entry_points_register_every_zigzag(installed_plugin, monkeypatch):
    monkeypatch.delenv("HTHLIGHT_NO_PLUGINS", raising=False)
    registry = Registry("scan", "hthlight.scans", {})  # fresh: the global registry's cache is not involved
    names = registry.names()
    assert {f"zigzag_{k}" for k in PATHS} <= set(names)
    assert {f"zigzag_st_{k}" for k in PATHS} <= set(names)
    for (temporal, path), name in NAMES.items():
        entry = registry.entry(name)
        assert entry.distribution == "hthlight-zigzag" and entry.version == "0.1.0"
        scan = registry.build(name)  # the registry calls the entry point with no arguments
        assert isinstance(scan, ScanOrder)
        assert scan == ZigzagScan(path, temporal)
