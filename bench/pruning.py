"""Pruning: each pruner against none on the same study, data and sampler seed, at equal trial budgets, in one run.

    python bench/pruning.py [--data study|real-mnist|pathmnist-shaped] [--study NAME] [--trials 24] [--epochs N]
        [--arms median,hyperband,successivehalving,none] [--architectures A,B] [--pruner MAPPING ...]
        [--samples 8000,1000,2000] [--mnist DIR] [--data-dir DIR] [--device cpu|cuda|auto] [--jobs N] [--seed S]

Data (``--data``) and the study it runs by default:

- ``study`` (default): the study's own data (``--study``, default digits; ``--data-dir`` where its files are).
- ``real-mnist``: the real MNIST test set split 8,000 / 2,000 into IDX files as bench/real_mnist.py does (``--mnist``
  is the folder of the t10k files), in a temporary folder; the ``mnist`` study (its reader splits the 8,000 9:1 into
  train and validation, so validation is 800 images and the 2,000 are the test split).
- ``pathmnist-shaped``: generated PathMNIST-shaped data (RGB 28x28, 9 classes, ``--samples`` train,val,test) in the
  true on-disk format (pathmnist.npz as medmnist keeps it), in a temporary folder; the ``pathmnist`` study. Each
  class is one of 3 close tints times one of 3 texture scales (random orientation and contrast), under pixel noise:
  tint and texture must both be learnt, the curve still rises after epoch 1, and configurations differ in accuracy.

Arms (``--arms``): Optuna's median, hyperband and successive-halving pruners, and none. Each arm runs the same
number of trials on its own in-memory study of the same name, with the same sampler seed, so the arms draw the same
configurations until pruning makes their histories differ. A pruner's settings: a ``--pruner`` mapping's for that
name (e.g. '{name: median, n_warmup_steps: 2}'), else the study's own when the study names that pruner, else Optuna's
defaults; hyperband's max_resource is always the epochs (one epoch = one step). The study's ``enqueue``
entries (its warm start) run first in every arm, where they fit the space (``--architectures`` may rule one out).
``--architectures`` restricts the study's architecture choices (the mnist and pathmnist studies search alexnet and
ResNets, meant for a GPU); the default is the study's own space.

Per arm it prints the epochs trained (the trials' ``epochs_run`` summed), wall time, trials pruned and failed,
the best trial's validation value, and its test value: after the search, for the report only, the best trial's
config is trained again (search.train.engine.train, the code of `search train`) and its test metric read; the
objective never sees the test split. Then, per pruner against none: the epoch saving (1 - epochs / epochs of
none), the wall-time ratio, the best validation value's difference in points, and whether the target holds:
>= 40% fewer epochs with the best value not more than 0.5 points below none's.

``--jobs N`` runs N arms at a time, each in its own spawned process (on the CPU each gets cores // N torch
threads; on a GPU they share the card); the retraining for the test values runs in the same processes afterwards.
Concurrent arms slow each other, and an arm that ends early leaves the others more of the machine: the wall-time
ratio is a rougher figure than the epoch saving (on a shared machine, rougher still).
Figures only: nothing here asserts a time. Exit status 2, one line, for a bad argument.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing as mp
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]  # runs from a checkout without installing (as bench/gpu_proof.py)

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import real_mnist  # noqa: E402
import yaml  # noqa: E402

from search import env  # noqa: E402
from search.errors import SearchError  # noqa: E402
from search.hpo.studies import PRUNERS, StudySpec, check_trial, load_study, make_pruner, make_sampler  # noqa: E402
from search.train import data  # noqa: E402
from search.train.config import from_dict  # noqa: E402

DATA = {"study": None, "real-mnist": "mnist", "pathmnist-shaped": "pathmnist"}  # --data -> the study it runs
ARMS = ("median", "hyperband", "successivehalving", "none")
TARGET_SAVING, TARGET_POINTS = 0.40, 0.5

# --- PathMNIST-shaped data -----------------------------------------------------------------------------------

# Class c is one of three close H&E-like tints (c % 3) times one of three texture scales (c // 3): a grating of random
# orientation, phase and contrast. Tissue has no orientation, and neither has this signal, so the study's dihedral
# augmentations keep the labels; colour jitter blurs the tint. Measured with simple_cnn_v2 (lr 1e-3, batch 128, dropout
# 0.3, cosine, 8,000 training images): validation accuracy 0.25 after epoch 1, 0.69 after 3 (0.77 with dihedral, 0.43
# with dihedral+color), 0.87 after 8 (dihedral); the mean colour alone (logistic regression) 0.29.
TINTS = np.array([[190, 120, 165], [175, 115, 175], [200, 135, 155]], dtype=np.float64)  # RGB
CYCLES = np.array([2.0, 3.5, 5.0])  # grating periods per image side
TINT_SD, CYCLES_SD, NOISE_SD, CONTRAST = 6.0, 0.3, 30.0, (4.0, 30.0)  # grey levels, except CYCLES_SD


def pathmnist_like(counts: tuple[int, int, int], seed: int = 0, size: int = 28) -> dict[str, np.ndarray]:
    """medmnist's pathmnist.npz layout: {train,val,test}_images uint8 N x S x S x 3, _labels uint8 N x 1 (as
    tests/support/data.py writes it), with a signal to learn: a jittered tint and a grating of the class's scale, under
    Gaussian pixel noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    arrays: dict[str, np.ndarray] = {}
    for split, n in zip(("train", "val", "test"), counts):
        labels = rng.integers(0, 9, size=n)
        tint = TINTS[labels % 3] + rng.normal(0, TINT_SD, size=(n, 3))
        cycles = CYCLES[labels // 3] + rng.normal(0, CYCLES_SD, size=n)
        angle, phase = rng.uniform(0, np.pi, size=n), rng.uniform(0, 2 * np.pi, size=n)
        contrast = rng.uniform(*CONTRAST, size=n)
        along = xx[None] * np.cos(angle)[:, None, None] + yy[None] * np.sin(angle)[:, None, None]
        wave = contrast[:, None, None] * np.sin(2 * np.pi * cycles[:, None, None] * along + phase[:, None, None])
        images = (tint[:, None, None, :] + wave[..., None] * np.array([1.0, 0.6, 0.8])
                  + rng.normal(0, NOISE_SD, size=(n, size, size, 3)))
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.astype(np.uint8)[:, None]
    return arrays


def write_data(kind: str, folder: Path, args: argparse.Namespace) -> tuple[str | None, str]:
    """The data folder for ``--data`` (None: the study's own) and a description for the header."""
    if kind == "real-mnist":
        if not (args.mnist / "t10k-images-idx3-ubyte.gz").is_file():
            raise SearchError(f"--mnist {args.mnist}: no t10k-images-idx3-ubyte.gz there (the real MNIST test set)")
        real_mnist.split_real_mnist(args.mnist, folder)
        val = round(real_mnist.N_TRAIN * data.MNIST_VAL_FRACTION)
        test = len(data.read_idx(folder / "t10k-labels-idx1-ubyte.gz"))
        return str(folder), (f"real MNIST ({args.mnist}'s t10k set split as bench/real_mnist.py does): "
                             f"{real_mnist.N_TRAIN - val:,} / {val:,} / {test:,} (train / val / test)")
    if kind == "pathmnist-shaped":
        # The data's seed stays 0 whatever --seed says: a seed changes the sampler's draws, not the task.
        np.savez_compressed(folder / "pathmnist.npz", **pathmnist_like(args.samples))
        train, val, test = args.samples
        return str(folder), f"PathMNIST-shaped generated data {train:,} / {val:,} / {test:,} (train / val / test)"
    return args.data_dir, "the study's own data"


# --- the study and its arms ----------------------------------------------------------------------------------

def study_for(args: argparse.Namespace, data_dir: str | None) -> StudySpec:
    """The study with this run's overrides (data folder, epochs, seed, architectures), checked."""
    name = args.study or DATA[args.data] or "digits"
    spec = load_study(name, data_dir=data_dir)
    if spec.multi:
        raise SearchError(f"study {name!r} has several objectives, which Optuna cannot prune; choose a "
                          f"single-objective study")
    wanted = DATA[args.data]
    if wanted is not None and spec.dataset != wanted:
        raise SearchError(f"--data {args.data} runs a study of the {wanted} dataset; study {name!r} is of "
                          f"{spec.dataset}")
    if args.epochs is not None:
        spec = dataclasses.replace(spec, epochs=args.epochs)
    if args.seed is not None:
        spec = dataclasses.replace(spec, sampler={**spec.sampler, "seed": args.seed})
    if args.architectures:
        spec = dataclasses.replace(spec, space=restricted(spec, args.architectures))
    try:
        from_dict(spec.base_config(), source=f"study {spec.name}")
    except SearchError as err:
        raise SearchError(f"--epochs {spec.epochs}: {err.message}") from None
    kept = []
    for i, entry in enumerate(spec.enqueue):
        try:
            kept.append(check_trial(spec.space, spec.base_config(), entry, where=f"enqueue[{i}]"))
        except SearchError as err:
            print(f"warm start: {err.message}; skipped", flush=True)
    return dataclasses.replace(spec, enqueue=tuple(kept))


def restricted(spec: StudySpec, names: str) -> dict[str, Any]:
    param = spec.space.get("architecture")
    if param is None or param.choices is None:
        raise SearchError(f"--architectures: study {spec.name} does not search the architecture")
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in wanted if n not in param.choices]
    if bad or not wanted:
        raise SearchError(f"--architectures {names!r}: {bad[0] if bad else 'none given'} is not among study "
                          f"{spec.name}'s choices; valid: {', '.join(param.choices)}")
    return {**spec.space, "architecture": dataclasses.replace(param, choices=tuple(wanted))}


