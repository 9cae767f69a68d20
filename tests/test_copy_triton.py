"""The row-strided Triton copy (kernels/copy.py) against ``Tensor.copy_``: bit for bit."""

from __future__ import annotations

import textwrap

import pytest
import torch
from conftest import run_interpreted

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CHECK = textwrap.dedent(
    """
    import torch
    from hthlight.kernels.copy import copy_rows_

    g = torch.Generator().manual_seed(0)
    # (B, L, C) into a channel slice of a wider buffer; ragged tiles along rows and channels.
    for batch, rows, cols, dtype in [(1, 37, 300, torch.float32), (3, 5, 17, torch.bfloat16)]:
        src = torch.randn(batch, rows, cols, generator=g).to(dtype)
        wide = torch.full((batch, rows, cols + 11), 7.0, dtype=dtype)
        copy_rows_(wide[..., 4 : 4 + cols], src)
        want = torch.full_like(wide, 7.0)
        want[..., 4 : 4 + cols].copy_(src)
        print(batch, rows, cols, torch.equal(wide, want))
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU test below runs the compiled kernel")
def test_copy_rows_matches_copy_in_interpreter():
    """Equal to ``copy_`` bit for bit and the rest of the buffer untouched, float32 and bfloat16."""
    lines = run_interpreted(CHECK).strip().splitlines()
    assert lines == ["1 37 300 True", "3 5 17 True"], lines


def test_copy_rows_refuses_what_it_cannot_copy():
    pytest.importorskip("triton")
    from hthlight.kernels.copy import copy_rows_

    with pytest.raises(ValueError, match=r"dst is \(2, 3\) torch.float32, src is \(2, 4\) torch.float32"):
        copy_rows_(torch.empty(2, 3), torch.empty(2, 4))
    with pytest.raises(ValueError, match="shape and dtype must match"):
        copy_rows_(torch.empty(2, 3), torch.empty(2, 3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="contiguous in their last dimension"):
        copy_rows_(torch.empty(3, 2), torch.empty(2, 3).t())
    with pytest.raises(ValueError, match="flatten to one row index"):
        copy_rows_(torch.empty(2, 3, 4)[:, :2], torch.empty(2, 2, 4))


@pytest.mark.gpu
@cuda
def test_copy_rows_matches_copy_gpu():
    """Hydra's dz slice at HTH-5B width (16,384 x 6,144 bfloat16 into a 12,896-wide buffer)."""
    from hthlight.kernels.copy import copy_rows_

    src = torch.randn(1, 16384, 6144, device="cuda", dtype=torch.bfloat16)
    wide = torch.zeros(1, 16384, 12896, device="cuda", dtype=torch.bfloat16)
    copy_rows_(wide[..., :6144], src)
    assert torch.equal(wide[..., :6144], src) and not wide[..., 6144:].any()
