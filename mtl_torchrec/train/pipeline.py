"""TorchRec's train pipeline as the trainer drives it: one per epoch, paused for work outside a step.

``train.pipeline=sparse_dist`` is TorchRec's ``TrainPipelineSparseDist`` (the next batch's input
all-to-all overlaps the current step); anything else ``TrainPipelineBase``. A sparse-dist pipeline
has batches in flight, so work outside a training step (evaluation, checkpoints, diagnostics) runs
inside :meth:`PipelineDriver.paused`, which detaches it and stops the training clock; attaching
again restarts the in-flight batch's input distribution.

Example::

    driver = PipelineDriver(dmp, optimizer, ctx.device, cfg.train.pipeline)
    driver.start()
    out = driver.progress(batches)
    with driver.paused():
        save_run_checkpoint(...)
    driver.end()
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineBase, TrainPipelineSparseDist


class PipelineDriver:
    """Creates, pauses and ends the trainer's TorchRec train pipeline, and times the training steps.

    Args:
        model: the sharded train module (DMP).
        optimizer: its combined optimizer (stepped by the pipeline).
        device: where batches go.
        kind: ``train.pipeline`` (``sparse_dist`` or ``base``).

    ``seconds`` counts the time between :meth:`start_clock` and :meth:`stop_clock` (training steps
    only; :meth:`paused` stops the clock).
    """

    def __init__(self, model: nn.Module, optimizer: Any, device: torch.device, kind: str) -> None:
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.kind = kind
        self.pipeline: Optional[Any] = None
        self.attached = False
        self.seconds = 0.0
        self._clock: Optional[float] = None

    @property
    def running(self) -> bool:
        """Whether a pipeline exists (between :meth:`start` and :meth:`end`)."""
        return self.pipeline is not None

    def start(self) -> None:
        """A fresh pipeline (attached to the model); any previous one must have been ended."""
        if self.kind == "sparse_dist":
            self.pipeline = TrainPipelineSparseDist(self.model, self.optimizer, self.device, execute_all_batches=True)
        else:
            self.pipeline = TrainPipelineBase(self.model, self.optimizer, self.device)
        self.attached = True

    def progress(self, batches: Iterator[Any]) -> Any:
        """One training step through the pipeline; StopIteration once ``batches`` are used up."""
        assert self.pipeline is not None, "PipelineDriver.progress before start()"
        return self.pipeline.progress(batches)

    def end(self) -> None:
        """Detaches the pipeline (its batches fetched ahead are dropped) and forgets it."""
        if self.attached and isinstance(self.pipeline, TrainPipelineSparseDist):
            self.pipeline.detach()
        self.pipeline, self.attached = None, False

    def start_clock(self) -> None:
        """Starts timing training steps."""
        self._clock = time.perf_counter()

    def stop_clock(self) -> None:
        """Adds the time since :meth:`start_clock` to ``seconds`` (nothing when not timing)."""
        if self._clock is not None:
            self.seconds += time.perf_counter() - self._clock
            self._clock = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Detaches the pipeline and stops the training clock for work outside a training step."""
        self.stop_clock()
        detach = self.attached and isinstance(self.pipeline, TrainPipelineSparseDist)
        if detach:
            self.pipeline.detach()
            self.attached = False
        try:
            yield
        finally:
            if detach:
                self.pipeline.attach(self.model)
                # attach() restarts the in-flight batch's input dist (its splits all-to-all) but, unlike
                # the pipeline's own fill, does not run the second part; without it a sharded
                # EmbeddingCollection (behaviour sequences) on several ranks reads stale lengths and its
                # all-to-all sizes disagree across ranks (a gloo "in->size == out->size" crash).
                if self.pipeline.contexts:
                    self.pipeline.wait_sparse_data_dist(self.pipeline.contexts[0])
                self.attached = True
            if self.pipeline is not None:
                self.start_clock()