def pruner_settings(spec: StudySpec, arms: list[str], given: list[str]) -> dict[str, dict[str, Any]]:
    """Each arm's pruner mapping (see the module docstring), each built once here so a bad one fails now."""
    custom: dict[str, dict[str, Any]] = {}
    for text in given:
        value = yaml.safe_load(text)
        if not isinstance(value, dict) or value.get("name") not in PRUNERS:
            raise SearchError(f"--pruner {text!r}: expected a mapping with a name among {', '.join(PRUNERS)}")
        if value["name"] not in arms:
            raise SearchError(f"--pruner {text!r}: {value['name']} is not among --arms {','.join(arms)}")
        custom[value["name"]] = value
    settings = {}
    for arm in arms:
        mapping = custom.get(arm) or (dict(spec.pruner) if spec.pruner["name"] == arm else {"name": arm})
        if arm == "hyperband":
            mapping["max_resource"] = spec.epochs
        make_pruner(dataclasses.replace(spec, pruner=mapping))
        settings[arm] = mapping
    return settings


# --- in each process -----------------------------------------------------------------------------------------

def set_up(threads: int, ignore_sigint: bool) -> None:
    """A process's set-up: its torch threads, and the libraries as quiet as a search worker keeps them."""
    import torch

    from search import quiet

    if ignore_sigint:  # a pool process: the parent alone hears Ctrl-C, and ends it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads:
        torch.set_num_threads(threads)
    quiet.libraries(worker=True)
    # A generated pathmnist.npz is not the official file's size: medmnist's reader says so once per load.
    logging.getLogger("search").addFilter(lambda r: "the official file has" not in r.getMessage())


