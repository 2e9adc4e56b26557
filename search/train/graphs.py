"""The training step and the evaluation pass as CUDA graphs (``graphs: auto | on | off``; docs/graphs.md).

Why: on a GPU a small CNN's step is bound by the host launching its ~140 kernels one by one (bench/step_profile.py:
the card busy 7% of a batch-128 step); a captured graph is replayed with one launch. The trainer's own step is
captured whole, so a graphed step computes what the eager one does:

- captured (``TrainGraph``): the batch's index row (the epoch's shuffled order sits in a static buffer, one row per
  step), the gather of the uint8 batch, augmentation (the trainer's generator is registered with the graph, so each
  replay draws new numbers from it), normalisation, forward, loss, backward, the fused optimizer's step with the
  learning rate a device tensor, that learning rate computed from a device step counter (`schedule_lr`: the values
  of the torch schedulers the eager path steps), and the training loss summed on the device. Dropout draws from
  torch's default CUDA generator, which every capture registers.
- not captured: the epoch's shuffle (one randperm an epoch), `interrupt.check()` between replays, the host's
  scheduler bookkeeping (a few microseconds of Python a step, no launch: checkpoints and the ``lr`` figure stay
  those of an eager run), the metrics.
- the evaluation pass (``EvalGraph``): one forward at a static batch shape; the last batch of a split is padded
  to it (`padded_batches`) and the padding's rows are cut from the logits before any metric sees them.
- eager, with one note in the log when ``graphs: on`` asked for capture: the CPU (no graphs), fp16 (its gradient
  scaler reads the scale on the host), ``compile: true`` (torch.compile captures graphs its own way) and onecycle
  with sgd (the momentum cycles every step as a Python float).

A capture that fails (an operation that cannot be captured, memory) falls back to eager for the rest of that run
with one line in the trial's log; the run goes on, never a failed trial. ``auto`` is off on every device until
bench/gpu_proof.py has measured eager against graphed on a GPU (`pays`).
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Iterator

import torch

log = logging.getLogger("search")

WARMUP = 3  # eager steps before the capture: cuDNN's algorithm search, the optimizer's state, lazy constants


def pays(cfg: Any, device: torch.device) -> bool:
    """Where ``graphs: auto`` captures: nowhere yet. The CPU has no graphs; on CUDA, eager stays until
    bench/gpu_proof.py's graphs section has measured per architecture where capture pays (docs/graphs.md)."""
    return False


def why_eager(cfg: Any, device: torch.device, amp_dtype: torch.dtype | None, compiled: bool) -> str | None:
    """Why this run cannot be captured, or None if it can."""
    if device.type != "cuda":
        return f"graphs need a CUDA GPU; on {device} this run trains eagerly"
    if amp_dtype == torch.float16:
        return "fp16 trains eagerly: its gradient scaler reads the scale on the host (bf16 needs none)"
    if compiled:
        return "compile: true trains without graphs of ours (torch.compile captures its own)"
    if cfg.schedule == "onecycle" and cfg.optimizer == "sgd":
        return "onecycle with sgd trains eagerly: it changes the momentum every step, a number the graph cannot hold"
    return None


def wanted(cfg: Any, device: torch.device, amp_dtype: torch.dtype | None, compiled: bool) -> tuple[bool, str | None]:
    """(capture?, the note for the log): ``on`` notes why it cannot capture; ``auto`` decides silently."""
    if cfg.graphs == "off":
        return False, None
    why = why_eager(cfg, device, amp_dtype, compiled)
    if cfg.graphs == "auto":
        return why is None and pays(cfg, device), None
    return why is None, (f"graphs: on: {why}" if why else None)


