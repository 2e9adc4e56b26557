"""Trial packs: K runs of one architecture trained as one fused model on one device, each exactly as if alone.

A pack is K TrainConfigs that agree on :data:`PACK_KEYS` (what one fused model and one loop over the data cannot
vary: the data and its image size, the architecture, the batch size, the number of epochs, the optimizer family,
the precision, the device) and differ in anything else: learning rate and its schedule, weight decay, momentum,
dropout, label smoothing, augmentation, seed, the validation metric.

Each member is a real engine.Trainer: it builds its own model from its own seed (the initialisation of its lone
run), has its own optimizer, learning-rate schedule and generator for shuffling and augmentation, and its own
FitResult and checkpoint in the format of search/train/checkpoint.py, so that a member resumes alone (engine.fit) or
in a pack alike. What is fused is the model: search/train/fuse.py runs the members' models as one (grouped
convolutions, one batch norm, batched matmuls; on the CPU, where that only costs time, their own models side by
side on the same fused layout); each member draws its batches and augments them itself, and the
pack's loss is the sum of the members' losses, whose parameters are disjoint, so each member's gradients are those
of its lone run. After every epoch each member hears of its own metrics (the keys engine.fit gives); one whose
`on_epoch` returns True, or whose loss is not finite, leaves, and the pack is fused anew without it: the compute is
saved, not masked.

The epochs themselves (records, divergence, keep-best, checkpoints, verdicts) are the one loop's
(search/train/loop.py): Pack is one of its groups.

Exactness: on the CPU a member's shuffles, augmentations and dropout masks are those of its lone run draw for draw,
and so is its arithmetic, but for the order in which a fused kernel sums (oneDNN's choice, by CPU): in float64 a
pack and its lone runs agree within 1e-9 on any CPU (tests/test_pack.py). On CUDA runs agree within a tolerance
anyway (cuDNN's algorithm choice); a pack's dropout masks and batched losses there are the same distributions and
formulas, not the same numbers.
"""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

import torch

from models import ModelError, build_model
from search import interrupt
from search.devices import on_cuda
from search.errors import SearchError
from search.train import loop
from search.train.config import TrainConfig
from search.train.data import Data, OwnOptions, Split, get_info, load
from search.train.engine import FitResult, OnEpoch, Trainer, resolve_device
from search.train.fuse import Sliced, fuse, fused_size, global_rng, unfusable, unfuse
from search.train.loop import Member, Trained, epoch_line
from search.train.scoring import EVAL_BATCH, normalise, probabilities, scaled

#: The TrainConfig fields that must agree for runs to share a pack. Everything else may differ per member.
PACK_KEYS = ("dataset", "data_dir", "size", "architecture", "pretrained", "batch_size", "epochs", "optimizer",
             "precision", "compile", "device", "mix", "val_fraction", "test_fraction", "split_seed", "skip_bad_images")


def pack_key(cfg: TrainConfig) -> tuple[tuple[str, Any], ...]:
    """What must agree for runs to train in one pack: ((field, value), ...) over PACK_KEYS."""
    return tuple((key, getattr(cfg, key)) for key in PACK_KEYS)


def unsupported(cfg: TrainConfig) -> str | None:
    """None when ``cfg``'s model fuses into a pack; else why not, in one line (such a run trains alone)."""
    if cfg.mix != "none":
        return f"mix {cfg.mix} does not fuse into a pack yet (a pack's loss is not mixed)"
    if cfg.pretrained:
        return (f"pretrained {cfg.architecture} does not fuse into a pack yet (its ImageNet input stage widens grey "
                f"images to 3 channels inside the model)")
    if cfg.compile and on_cuda(cfg.device):
        # (on the CPU a lone run ignores compile: true too)
        return "compile: true does not fuse into a pack yet (the fused model runs uncompiled)"
    info = get_info(cfg.dataset)
    reason = _unfusable(cfg.architecture, info.channels, info.num_classes, cfg.size)
    return None if reason is None else f"{cfg.architecture} does not fuse into a pack yet: its {reason}"


