"""Scan orders: permutations over a ``T x H x W`` token grid (DESIGN.md, "Scan orders").

A scan order turns the canonical row-major ``(t, h, w)`` token sequence into the 1D sequence
a state-space mixer scans: ``x_scanned = x[:, perm]`` and ``x = x_scanned[:, inverse]``.
HTH (Hong et al. 2025, sec. 3.2) alternates horizontal (``h``) and vertical (``v``) raster
scans across blocks; for video, temporal-major scans (``th``, ``tv``) visit every frame of a
spatial position before moving on, while ``ht``/``vt`` scan frame by frame.

Add a scan order by subclassing :class:`ScanOrder` and implementing :meth:`order`; register
it under the ``hthlight.scans`` entry-point group.
"""

from __future__ import annotations

import functools

import torch

Grid = tuple[int, int, int]
_AXES = ("t", "h", "w")


def check_grid(grid: Grid) -> Grid:
    """Validate a ``(t, h, w)`` grid and return it as a tuple of ints."""
    if len(grid) != 3 or any(int(n) != n or n < 1 for n in grid):
        raise ValueError(f"grid must be three positive integers (t, h, w), got {tuple(grid)!r}")
    return int(grid[0]), int(grid[1]), int(grid[2])


class ScanOrder:
    """A permutation of the canonical ``(t, h, w)`` token order.

    Subclasses implement :meth:`order`; :meth:`permutation` and :meth:`inverse` cache the
    result per grid and device, so a mixer pays for index building once per shape.
    """

    name: str = ""

    def order(self, t: int, h: int, w: int) -> torch.Tensor:
        """Return the LongTensor ``perm`` (CPU, length ``t*h*w``): position i scans token perm[i]."""
        raise NotImplementedError

    def is_identity(self, t: int, h: int, w: int) -> bool | None:
        """Whether the scan keeps the canonical order on this grid, if known without building it.

        ``None`` (the default) means unknown: mixers then compare the built permutation. Override
        it where the answer follows from the shape (as :class:`AxisScan` does), so that a compiled
        model needs no data-dependent check.
        """
        return None

    def permutation(self, t: int, h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
        return _index(self, check_grid((t, h, w)), torch.device(device or "cpu"), inverse=False)

    def inverse(self, t: int, h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
        return _index(self, check_grid((t, h, w)), torch.device(device or "cpu"), inverse=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # Scan orders are stateless values: equal when of the same type, so caches can share them.
    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


def _index(scan: ScanOrder, grid: Grid, device: torch.device, inverse: bool) -> torch.Tensor:
    # Under torch.compile the index is built inside the graph (a few index ops) instead of read
    # from the cache: Dynamo cannot use an lru_cache and would trace through it with a warning.
    if torch.compiler.is_compiling():
        return _build(scan, grid, device, inverse)
    return _cached(scan, grid, device, inverse)


@functools.lru_cache(maxsize=256)
def _cached(scan: ScanOrder, grid: Grid, device: torch.device, inverse: bool) -> torch.Tensor:
    # Cached tensors outlive the call: never let them be inference tensors (Lightning validates
    # under inference_mode, and a later training step must be able to save them for backward).
    with torch.inference_mode(False):
        return _build(scan, grid, device, inverse)


def _build(scan: ScanOrder, grid: Grid, device: torch.device, inverse: bool) -> torch.Tensor:
    perm = scan.order(*grid).to(torch.long)
    n = grid[0] * grid[1] * grid[2]
    if perm.shape != (n,):
        raise ValueError(f"{scan!r}.order{grid} is not a permutation of {n} tokens")
    # Under torch.compile (see _index) the order is built in the graph, without this data-dependent
    # check, which would split the graph; eager calls always check.
    if not torch.compiler.is_compiling() and not torch.equal(torch.sort(perm).values, torch.arange(n)):
        raise ValueError(f"{scan!r}.order{grid} is not a permutation of {n} tokens")
    if inverse:
        perm = torch.argsort(perm)
    return perm.to(device)


class AxisScan(ScanOrder):
    """Raster scan sorted by ``axes``: the first axis varies slowest, the last fastest."""

    axes: tuple[str, str, str] = _AXES

    def order(self, t: int, h: int, w: int) -> torch.Tensor:
        index_thw = torch.arange(t * h * w).reshape(t, h, w)
        return index_thw.permute(*(_AXES.index(a) for a in self.axes)).reshape(-1)

    def is_identity(self, t: int, h: int, w: int) -> bool:
        # axes of length 1 do not matter; the others must keep the canonical (t, h, w) order
        sizes = dict(zip(_AXES, (t, h, w)))
        return [a for a in self.axes if sizes[a] != 1] == [a for a in _AXES if sizes[a] != 1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(axes={''.join(self.axes)})"


class HorizontalScan(AxisScan):
    """``h`` / ``ht``: frame by frame, row by row (the canonical order)."""

    axes = ("t", "h", "w")


class VerticalScan(AxisScan):
    """``v`` / ``vt``: frame by frame, column by column."""

    axes = ("t", "w", "h")


class TemporalHorizontalScan(AxisScan):
    """``th``: time fastest, then along rows (HTH sec. 3.3, temporal-major)."""

    axes = ("h", "w", "t")


class TemporalVerticalScan(AxisScan):
    """``tv``: time fastest, then along columns (HTH sec. 3.3, temporal-major)."""

    axes = ("w", "h", "t")
