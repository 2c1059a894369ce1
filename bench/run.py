"""``make bench``: the calibration, then every section, then one table.

Each section module has ``figures(quick=False)``; the results go to
``docs/bench/results.{json,md,png}``. ``--quick`` is a smoke run with small sizes
(its results are printed, not written). ``--only relay`` runs one section.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import setup_django

SECTIONS = ("saga", "relay", "idempotency")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=SECTIONS, action="append")
    args = parser.parse_args()
    started = time.monotonic()
    setup_django()
    from bench import calibration, report

    calibrated = calibration.measure()
    report.print_calibration(calibrated)
    figures = []
    for section in args.only or SECTIONS:
        print(f"... {section}", flush=True)
        if section == "saga":
            from bench import saga_engine

            found, more = saga_engine.figures(args.quick)
            calibrated.update(more)
        elif section == "relay":
            from bench import relay

            found = relay.figures(args.quick)
        else:
            from bench import idempotency

            found = idempotency.figures(args.quick)
        figures += found
    seconds = time.monotonic() - started
    print()
    report.print_calibration(calibrated)
    print()
    report.print_table(figures)
    print(f"\n{len(figures)} figures in {seconds:.0f} s")
    if not args.quick and not args.only:
        report.write(figures, calibrated, seconds)
        print("written: docs/bench/results.md, results.json, results.png")


if __name__ == "__main__":
    main()