def run_arm(spec: StudySpec, arm: str, pruner: dict[str, Any], trials: int, device: str) -> dict[str, Any]:
    """One search of ``trials`` trials with this pruner; its figures (no test split is touched)."""
    from search.hpo.objective import Objective

    arm_spec = dataclasses.replace(spec, pruner=pruner)
    # One study name for every arm: Optuna's hyperband assigns a trial to a bracket by hashing the study's name
    # and the trial's number, and an unnamed study gets a random name.
    study = optuna.create_study(study_name=f"pruning-{spec.name}", direction=spec.direction,
                                sampler=make_sampler(arm_spec), pruner=make_pruner(arm_spec))
    for entry in spec.enqueue:
        study.enqueue_trial(entry)
    start = time.perf_counter()
    study.optimize(Objective(arm_spec, device), n_trials=trials, catch=(Exception,))
    seconds = time.perf_counter() - start
    states = [t.state for t in study.trials]
    try:
        best = study.best_trial
    except ValueError:  # no trial completed
        best = None
    return {"arm": arm, "trials": len(study.trials), "seconds": seconds,
            "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in study.trials),
            "pruned": states.count(optuna.trial.TrialState.PRUNED),
            "failed": states.count(optuna.trial.TrialState.FAIL),
            "best": best.value if best else None, "best_trial": best.number if best else None,
            "config": best.user_attrs["config"] if best else None}