def schedule_lr(cfg: Any, steps_per_epoch: int, step: torch.Tensor) -> torch.Tensor:
    """The learning rate after ``step`` scheduler steps (a float64 tensor), as a tensor computation on ``step``'s
    device with no host synchronisation: the values of the LambdaLR / OneCycleLR of engine._scheduler, with the
    same operations in the same order (tests/test_graphs.py compares them step by step)."""
    total = cfg.epochs * steps_per_epoch
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":  # torch's defaults: div_factor 25, final_div_factor 1e4, cosine annealing
        pct = warm / total if warm else 0.3
        initial, peak = cfg.lr / 25.0, cfg.lr
        low = initial / 1e4
        end1, end2 = float(pct * total) - 1, total - 1
        rising = step <= end1
        frac = torch.where(rising, step / end1, (step - end1) / (end2 - end1))
        up = rising.to(step.dtype)  # 1 or 0: each product below is exact, so start and end are the very floats
        start, end = initial * up + peak * (1 - up), peak * up + low * (1 - up)
        return end + (start - end) / 2.0 * (torch.cos(math.pi * frac) + 1)
    factor = torch.ones_like(step)
    if cfg.schedule == "cosine":
        factor = 0.5 * (1 + torch.cos(math.pi * (step - warm) / max(1, total - warm)))
    if warm:
        factor = torch.where(step < warm, (step + 1) / warm, factor)
    return cfg.lr * factor


def padded_batches(images: torch.Tensor, batch: int, *, pad: bool) -> Iterator[tuple[torch.Tensor, int]]:
    """(batch, real rows) over ``images`` in order; with ``pad`` the last batch is filled with zero images to
    ``batch`` rows, a static shape for a graph. The caller keeps the first ``real rows`` of each output: the
    padding never reaches a metric."""
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        n = len(chunk)
        if pad and n < batch:
            chunk = torch.cat([chunk, chunk.new_zeros((batch - n, *chunk.shape[1:]))])
        yield chunk, n


