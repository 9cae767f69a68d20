"""Replay a denoiser call as a CUDA graph during sampling (launch overhead off the critical path).

A sampler calls the denoiser N times with tensors of one shape. At small token counts the GPU
then waits on the host: an HTH block issues a few dozen kernels, each costing microseconds of
Python and launch time. :class:`CUDAGraphed` records the call once per input signature with
``torch.cuda.graph`` (after warm-up runs on a side stream, which also compile the Triton
kernels) and replays the recording on later calls: the inputs are copied into the recorded
input buffers, the graph runs, the output is copied out.

Requirements of the wrapped function, as for any CUDA graph: all arguments are tensors, the
computation does not depend on their values through the host (no ``.item()``, no shape that
depends on data), and every other tensor it reads (weights, conditions) stays alive and
unchanged while the wrapper is used. A function that cannot be captured (it synchronises, or
copies from host memory) falls back to eager calls with a warning, once; synchronisations are
caught in a rehearsal after the warm-up (under ``torch.cuda.set_sync_debug_mode("error")``),
before any capture starts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

TensorFn = Callable[..., torch.Tensor]


class CUDAGraphed:
    """``fn(*tensors) -> tensor`` replayed from a CUDA graph per (shape, dtype, device) of its inputs.

    Calls with CPU tensors (or with CUDA graphs disabled) run ``fn`` directly. ``warmup`` eager
    runs precede each capture.
    """

    def __init__(self, fn: TensorFn, warmup: int = 2) -> None:
        self.fn = fn
        self.warmup = warmup
        self.captures = 0  # graphs recorded (one per input signature)
        self._graphs: dict[tuple, tuple[list[torch.Tensor], torch.Tensor, torch.cuda.CUDAGraph]] = {}
        self._pool = None
        self._eager = False

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self._eager or not args or not all(isinstance(a, torch.Tensor) and a.is_cuda for a in args):
            return self.fn(*args)
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(args)
            if entry is None:
                return self.fn(*args)
            self._graphs[key] = entry
        inputs, output, graph = entry
        for buffer, arg in zip(inputs, args):
            buffer.copy_(arg)
        graph.replay()
        return output.clone()

    def _capture(self, args: tuple[torch.Tensor, ...]):
        inputs = [a.clone() for a in args]
        side = torch.cuda.Stream(device=inputs[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # also fills caches (e.g. index tables copied to the device)
                self.fn(*inputs)
        # A host synchronisation would make the capture fail half-way, which leaves the CUDA random
        # generator in capture mode (every later random op on the device then fails): rehearse the
        # call once more with the sync debug mode turning any synchronisation into an error.
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.cuda.stream(side):
                self.fn(*inputs)
        except RuntimeError as exc:
            return self._give_up(exc)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                output = self.fn(*inputs)
        except RuntimeError as exc:  # e.g. a copy from pageable host memory inside fn
            return self._give_up(exc)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"a CUDA-graphed function must return one tensor, got {type(output).__name__}")
        self.captures += 1
        return inputs, output, graph

    def _give_up(self, exc: RuntimeError) -> None:
        warnings.warn(f"CUDA graph capture failed, sampling without graphs: {exc}", stacklevel=4)
        self._eager = True
        return None
