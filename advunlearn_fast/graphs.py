"""CUDA graphs: a step whose input shapes never change, recorded once and replayed.

On a GPU the fast engine's attack step (the encoder and the UNet at batch 1, forward and back)
was bound by the host: on an H200 each step took ~100 ms where its arithmetic takes a few tens,
because Python and thousands of small kernel launches could not keep the GPU busy. A CUDA graph
records the step's kernels once; each later step is a few copies into the recorded input
buffers and one replay.

A replay reads its inputs from the addresses it was recorded with and writes its outputs to
theirs, so `GraphedStep` copies every call's inputs into those buffers and returns copies of
the outputs (the next replay overwrites them). The model's weights are read in place too: an
optimiser that updates them in place (torch and bitsandbytes Adam do) is seen by later replays.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

Step = Callable[..., tuple[torch.Tensor, ...]]


class CudaRecorder:
    """Records with torch.cuda.graph after warm-up runs on a side stream (lazy initialisation,
    Triton compilation and cuDNN/cuBLAS set-up must happen before recording)."""

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self.pool = torch.cuda.graph_pool_handle()  # shared by every graph: they never run at once

    def capture(self, run: Callable[[], tuple[torch.Tensor, ...]]):
        """(outputs of an eager run, the recorded outputs, replay)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                eager = tuple(o.clone() for o in run())
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            recorded = run()
        return eager, recorded, graph.replay


def _close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    # bf16 kernels and atomics may round differently from one run to the next; a replay that read
    # stale buffers or skipped work is off by far more than this.
    scale = expected.float().norm().item() + 1e-12
    return (got.float() - expected.float()).norm().item() <= 1e-2 * scale


class GraphedStep:
    """`step(*inputs) -> tuple of tensors`, replayed as one CUDA graph per input signature.

    The first call with a signature (shapes, dtypes) records it and checks that the replay
    gives what an eager run gave. If recording fails or the check does not hold, the step
    runs eagerly from then on and `failure` says why.
    """

    def __init__(self, step: Step, recorder=None):
        self.step = step
        self.recorder = recorder if recorder is not None else CudaRecorder()
        self.graphs: dict = {}  # signature -> (input buffers, recorded outputs, replay)
        self.failure: str | None = None

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.failure is not None:
            return self.step(*inputs)
        signature = tuple((tuple(x.shape), x.dtype, x.device) for x in inputs)
        if signature not in self.graphs:
            try:
                self.graphs[signature] = self._record(inputs)
            except Exception as err:  # any failure to record leaves a correct, slower step
                self.failure = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                self.graphs.clear()
                warnings.warn(f"CUDA graph recording failed, so the step runs eagerly (slower): {self.failure}")
                return self.step(*inputs)
        buffers, outputs, replay = self.graphs[signature]
        for buffer, x in zip(buffers, inputs):
            buffer.copy_(x)
        replay()
        return tuple(o.clone() for o in outputs)

    def _record(self, inputs: Sequence[torch.Tensor]):
        buffers = [x.detach().clone() for x in inputs]
        eager, recorded, replay = self.recorder.capture(lambda: self.step(*buffers))
        replay()
        for got, expected in zip(recorded, eager):
            if not _close(got, expected):
                raise RuntimeError("the recorded step's outputs differ from the eager step's")
        return buffers, recorded, replay

    def describe(self) -> str:
        if self.failure is not None:
            return f"eager (CUDA graph failed: {self.failure})"
        return "cuda-graph" if self.graphs else "cuda-graph (not recorded yet)"
