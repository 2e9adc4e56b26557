"""Ctrl-C at random moments of `search start --workers 2`: how many stops were clean?

Each run starts the same command on one study (so each run resumes the one before), waits a random delay (from
the moment the command is exec'ed), sends
SIGINT to the whole process group (what a terminal's Ctrl-C does) and checks what tests/test_ctrl_c.py checks:
exit status 130 within 30 s, one error line saying how to go on, no traceback from any process, no RUNNING trial
left. Prints one line per run and the count of clean stops; exits 1 unless every stop was clean.

    python bench/ctrl_c.py                    # 100 runs, delays uniform in [0, 15] s
    python bench/ctrl_c.py --runs 20 --max-delay 8
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the test's own harness and checks
from tests.support.signals import Interruptible, assert_clean_stop  # noqa: E402
from tests.support.studies import ctrl_c_study  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--max-delay", type=float, default=15.0, help="seconds; delays are uniform in [0, this]")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    clean, early, slowest = 0, 0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study = ctrl_c_study(folder, "ctrlc", trials=100_000)
        for i in range(1, args.runs + 1):
            delay = rng.uniform(0, args.max_delay)
            run = Interruptible.start(["start", "--study", str(study), "--workers", "2"], folder)
            time.sleep(delay)
            seconds = run.ctrl_c()
            slowest = max(slowest, seconds)
            try:
                assert_clean_stop(run, seconds, folder / "search.db", "ctrlc")
                clean += 1
                early += run.proc.returncode < 0
                verdict = "clean" if run.proc.returncode > 0 else "clean (before the interpreter ran our code)"
            except AssertionError as err:
                verdict = f"NOT CLEAN: {str(err).strip().splitlines()[0][:300]}"
            print(f"run {i:3d}: Ctrl-C after {delay:5.2f} s, stopped in {seconds:4.1f} s: {verdict}", flush=True)
    print(f"{clean} of {args.runs} stops clean ({early} of them before the interpreter ran our code); "
          f"slowest stop {slowest:.1f} s after the signal")
    return 0 if clean == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
