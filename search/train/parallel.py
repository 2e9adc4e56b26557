"""`search train --seeds N --devices LIST`: the N seeds trained in parallel, one process per listed device (and
`search export --rerank K --devices LIST`: the K trials' seeds, all in one such pool).

Each device gets one process, spawned (fresh interpreters: no CUDA or thread state forked from the parent) with its
own environment, as `search start`'s workers are (search/devices.py): a GPU index is the process's only visible
card (its cuda:0), and the `cpu` entries split the cores between them (torch.set_num_threads). The
parent hands the runs out in order, one at a time, to whichever process is free, over a pipe per process; that is
why this is a small pool of our own rather than a ProcessPoolExecutor, whose initializer cannot give each process a
different device. Each run writes its folder itself (`engine.train`, atomic writes); the parent writes
summary.json, in seed order, exactly as the sequential `train_seeds` does.

Stopping (search/interrupt.py): the processes start with the stop signals blocked and ignore SIGINT from their
first line, so a terminal's Ctrl-C is the parent's alone; it sends each live process one SIGTERM, which its
training loop sees at the next batch, and raises `interrupt.Stop` as the sequential run does. A run that fails
(a diverged loss) stops the others, and its error is the command's.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import traceback
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable

from search import interrupt
from search.devices import Placement, placements
from search.errors import ProcessFailed, SearchError, reason, write_log
from search.train.config import TrainConfig


def plan(devices: str, processes: int) -> list[Placement]:
    """The pool's processes: one per entry of ``devices`` (search/devices.py's grammar), at most ``processes``
    (more devices than runs: the extra ones start no process)."""
    return placements(devices, processes, per_entry=True)


Job = tuple[TrainConfig, int, Path]  # (config, seed, run folder): one `engine.train` run


def train_seeds(cfg: TrainConfig, out: Path, seeds: int, devices: str,
                on_run: Callable[[Path, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """`replicates.train_seeds`, the seeds spread over one process per entry of ``devices`` (the extra entries, when
    there are more devices than seeds, start no process). ``on_run`` hears of each run as it finishes."""
    from search.train import replicates

    runs = replicates.seed_runs(cfg, out, seeds)
    heard = (lambda _i, folder, m: on_run(folder, m)) if on_run is not None else None
    results = train_runs([(cfg, seed, folder) for seed, folder in runs], devices, heard,
                         what=f"seeds {runs[0][0]}..{runs[-1][0]}")
    return replicates.write_summary(cfg, out, runs, results)


def train_runs(jobs: list[Job], devices: str, on_run: Callable[[int, Path, dict[str, Any]], None] | None = None,
               *, what: str = "", on_start: Callable[[int, str], None] | None = None) -> list[dict[str, Any]]:
    """Each job trained by `engine.train` on whichever process of ``devices`` is free, in order; returns their
    metrics in the order of ``jobs``. ``on_run(index, folder, metrics)`` hears of each run as it finishes (the
    rerank of `search export` hands several trials' seeds to one pool, so no device waits for another trial), and
    ``on_start(index, device name)`` as it is handed to a process."""
    slots = plan(devices, len(jobs))
    interrupt.check()
    names = ", ".join(p.name for p in slots)
    print(f"training {what or f'{len(jobs)} runs'} in parallel on {names}", file=sys.stderr, flush=True)
    pool = _Pool(slots, on_start)
    try:
        results = pool.run(jobs, on_run)
    finally:
        pool.stop()
    return [results[i] for i in range(len(jobs))]


class _Pool:
    def __init__(self, slots: list[Placement], on_start: Callable[[int, str], None] | None = None) -> None:
        self.slots, self.on_start = slots, on_start
        self.ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[Connection | None] = []
        self.busy: list[tuple[int, Job] | None] = []  # (index, job) of the run each process trains now

    def _spawn(self, place: Placement) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_child, args=(child, place.device, place.threads),
                                name=f"search-train-{len(self.procs)}", daemon=True)
        interrupt.start_shielded(proc, place.env)  # its own CUDA_VISIBLE_DEVICES; deaf to Ctrl-C until its first line
        child.close()
        self.procs.append(proc)
        self.conns.append(parent)
        self.busy.append(None)

    def run(self, jobs: list[Job],
            on_run: Callable[[int, Path, dict[str, Any]], None] | None) -> dict[int, dict[str, Any]]:
        todo, results = list(enumerate(jobs)), {}
        for slot in self.slots:
            interrupt.check()
            self._spawn(slot)
        for i in range(len(self.procs)):
            self._hand_out(i, todo)
        while any(b is not None for b in self.busy):
            interrupt.check()
            live = [i for i, c in enumerate(self.conns) if c is not None]
            ready = wait([self.conns[i] for i in live] + [self.procs[i].sentinel for i in live], timeout=0.2)
            for i in live:
                conn, proc = self.conns[i], self.procs[i]
                message = _receive(conn)
                if message is not None:
                    kind, value = message
                    if kind == "crash":
                        raise self._crashed(i, *value)
                    index, (_, _, folder) = self.busy[i]
                    if kind == "error":
                        raise SearchError(value)
                    results[index] = value
                    if on_run is not None:
                        on_run(index, folder, value)
                    self._hand_out(i, todo)
                elif proc.sentinel in ready or not proc.is_alive():
                    proc.join()
                    what = f"seed {self.busy[i][1][1]} ({self.busy[i][1][2]})" if self.busy[i] else "nothing"
                    interrupt.check()  # a child stopped by the same Ctrl-C is no failure of its own
                    raise SearchError(f"the process training {what} on {self.slots[i].name} died "
                                      f"(exit code {proc.exitcode}); the seeds that finished are kept")
        return results

    def _crashed(self, i: int, why: str, text: str) -> ProcessFailed:
        """Process i failed on an error: its traceback in search-train-<pid>.log beside the run folders."""
        job = self.busy[i][1] if self.busy[i] else None
        what = f"seed {job[1]} ({job[2]})" if job else "no run yet"
        log = write_log(job[2].parent if job else None, f"search-train-{self.procs[i].pid}.log", text)
        return ProcessFailed(f"the process training {what} on {self.slots[i].name} failed: {why}; traceback in "
                             f"{log or 'no file (no folder could be written)'}; the seeds that finished are kept")

    def _hand_out(self, i: int, todo: list[tuple[int, Job]]) -> None:
        """The next run in order to process i, or None: it exits."""
        self.busy[i] = todo.pop(0) if todo else None
        if self.busy[i] is not None and self.on_start is not None:
            self.on_start(self.busy[i][0], self.slots[i].name)
        try:
            self.conns[i].send(self.busy[i][1] if self.busy[i] else None)
        except OSError:  # it died (BrokenPipeError): its sentinel reports it on the next turn
            return
        if self.busy[i] is None:
            self.conns[i].close()
            self.conns[i] = None

    def stop(self) -> None:
        """One SIGTERM to each live process (a finished one is simply joined); kill any still alive after the
        grace period."""
        interrupt.stop_children(self.procs)


def _receive(conn: Connection) -> tuple[str, Any] | None:
    """The message a process sent, or None when it sent none (or ended without one: its sentinel tells)."""
    try:
        return conn.recv() if conn.poll() else None
    except EOFError:
        return None


def _child(conn: Connection, device: str, threads: int) -> None:
    """One process of the pool: train each run it is handed on ``device``, until it is handed None (or gets
    SIGTERM)."""
    interrupt.install_in_worker()  # SIGTERM is recorded from here on (it was blocked until now); SIGINT ignored
    try:
        import torch

        from search.train import engine

        if threads:
            torch.set_num_threads(threads)
        while True:
            while not conn.poll(0.2):
                interrupt.check()
            job = conn.recv()
            if job is None:
                break
            cfg, seed, folder = job
            try:
                metrics = engine.train(cfg.replace(device=device, seed=seed), folder, progress=False)
            except SearchError as err:  # a diverged run, a bad input: the parent reports it as its own
                conn.send(("error", err.message))
                break
            conn.send(("done", metrics))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # every result is written and sent: skip the interpreter's slow teardown with torch loaded
    except KeyboardInterrupt:  # interrupt.Stop: nothing half-written (atomic writes), nothing left to save
        os._exit(130)
    except (EOFError, BrokenPipeError):
        os._exit(3)  # the parent is gone
    except Exception as err:  # no traceback on the terminal: the parent writes it to a log and says one line
        try:
            conn.send(("crash", (reason(err), traceback.format_exc())))
        except OSError:
            pass
        os._exit(1)