@functools.lru_cache(maxsize=None)
def _unfusable(architecture: str, channels: int, classes: int, size: int) -> str | None:
    # Built on the meta device: no memory, no time, and torch's global generator is left as it was.
    try:
        with torch.device("meta"):
            model = build_model(architecture, in_channels=channels, num_classes=classes, size=size)
    except ModelError as err:
        return f"model cannot be built ({err})"
    return unfusable(model)


def fit_pack(cfgs: list[TrainConfig], *, on_epoch: list[OnEpoch | None], checkpoints: list[Path | None] | None = None,
             resumes: list[dict[str, Any] | None] | None = None, progress: bool = False,
             fused: bool | None = None) -> list[FitResult]:
    """Train ``cfgs`` (one pack_key) as one fused model; returns each member's FitResult, as engine.fit would.

    ``on_epoch[i]``, ``checkpoints[i]`` and ``resumes[i]`` are member i's, with engine.fit's meaning. Members resumed
    together must have been saved after the same epoch (fresh members: none saved). ``fused``: fused layers
    (search/train/fuse.py) or the members' own models side by side (fuse.Sliced); None: fused on CUDA, side by side
    on the CPU, where fusing only slows a pack down.
    """
    return loop.run(Pack(cfgs, on_epoch=on_epoch, checkpoints=checkpoints, resumes=resumes, progress=progress,
                         fused=fused))


def _check(cfgs: list[TrainConfig], on_epoch: list[Any], checkpoints: list[Any], resumes: list[Any]) -> None:
    if not cfgs:
        raise SearchError("a pack needs at least one member; got none")
    if not len(on_epoch) == len(checkpoints) == len(resumes) == len(cfgs):
        raise SearchError(f"a pack of {len(cfgs)} needs as many on_epoch, checkpoints and resumes; got "
                          f"{len(on_epoch)}, {len(checkpoints)} and {len(resumes)}")
    first = pack_key(cfgs[0])
    for i, cfg in enumerate(cfgs[1:], start=2):
        for (key, want), (_, got) in zip(first, pack_key(cfg)):
            if got != want:
                raise SearchError(f"pack member {i} has {key} {got!r} but member 1 has {want!r}; the members of a "
                                  f"pack agree on {', '.join(PACK_KEYS)}")
    reason = unsupported(cfgs[0])
    if reason is not None:
        raise SearchError(reason)
    epochs = {state["epoch"] if state is not None else 0 for state in resumes}
    if len(epochs) > 1:
        raise SearchError(f"the members of a pack must resume after the same epoch; got epochs "
                          f"{', '.join(str(state['epoch'] if state is not None else 0) for state in resumes)} "
                          f"(0: a fresh member)")


def _member(cfg: TrainConfig, data: Data, device: torch.device, on_epoch: OnEpoch | None, checkpoint: Path | None,
            resume: dict[str, Any] | None) -> Member:
    trainer = Trainer(cfg, data, device)  # seeds torch's global generator and builds the model: its lone init
    dropout = torch.Generator(device=device)
    # The global generator right after the model's initialisation: where its lone run draws its first mask.
    dropout.set_state(global_rng(device))
    member = loop.member(trainer, on_epoch=on_epoch, checkpoint=checkpoint, resume=resume)
    member.dropout = dropout
    saved = None if resume is None else resume["cuda_rng"] if device.type == "cuda" else resume["cpu_rng"]
    if saved is not None:  # (a CPU run's checkpoint has no CUDA state: resumed on a GPU, it goes on from the seed's)
        dropout.set_state(saved)
    return member


def batched_loss(out: torch.Tensor, labels: torch.Tensor, smoothing: torch.Tensor, *, multi_label: bool
                 ) -> torch.Tensor:
    """The K members' mean losses, (K,), of logits ``out`` (N, K, C) and labels ``labels`` (K, N) (multi-label:
    (K, N, C)) with label smoothing ``smoothing`` (K,): what each member's nn.CrossEntropyLoss(label_smoothing) or
    smoothed BCEWithLogitsLoss gives, in a few kernels for all members."""
    out = out.float()
    if multi_label:
        smooth = smoothing.view(-1, 1, 1)
        target = labels * (1 - smooth) + 0.5 * smooth
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.transpose(0, 1), target, reduction="none")
        return bce.mean(dim=(1, 2))
    logp = torch.log_softmax(out, dim=-1).transpose(0, 1)  # (K, N, C)
    nll = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (K, N)
    uniform = -logp.mean(dim=-1)
    smooth = smoothing.view(-1, 1)
    return ((1 - smooth) * nll + smooth * uniform).mean(dim=1)