def side_stream(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Warm-up and capture run on one side stream (as PyTorch's graph recipe asks); nothing on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext(None)
    return _cuda_side_stream(device)


@contextlib.contextmanager
def _cuda_side_stream(device: torch.device) -> Iterator[torch.cuda.Stream]:
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    try:
        with torch.cuda.stream(stream):
            yield stream
    finally:
        torch.cuda.current_stream(device).wait_stream(stream)


@contextlib.contextmanager
def _device_lr(optimizer: torch.optim.Optimizer, lr: torch.Tensor) -> Iterator[None]:
    """While the step is captured (or run uncaptured): the optimizer reads its learning rate from ``lr``, a device
    tensor the graph keeps pointing at, and Adam is capturable; afterwards its groups hold floats again, as an eager
    run's do (checkpoints, the `lr` figure)."""
    saved = [(g["lr"], g.get("capturable")) for g in optimizer.param_groups]
    try:
        for g in optimizer.param_groups:
            g["lr"] = lr
            if "capturable" in g and lr.is_cuda:  # Adam, AdamW: their capture check asks for it (CUDA only)
                g["capturable"] = True
        yield
    finally:
        for g, (value, capturable) in zip(optimizer.param_groups, saved):
            g["lr"] = value
            if capturable is not None:
                g["capturable"] = capturable


def _autocast(trainer: Any) -> torch.autocast:
    """The trainer's autocast without its weight-cast cache, as PyTorch asks of captured regions: the casts are
    recorded in the graph and redone from the current weights at each replay (the same numbers as cached)."""
    dtype = trainer.amp_dtype
    return torch.autocast(trainer.device.type, dtype=dtype or torch.float32, enabled=dtype is not None,
                          cache_enabled=False)


class TrainGraph:
    """The trainer's training step with static buffers; `capture` records it as a CUDA graph once, `start` loads an
    epoch's order, `replay` trains one batch. Not captured (the CPU tests), `replay` runs the same step eagerly."""

    def __init__(self, trainer: Any) -> None:
        t, dev = trainer, trainer.device
        self.trainer = t
        self.rows = torch.zeros(t.steps_per_epoch, t.cfg.batch_size, dtype=torch.long, device=dev)
        self.row = torch.zeros(1, dtype=torch.long, device=dev)  # which row of `rows` the next replay trains
        self.count = torch.zeros((), dtype=torch.float64, device=dev)  # scheduler steps so far
        # float32 for the fused CUDA kernels (eager passes them the float too); float64 elsewhere, where it is a
        # Python float's exact twin and the step run uncaptured trains the eager run's very weights (the CPU tests)
        self.lr = torch.zeros((), dtype=torch.float32 if dev.type == "cuda" else torch.float64, device=dev)
        self.loss_sum = torch.zeros((), device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None

    def capture(self, stream: torch.cuda.Stream) -> "TrainGraph":
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.trainer.generator)  # shuffling's and augmentation's, graph-safe
        with _device_lr(self.trainer.optimizer, self.lr), torch.cuda.graph(graph, stream=stream):
            self._body()
        self.graph = graph
        return self

    def _body(self) -> None:
        t = self.trainer
        # Captured, this drops the gradients once: the capture's backward then allocates them in the graph's pool,
        # and every replay writes them afresh there (PyTorch's whole-network recipe).
        t.optimizer.zero_grad(set_to_none=True)
        self.lr.copy_(schedule_lr(t.cfg, t.steps_per_epoch, self.count))
        idx = self.rows.index_select(0, self.row).view(-1)
        train = t.data.train
        x = t.inputs(train.images[idx], train=True)
        with _autocast(t):
            loss = t.loss_fn(t.model(x), train.labels[idx])
        loss.backward()
        t.optimizer.step()
        self.loss_sum.add_(loss.detach())
        self.row.add_(1)
        self.count.add_(1)

    def start(self, order: torch.Tensor, first: int) -> None:
        """Load an epoch's shuffled order; the replays train its rows from ``first`` on."""
        t = self.trainer
        self.rows.copy_(order[:self.rows.numel()].view_as(self.rows))
        self.row.fill_(first)
        self.count.fill_(t.scheduler.last_epoch)
        self.loss_sum.zero_()

    def replay(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            with _device_lr(self.trainer.optimizer, self.lr):
                self._body()
        self.trainer.scheduler.step()  # host bookkeeping only: the groups hold a float, nothing is launched


class EvalGraph:
    """The evaluation forward at a static batch shape: `__call__(batch)` -> logits (float32) of every row."""

    def __init__(self, trainer: Any, batch: int) -> None:
        self.trainer = trainer
        self.images = torch.zeros((batch, *trainer.data.val.images.shape[1:]), dtype=torch.uint8,
                                  device=trainer.device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def _forward(self) -> torch.Tensor:
        t = self.trainer
        with _autocast(t):
            return t.model(t.inputs(self.images, train=False)).float()

    def capture(self, stream: torch.cuda.Stream) -> "EvalGraph":
        self._forward()  # warm-up on the side stream: cuDNN's choice for this shape
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self.logits = self._forward()
        self.graph = graph
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.images.copy_(images)
        if self.graph is None:  # not captured (the CPU tests): the same static-shape forward, eagerly
            return self._forward()
        self.graph.replay()
        return self.logits.clone()


def capture_train(trainer: Any, stream: Any) -> TrainGraph:
    """The trainer's training step as a captured graph (CUDA; tests on the CPU replace this function)."""
    return TrainGraph(trainer).capture(stream)


def capture_eval(trainer: Any, batch: int, stream: Any) -> EvalGraph:
    return EvalGraph(trainer, batch).capture(stream)


def attempt(what: str, device: torch.device, capture: Callable[[], Any]) -> Any:
    """``capture()``, or None after one line in the log if it fails: the run goes on eagerly, never fails."""
    try:
        return capture()
    except Exception as err:  # an operation that cannot be captured, out of memory, an older torch
        first = (str(err).strip().splitlines() or [""])[0][:200]
        log.warning("graphs: the %s could not be captured as a CUDA graph (%s%s); this run goes on eagerly",
                    what, type(err).__name__, f": {first}" if first else "")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()  # the failed capture's private memory pool
        return None