def retrain(config: dict[str, Any], metric: str, device: str) -> dict[str, float]:
    """The config trained again as `search train` trains it (into a folder thrown away): its validation value and
    the test value of the same kept epoch."""
    from search.train import engine

    cfg = from_dict({**config, "device": device}, source="the best trial's config")
    with tempfile.TemporaryDirectory() as out:
        m = engine.train(cfg, Path(out), progress=False)
    test = "test_" + metric.removeprefix("val_")
    return {"val": m[metric], "test": m[test]}


# --- the run -------------------------------------------------------------------------------------------------

class Runner:
    """Calls made in this process (--jobs 1) or spread over a pool of spawned processes."""

    def __init__(self, jobs: int, threads: int) -> None:
        self.pool = None
        if jobs > 1:
            self.pool = mp.get_context("spawn").Pool(jobs, initializer=set_up, initargs=(threads, True))
        else:
            set_up(threads, ignore_sigint=False)

    def each(self, fn: Any, calls: list[tuple], done: Any) -> list[Any]:
        """``fn(*call)`` for every call; ``done(result)`` as each finishes; the results in the calls' order."""
        if self.pool is None:
            return [done(fn(*call)) for call in calls]
        pending = [self.pool.apply_async(fn, call) for call in calls]
        results: list[Any] = [None] * len(calls)
        left = set(range(len(calls)))
        while left:
            for i in sorted(left):
                if pending[i].ready():
                    results[i] = done(pending[i].get())
                    left.discard(i)
            time.sleep(0.2)
        return results

    def close(self, *, kill: bool = False) -> None:
        if self.pool is not None:
            (self.pool.terminate if kill else self.pool.close)()
            self.pool.join()


def points(a: float | None, b: float | None) -> str:
    return f"{100 * (a - b):+.2f}" if a is not None and b is not None else "n/a"


def value(v: float | None) -> str:
    return f"{v:.4f}" if v is not None else "n/a"


def arm_line(r: dict[str, Any]) -> str:
    return (f"  {r['arm']:<18} {r['trials']:>6} {r['pruned']:>6} {r['failed']:>6} {r['epochs']:>7} "
            f"{r['seconds']:>8.1f} {value(r['best']):>9} {str(r['best_trial']):>5}")


def report(results: list[dict[str, Any]], tests: dict[str, dict[str, float]], metric: str) -> None:
    print(f"\n  {'arm':<18} {'trials':>6} {'pruned':>6} {'failed':>6} {'epochs':>7} {'wall s':>8} "
          f"{'best val':>9} {'trial':>5} {'test':>7} {'retrained val':>13}")
    for r in results:
        t = tests.get(json.dumps(r["config"], sort_keys=True), {})
        r["test"] = t.get("test")
        print(f"{arm_line(r)} {value(r['test']):>7} {value(t.get('val')):>13}")
    base = next((r for r in results if r["arm"] == "none"), None)
    if base is None:
        print("\n(no 'none' arm: no comparison)")
        return
    print(f"\n| pruner | epochs | epoch saving vs none | wall-time ratio | best {metric} | difference, points "
          f"| test | test difference, points | target met |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| none | {base['epochs']} | | 1 | {value(base['best'])} | | {value(base['test'])} | | |")
    for r in results:
        if r is not base:
            print(comparison(r, base))


