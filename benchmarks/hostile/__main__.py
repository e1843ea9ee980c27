"""`python -m benchmarks.hostile`: run the trials, print one line each, exit 1 on any problem."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.hostile import TRIALS, Skip, run_trial


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Replay issue 12's hostile-input trials against dslc.")
    parser.add_argument("--only", metavar="WORD", help="only the trials whose name contains WORD")
    parser.add_argument("--quick", action="store_true", help="leave out the slow trials")
    args = parser.parse_args(argv)
    chosen = [t for t in TRIALS if (not args.only or args.only in t.name) and not (args.quick and t.slow)]
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    tracebacks = 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dslc-hostile-cache-") as cache:
        for trial in chosen:
            try:
                problems, outcome = run_trial(trial, Path(cache))
            except Skip as e:
                counts["skipped"] += 1
                print(f"skip  item {trial.item:>2}  {trial.name}: {e}")
                continue
            tracebacks += "Traceback" in outcome.stderr
            counts["failed" if problems else "ok"] += 1
            print(f"{'FAIL' if problems else 'ok  '}  item {trial.item:>2}  {trial.name}  "
                  f"(exit {outcome.status}, {outcome.seconds:.1f} s)")
            for p in problems:
                print("        " + p.replace("\n", "\n        "))
    print(f"\n{len(chosen)} trials in {time.monotonic() - start:.0f} s: {counts['ok']} ok, {counts['failed']} failed, "
          f"{counts['skipped']} skipped; {tracebacks} tracebacks")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
