"""CUDA graphs: a step whose input shapes never change, recorded once and replayed.

The fast engine's attack step (the encoder and the UNet at batch 1, forward and back) is
thousands of small kernels queued one by one from Python, so on a fast GPU the host's launches,
not the GPU's work, set its pace; a replayed recording queues them all at once (measured in
benchmarks/README.md).

A replay reads its inputs from the addresses it was recorded with and writes its outputs to
theirs, so `GraphedStep` copies every call's inputs into those buffers and returns copies of
the outputs. The model's weights are read in place too: an optimiser that updates them in
place (torch and bitsandbytes Adam do; tests/test_graphs.py checks) is seen by later replays.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from advunlearn_fast.errors import UserError

Step = Callable[..., tuple[torch.Tensor, ...]]


class CudaRecorder:
    """Records with torch.cuda.graph after warm-up runs on a side stream (lazy initialisation,
    Triton compilation and cuBLAS/cuDNN set-up must happen before recording)."""

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        # One memory pool for every graph (one per concept). Graphs replay in any order, so one
        # graph's replay may overwrite another's outputs: safe only because GraphedStep copies
        # the outputs out right after each replay.
        self.pool = torch.cuda.graph_pool_handle()

    def capture(self, run: Callable[[], tuple[torch.Tensor, ...]]):
        """(the recorded outputs, replay)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        capturing = torch.cuda.Stream()
        # Our own stream context: torch.cuda.graph does not restore the caller's stream when
        # ending a failed capture raises.
        with torch.cuda.stream(capturing):
            with torch.cuda.graph(graph, pool=self.pool, stream=capturing):
                recorded = run()
        return recorded, graph.replay


def _close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    # bf16 kernels and atomics may round differently from one run to the next; a replay that read
    # stale inputs or skipped work is off by far more than this.
    scale = expected.float().norm().item() + 1e-12
    return (got.float() - expected.float()).norm().item() <= 1e-2 * scale


class GraphedStep:
    """`step(*inputs) -> tuple of tensors`, replayed as one CUDA graph per input signature.

    The first call with a signature (shapes, dtypes, devices) records it; the second is also
    run eagerly and must agree, with other inputs than the recording's, so that a value frozen
    into the recording (say a timestep read as a Python number) is caught. If it does not
    agree the step runs eagerly from then on, with a warning, and `failure` says why. A failure
    while recording stops the run: after a failed capture PyTorch's allocator may be left
    capturing, and nothing run on that GPU afterwards can be trusted.
    """

    def __init__(self, step: Step, recorder):
        self.step = step
        self.recorder = recorder
        self.graphs: dict = {}  # signature -> (input buffers, recorded outputs, replay)
        self.checked: set = set()
        self.failure: str | None = None

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.failure is not None:
            return self.step(*inputs)
        signature = tuple((tuple(x.shape), x.dtype, x.device) for x in inputs)
        first = signature not in self.graphs
        if first:
            self.graphs[signature] = self._record(inputs)
        buffers, recorded, replay = self.graphs[signature]
        for buffer, x in zip(buffers, inputs):
            buffer.copy_(x)
        replay()
        outputs = tuple(o.clone() for o in recorded)
        if not first and signature not in self.checked:
            self.checked.add(signature)
            eager = self.step(*inputs)
            if not all(_close(got, expected) for got, expected in zip(outputs, eager)):
                self.failure = "its replay differs from the eager step on new inputs"
                self.graphs.clear()
                warnings.warn(f"CUDA graph of the step not used, it runs eagerly (slower): {self.failure}")
                return eager
        return outputs

    def _record(self, inputs: tuple[torch.Tensor, ...]):
        buffers = [x.detach().clone() for x in inputs]
        try:
            recorded, replay = self.recorder.capture(lambda: self.step(*buffers))
        except Exception as err:
            cause = err.__context__ or err  # ending a failed capture raises over the real cause
            first_line = str(cause).splitlines()[0] if str(cause) else ""
            raise UserError(
                f"recording the attack step as a CUDA graph failed ({type(cause).__name__}: {first_line}); "
                "rerun with --no-cuda-graphs (with --resume to continue from the last checkpoint)"
            ) from err
        return buffers, recorded, replay

    def describe(self) -> str:
        if self.failure is not None:
            return f"eager (CUDA graph not used: {self.failure})"
        return "cuda-graph" if self.graphs else "cuda-graph (not recorded yet)"