def comparison(r: dict[str, Any], base: dict[str, Any]) -> str:
    """One pruner's row: its saving, wall-time ratio and best-value difference against none, and the target."""
    saving = 1 - r["epochs"] / base["epochs"] if base["epochs"] else math.nan
    ratio = r["seconds"] / base["seconds"] if base["seconds"] else math.nan
    diff = 100 * (r["best"] - base["best"]) if r["best"] is not None and base["best"] is not None else math.nan
    short = []
    if not saving >= TARGET_SAVING:
        short.append(f"saving under {TARGET_SAVING:.0%}")
    if not diff >= -TARGET_POINTS:
        short.append(f"best more than {TARGET_POINTS} points below none" if diff == diff else "no complete trial")
    met = "yes" if not short else "no: " + ", ".join(short)
    return (f"| {r['arm']} | {r['epochs']} | {saving:.0%} | {ratio:.2f} | {value(r['best'])} | {diff:+.2f} | "
            f"{value(r['test'])} | {points(r['test'], base['test'])} | {met} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=list(DATA), default="study")
    ap.add_argument("--study", help="default: digits for --data study, mnist for real-mnist, pathmnist for "
                                    "pathmnist-shaped")
    ap.add_argument("--trials", type=int, default=24, help="trials per arm")
    ap.add_argument("--epochs", type=int, help="the most epochs per trial (default: the study's)")
    ap.add_argument("--arms", default=",".join(ARMS), help="pruners to run, among " + ", ".join(PRUNERS))
    ap.add_argument("--architectures", help="restrict the study's architecture choices, e.g. simple_cnn_v2")
    ap.add_argument("--pruner", action="append", default=[], help="a YAML mapping of one arm's pruner settings")
    ap.add_argument("--samples", default="8000,1000,2000", help="pathmnist-shaped: train,val,test images")
    ap.add_argument("--mnist", type=Path, default=real_mnist.SHARED, help="real-mnist: folder of the t10k files")
    ap.add_argument("--data-dir", help="--data study: the folder of the study's dataset files")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--jobs", type=int, default=1, help="arms run at a time, one process each")
    ap.add_argument("--seed", type=int, help="sampler seed (default: the study's)")
    args = ap.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arms if a not in PRUNERS] + [a for a in set(args.arms) if args.arms.count(a) > 1]
    if bad or not args.arms:
        ap.error(f"--arms: {bad[0] + ' is unknown or repeated' if bad else 'none given'}; valid: {', '.join(PRUNERS)}")
    try:
        args.samples = tuple(int(n) for n in args.samples.split(","))
    except ValueError:
        args.samples = ()
    if len(args.samples) != 3 or min(args.samples) < 1:
        ap.error("--samples: expected three positive counts train,val,test, e.g. 8000,1000,2000")
    if args.trials < 1 or args.jobs < 1 or (args.epochs is not None and args.epochs < 1):
        ap.error("--trials, --jobs and --epochs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from search import quiet

    quiet.libraries()  # loading a study builds its sampler: TPE's `group` is experimental, knowingly
    runner = None
    try:
        with tempfile.TemporaryDirectory(prefix="pruning-bench-") as tmp:
            data_dir, described = write_data(args.data, Path(tmp), args)
            spec = study_for(args, data_dir)
            settings = pruner_settings(spec, args.arms, args.pruner)
            if args.device == "cuda":
                from search.train.engine import resolve_device
                resolve_device("cuda")  # no GPU: one line now, not a failed trial per trial
            jobs = min(args.jobs, len(args.arms))
            threads = max(1, env.cores() // jobs)
            print(f"study {spec.name} ({spec.dataset}, {spec.metric}) on {described}; "
                  f"{args.trials} trials per arm, "
                  f"up to {spec.epochs} epochs each; sampler {spec.sampler}; architectures "
                  f"{', '.join(spec.space['architecture'].choices) if 'architecture' in spec.space else 'fixed'}; "
                  f"device {args.device}, {jobs} arm(s) at a time, {threads} torch thread(s) each", flush=True)
            for arm in args.arms:
                print(f"  {arm}: {settings[arm]}", flush=True)
            runner = Runner(jobs, threads)
            start = time.perf_counter()
            results = runner.each(run_arm, [(spec, a, settings[a], args.trials, args.device) for a in args.arms],
                                  lambda r: print(f"done {arm_line(r)}", flush=True) or r)
            searched = time.perf_counter() - start
            configs = {json.dumps(r["config"], sort_keys=True): r["config"] for r in results if r["config"]}
            keys = list(configs)
            print(f"searches {searched:.0f} s; training {len(keys)} distinct best config(s) again for the test "
                  f"value", flush=True)
            tested = runner.each(retrain, [(configs[k], spec.metric, args.device) for k in keys], lambda t: t)
            runner.close()
            report(results, dict(zip(keys, tested)), spec.metric)
            print(f"\ntotal {time.perf_counter() - start:.0f} s")
    except SearchError as err:
        if runner is not None:
            runner.close(kill=True)
        print(f"error: {err.message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if runner is not None:
            runner.close(kill=True)
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
