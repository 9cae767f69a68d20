"""Zigzag (boustrophedon) scan orders in the style of ZigMa (Hu et al. 2024).

ZigMa ("ZigMa: A DiT-style Zigzag Mamba Diffusion Model", Hu et al., ECCV 2024) scans the
token grid along *snake* paths instead of raster lines: a raster scan jumps from the end of
one row to the start of the next, while a snake turns around, so consecutive tokens of the
scan are always spatial neighbours. Its 8 paths are the two snake directions (along rows,
along columns) started from each of the four corners of the grid; different blocks use
different paths so that, across depth, every token is close to its neighbours in some scan.

Path ``k`` (registry names ``zigzag_<k>`` and ``zigzag_st_<k>``) over an ``h x w`` grid of
rows ``r`` and columns ``c``:

- the *row snake* visits row ``r`` left -> right when ``r`` is even, right -> left when odd,
  rows top to bottom;
- the *column snake* visits column ``c`` top -> bottom when ``c`` is even, bottom -> top when
  odd, columns left to right (the row snake of the transposed grid);
- the transform then mirrors the whole path: "flipped vertically" maps ``(r, c)`` to
  ``(h-1-r, c)``, "flipped horizontally" to ``(r, w-1-c)``, "rotated 180°" to
  ``(h-1-r, w-1-c)`` (both flips).

=====  =============  ======================  ============  =============================
path   snake          transform               starts at     first run
=====  =============  ======================  ============  =============================
0      row            as is                   top-left      row 0, left -> right
1      column         as is                   top-left      column 0, top -> bottom
2      row            flipped vertically      bottom-left   row h-1, left -> right
3      column         flipped vertically      bottom-left   column 0, bottom -> top
4      row            flipped horizontally    top-right     row 0, right -> left
5      column         flipped horizontally    top-right     column w-1, top -> bottom
6      row            rotated 180°            bottom-right  row h-1, right -> left
7      column         rotated 180°            bottom-right  column w-1, bottom -> top
=====  =============  ======================  ============  =============================

Even paths are row snakes and odd paths column snakes, so any run of consecutive paths
(``zigzag_0 .. zigzag_3``) alternates the two directions, like HTH's ``h``/``v`` alternation.
The rotated path is the reversed row (column) snake when the number of rows (columns) is
odd; when it is even the reversed snake coincides with the vertical (horizontal) flip, which
is why the fourth transform is the 180° rotation: with it the 8 paths are pairwise distinct
on every grid with at least 2 rows and 2 columns.

Example, ``h x w = 2 x 3`` (canonical index ``r * w + c``): path 0 is ``0 1 2 5 4 3`` and
path 1 is ``0 3 4 1 2 5``.

Video (``t`` frames), ``temporal``:

- ``"frame"`` (``zigzag_<k>``): frame by frame, time slowest; every frame is scanned along
  the same spatial path (like ``ht``/``vt``);
- ``"spatiotemporal"`` (``zigzag_st_<k>``): time fastest; at each position of the spatial
  path every frame is visited before moving on (like ``th``/``tv``).

With one frame both modes give the spatial path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hthlight.scans import ScanOrder

NUM_PATHS = 8
TEMPORAL_MODES = ("frame", "spatiotemporal")


def zigzag_path(h: int, w: int, path: int) -> torch.Tensor:
    """The spatial zigzag ``path`` (0..7) over an ``h x w`` grid: canonical indices ``r * w + c``."""
    _check_path(path)
    index_hw = torch.arange(h * w).reshape(h, w)
    transform = path // 2
    if transform in (1, 3):  # flipped vertically / rotated
        index_hw = index_hw.flip(0)
    if transform in (2, 3):  # flipped horizontally / rotated
        index_hw = index_hw.flip(1)
    lines = index_hw if path % 2 == 0 else index_hw.T  # rows of a row snake, columns of a column snake
    lines = lines.clone()
    lines[1::2] = lines[1::2].flip(1)  # every other line runs backwards: the snake turns around
    return lines.reshape(-1)


def _check_path(path: int) -> None:
    if isinstance(path, bool) or not isinstance(path, int) or not 0 <= path < NUM_PATHS:
        allowed = ", ".join(str(k) for k in range(NUM_PATHS))
        raise ValueError(f"zigzag path must be one of {allowed}; got {path!r}")


class ZigzagScan(ScanOrder):
    """ZigMa zigzag scan: spatial snake ``path`` (0..7, see the module docstring) per frame.

    Args:
        path: which of the 8 zigzag paths (table in :mod:`hthlight_zigzag.scans`).
        temporal: ``"frame"`` (frames in order, each scanned along the path; time slowest) or
            ``"spatiotemporal"`` (all frames of a position before the next position; time fastest).
    """

    def __init__(self, path: int, temporal: str = "frame") -> None:
        _check_path(path)
        if temporal not in TEMPORAL_MODES:
            allowed = ", ".join(repr(mode) for mode in TEMPORAL_MODES)
            raise ValueError(f"zigzag temporal mode must be one of {allowed}; got {temporal!r}")
        self.path = int(path)
        self.temporal = temporal

    def order(self, t: int, h: int, w: int) -> torch.Tensor:
        spatial = zigzag_path(h, w, self.path)
        frame_start = torch.arange(t) * (h * w)
        if self.temporal == "frame":
            return (frame_start[:, None] + spatial[None, :]).reshape(-1)
        return (spatial[:, None] + frame_start[None, :]).reshape(-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path}, temporal={self.temporal!r})"


def _factory(path: int, temporal: str) -> Callable[[], ZigzagScan]:
    """A zero-argument callable for an entry point (the registry calls it with no arguments)."""
    name = f"zigzag_{path}" if temporal == "frame" else f"zigzag_st_{path}"

    def build() -> ZigzagScan:
        return ZigzagScan(path, temporal)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"``{name}``: ZigzagScan(path={path}, temporal={temporal!r})."
    return build


# Entry-point targets (pyproject.toml, group ``hthlight.scans``).
zigzag_0 = _factory(0, "frame")
zigzag_1 = _factory(1, "frame")
zigzag_2 = _factory(2, "frame")
zigzag_3 = _factory(3, "frame")
zigzag_4 = _factory(4, "frame")
zigzag_5 = _factory(5, "frame")
zigzag_6 = _factory(6, "frame")
zigzag_7 = _factory(7, "frame")
zigzag_st_0 = _factory(0, "spatiotemporal")
zigzag_st_1 = _factory(1, "spatiotemporal")
zigzag_st_2 = _factory(2, "spatiotemporal")
zigzag_st_3 = _factory(3, "spatiotemporal")
zigzag_st_4 = _factory(4, "spatiotemporal")
zigzag_st_5 = _factory(5, "spatiotemporal")
zigzag_st_6 = _factory(6, "spatiotemporal")
zigzag_st_7 = _factory(7, "spatiotemporal")
