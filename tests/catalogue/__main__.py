"""``python -m tests.catalogue [NAME ...] [--all]``: run the catalogue, print counts and the ``other`` cases."""
from __future__ import annotations

import argparse
import sys

import torch

from . import KNOWN_FAILURES, counts, timed_run, unexpected


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.catalogue", description=__doc__)
    p.add_argument("names", nargs="*", help="recipe names (default: all)")
    p.add_argument("--all", action="store_true", help="list every case, not only the 'other' ones")
    p.add_argument("--skip-hangs", action="store_true", help="do not run the known hangs (as the CI test)")
    p.add_argument("--slowest", type=int, default=5, help="list the N slowest calls")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    outcomes, seconds = timed_run(args.names or None, skip_hangs=args.skip_hangs)
    for o in outcomes:
        if args.all or o.outcome == "other":
            mark = " (known)" if o.case in KNOWN_FAILURES else ""
            print(f"{o.outcome:6s} {o.case}{mark}: {o.detail}")
    for o in sorted(outcomes, key=lambda o: -o.seconds)[:args.slowest]:
        print(f"slow   {o.case}: {o.seconds:.2f} s")
    c = counts(outcomes)
    print(", ".join(f"{k}: {v}" for k, v in c.items()) + f"; unexpected other: {len(unexpected(outcomes))}; "
          f"{seconds:.1f} s")
    return 1 if unexpected(outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