class Pack(loop.Group):
    """The members, the live ones and their fused model (fused anew whenever one leaves); the loop (search/train/
    loop.py) trains it epoch by epoch."""

    def __init__(self, cfgs: list[TrainConfig], *, on_epoch: list[OnEpoch | None],
                 checkpoints: list[Path | None] | None = None, resumes: list[dict[str, Any] | None] | None = None,
                 progress: bool = False, fused: bool | None = None) -> None:
        checkpoints = list(checkpoints) if checkpoints is not None else [None] * len(cfgs)
        resumes = list(resumes) if resumes is not None else [None] * len(cfgs)
        _check(cfgs, on_epoch, checkpoints, resumes)
        device = resolve_device(cfgs[0].device)
        self.data = data = load(cfgs[0].dataset, cfgs[0].data_dir, device, cfgs[0].size, OwnOptions.of(cfgs[0]))
        members = [_member(cfg, data, device, hook, path, state)
                   for cfg, hook, path, state in zip(cfgs, on_epoch, checkpoints, resumes)]
        self.lead = members[0].trainer  # what all members share: batch size, autocast, steps, memory format
        self.sliced = not (device.type == "cuda" if fused is None else fused)
        self.fused: torch.nn.Module | None = None
        self._fused_models: list[torch.nn.Module] = []
        self.trained: list[Member] = []  # the members of the epoch being trained (some may leave at its end)
        super().__init__(members, progress=progress)
        self._refuse()

    @property
    def size(self) -> int:
        """How many members the fused model runs now (0 once all have left)."""
        return 0 if self.fused is None else fused_size(self.fused)

    def _refuse(self) -> None:
        if self.fused is not None:
            unfuse(self._fused_models)
        self._fused_models = [m.trainer.model for m in self.live]
        generators = [m.dropout for m in self.live]
        if not self.live:
            self.fused = None
        elif self.sliced:
            self.fused = Sliced(self._fused_models, generators)
        else:
            self.fused = fuse(self._fused_models, generators)

    def leave(self, gone: list[Member]) -> None:
        if gone:
            super().leave(gone)
            self._refuse()

    def close(self) -> None:
        unfuse(self._fused_models)
        super().close()

    def describe(self, epoch: int) -> str:
        return f"epoch {epoch}/{self.epochs} (pack of {len(self.live)})"

    def tell(self, m: Member, epoch: int, metrics: dict[str, float], training: int) -> None:
        if self.progress and self.bar is None:
            print(f"epoch {epoch}/{self.epochs} (pack member {self.members.index(m) + 1} of {len(self.members)}, "
                  f"{training} training): {epoch_line(metrics)}", file=sys.stderr, flush=True)

    def train(self) -> list[Trained]:
        t0 = time.perf_counter()
        losses = self.train_epoch()
        train_seconds = time.perf_counter() - t0
        return [Trained(loss, t0, train_seconds) for loss in losses]

    def evaluate(self, trained: dict[int, Trained]) -> list[dict[str, float]]:
        return self.evaluate_split(self.data.val)

    def train_epoch(self) -> list[float]:
        """One epoch of every live member; their mean training losses (read from the device once)."""
        assert self.fused is not None
        self.fused.train()
        self.trained = list(self.live)
        lead, train = self.lead, self.data.train
        bs, steps = lead.cfg.batch_size, lead.steps_per_epoch
        orders = [torch.randperm(len(train), device=lead.device, generator=m.trainer.generator) for m in self.live]
        total = torch.zeros(len(self.live), device=lead.device)
        report_every = max(1, steps // 10)
        for i in range(steps):
            interrupt.check()  # Ctrl-C / SIGTERM stop here, between two steps, as in a lone run
            total += self.step([order[i * bs:(i + 1) * bs] for order in orders])
            if self.bar is not None:
                self.bar.update(1)
                if (i + 1) % report_every == 0:
                    self.bar.set_postfix_str(f"loss {(total.sum() / len(self.live)).item() / (i + 1):.4f}",
                                             refresh=False)
        return [t / steps for t in total.tolist()]

    def step(self, batches: list[torch.Tensor]) -> torch.Tensor:
        """One training step of every live member on its own batch; their losses, (K,) on the device."""
        x = self.inputs(batches)
        labels = self.data.train.labels[torch.cat(batches)]
        labels = labels.view(len(self.live), -1, *labels.shape[1:])
        with self.lead.autocast:
            out = self.fused(x)
            out = out.view(out.shape[0], len(self.live), -1)
            losses = self.losses(out, labels)
        for m in self.live:
            m.trainer.optimizer.zero_grad(set_to_none=True)
        scaled = losses if not self.lead.scaler.is_enabled() else torch.stack(
            [m.trainer.scaler.scale(loss) for m, loss in zip(self.live, losses)])
        # The sum's gradient with respect to each member's loss is 1: each member's gradients are its own loss's.
        scaled.sum().backward()
        for m in self.live:
            t = m.trainer
            if t.scaler.is_enabled():
                t.scaler.step(t.optimizer)
                t.scaler.update()
            else:
                t.optimizer.step()
            t.scheduler.step()
        return losses.detach()

    def inputs(self, batches: list[torch.Tensor]) -> torch.Tensor:
        """The members' batches side by side along the channels, (N, K*C, H, W), each augmented by its own member
        (from its own generator, as alone) and normalised as its lone run normalises it: one gather, one scaling and
        one normalisation for the whole pack, whatever K."""
        k = len(self.live)
        x = scaled(self.data.train.images[torch.cat(batches)])
        parts = x.view(k, -1, *x.shape[1:])
        for i, m in enumerate(self.live):
            if m.trainer.augment is not None:
                parts[i] = m.trainer.augment(parts[i], m.trainer.generator)
        n, c, h, w = parts.shape[1:]
        return normalise(parts.transpose(0, 1).reshape(n, k * c, h, w), self.data.mean.repeat(1, k, 1, 1),
                         self.data.std.repeat(1, k, 1, 1))

    def losses(self, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each member's loss of its logits ``out[:, k]`` and labels ``labels[k]``, (K,).

        On the CPU each is its own trainer's loss function, exactly as alone. On CUDA they are one batched
        computation of the same formulas (label-smoothed cross-entropy, or BCE with smoothed targets), a handful of
        kernels whatever K: equal to the members' own within float rounding (tests/test_pack.py).
        """
        if not out.is_cuda:
            return torch.stack([m.trainer.loss_fn(out[:, k], labels[k]) for k, m in enumerate(self.live)])
        return batched_loss(out, labels, self._smoothing(out.device), multi_label=self.data.info.multi_label)

    def _smoothing(self, device: torch.device) -> torch.Tensor:
        members = tuple(id(m) for m in self.live)
        if getattr(self, "_smoothing_of", None) != members:
            self._smoothing_of = members
            self._smoothing_k = torch.tensor([m.trainer.cfg.label_smoothing for m in self.live], device=device)
        return self._smoothing_k

    @torch.inference_mode()
    def evaluate_split(self, split: Split) -> list[dict[str, float]]:
        """Each live member's metrics on ``split``: the same images through the fused model once, no augmentation."""
        if not self.live:
            return []
        assert self.fused is not None
        self.fused.eval()
        lead, k = self.lead, len(self.live)
        step = max(lead.cfg.batch_size, EVAL_BATCH * 28 * 28 // (lead.cfg.size * lead.cfg.size) // k)
        logits = []
        for i in range(0, len(split), step):
            interrupt.check()
            x = lead.inputs(split.images[i:i + step], train=False)  # the same normalisation for every member
            x = x.repeat(1, k, 1, 1).contiguous(memory_format=lead.memory_format)
            with lead.autocast:
                logits.append(self.fused(x).float())
        out = torch.cat(logits)
        out = out.view(out.shape[0], k, -1)
        members = [out[:, i].contiguous() for i in range(k)]
        return [m.trainer.judge(part, probabilities(part, self.data.info), split)
                for m, part in zip(self.live, members)]
