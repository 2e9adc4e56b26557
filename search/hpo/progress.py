"""What `search start` shows while it runs: a line per worker (its trial, epoch k/n, latest validation value,
images/s) and the totals (finished, pruned, failed, running, best, trials/h, ETA of the study).

On a terminal those lines are redrawn in place (tqdm bars that hold only text, below the permanent lines: each
finished or failed trial). Elsewhere (docker logs, CI, `| tee`) there is no control character at all: the
permanent lines as they come, and the workers' lines with the totals after 30 s without a line, so a long trial
still shows that the search is alive.
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

SUMMARY_EVERY_S = 30.0


@dataclass
class WorkerLine:
    """What one worker does now: its trial (epoch k/n, latest validation value), or its pack's members (search/hpo/
    packs.py), which train the same epochs together until one leaves (pruned)."""

    trial: int | None = None
    epoch: int = 0
    epochs: int = 0
    value: float | None = None
    images_per_second: float | None = None
    members: dict[int, tuple[int, float | None]] = field(default_factory=dict)  # a pack: trial -> (epoch, value)
    left: set[int] = field(default_factory=set)  # members pruned: they left the pack (told when it ends)

    def start(self, number: int) -> None:
        self.__init__(trial=number)  # type: ignore[misc]

    def pack(self, numbers: list[int] | tuple[int, ...]) -> None:
        self.__init__(trial=numbers[0], members={n: (0, None) for n in numbers})  # type: ignore[misc]

    def update(self, number: int, epoch: int, epochs: int, value: float, images_per_second: float,
               leaves: bool = False) -> None:
        """A trial finished an epoch (``leaves``: and was pruned there)."""
        if number in self.members:
            self.members[number] = (epoch, value)
            self.epoch = max(self.epoch, epoch)
            if leaves:
                self.left.add(number)
        else:
            self.trial, self.epoch, self.value = number, epoch, value
        self.epochs, self.images_per_second = epochs, images_per_second

    def ended(self, number: int) -> bool:
        """A trial ended; True when the worker runs no trial any more."""
        self.members.pop(number, None)
        if self.members:
            self.trial = min(self.members)
            return False
        self.__init__()  # type: ignore[misc]
        return True

    def text(self, name: str, metric: str) -> str:
        if self.trial is None:
            return f"{name}: waiting for a trial"
        speed = f", {self.images_per_second:,.0f} images/s" if self.images_per_second else ""
        if self.members and not self.epoch:
            return f"{name}: pack of {len(self.members)} (trials {', '.join(map(str, sorted(self.members)))}), starting"
        if self.members:
            return (f"{name}: pack of {len(self.members)}, epoch {self.epoch}/{self.epochs}, {metric} "
                    + ", ".join(self._member(n, e, v) for n, (e, v) in sorted(self.members.items())) + speed)
        if not self.epoch:
            return f"{name}: trial {self.trial}, starting"
        value = f"{metric} {self.value:.4f}" if self.value is not None else f"{metric} -"
        return f"{name}: trial {self.trial}, epoch {self.epoch}/{self.epochs}, {value}{speed}"

    def _member(self, number: int, epoch: int, value: float | None) -> str:
        shown = f"{value:.4f}" if value is not None else "-"
        left = f" (left at epoch {epoch})" if number in self.left else ""
        return f"trial {number} {shown}{left}"


def eta(finished: int, remaining: int, seconds: float) -> str:
    """The study's time to go at this run's pace so far."""
    if finished <= 0 or remaining <= 0:
        return "-"
    return duration(remaining * seconds / finished)


def duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.5 h``: as precise as a person reads a time."""
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Board:
    def __init__(self, echo: Callable[[str], None], live: bool | None = None) -> None:
        self.echo = echo
        self.live = sys.stdout.isatty() if live is None else live
        self.bars: list[Any] = []
        self.last_summary = time.monotonic()

    def say(self, text: str) -> None:
        """A permanent line (a finished trial, a failure, a stop)."""
        if self.bars:
            from tqdm import tqdm

            tqdm.write(text)
        else:
            self.echo(text)
            self.last_summary = time.monotonic()  # a line just showed the search is alive: the next summary in 30 s

    def show(self, lines: list[str], totals: str) -> None:
        """The workers' lines and the totals, as they stand now."""
        if not self.live:
            if time.monotonic() - self.last_summary >= SUMMARY_EVERY_S:
                self.last_summary = time.monotonic()
                self.echo(f"{totals} || " + "; ".join(lines))
            return
        from tqdm import tqdm

        texts = [*lines, totals]
        # The size as the terminal reports it now; one that reports none counts as 120 x 24 (tqdm would print
        # nothing at all there).
        size = shutil.get_terminal_size((120, 24))
        while len(self.bars) < len(texts):
            self.bars.append(tqdm(bar_format="{desc}", position=len(self.bars), leave=False, file=sys.stdout,
                                  ncols=size.columns, nrows=max(size.lines, len(texts) + 1)))
        for bar, text in zip(self.bars, texts):
            bar.set_description_str(text, refresh=True)

    def close(self) -> None:
        for bar in self.bars:
            bar.close()
        self.bars = []
