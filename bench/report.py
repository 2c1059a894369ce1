"""The bench's one table, and its JSON and PNG copies under ``docs/bench/``."""

from __future__ import annotations

import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.common import Figure

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench"

#: How the table names each calibration entry (``bench.calibration`` and ``saga_engine``).
LABELS = {
    "durable_commit_ms": "durable single-row commit",
    "skip_locked_claim_100_ms": "raw SKIP LOCKED claim+delete of 100 rows",
    "lpush_100_values_ms": "variadic LPUSH of 100 values",
    "bare_drain_tasks_per_s": "bare Celery no-op drain, 1 process (tasks/s)",
    "chain_hop_ms": "10-task Celery chain, time per hop",
}


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def print_calibration(calibration: dict[str, float]) -> None:
    print("calibration of this machine (medians of 3)")
    for key, value in calibration.items():
        unit = "" if key.endswith("per_s") else " ms"
        print(f"  {LABELS.get(key, key):<48}{_number(value):>12}{unit}")


def _verdict(f: Figure, no: str = "NO") -> str:
    if f.goal == "informative":
        return "—"
    return "yes" if f.met else no


def print_table(figures: list[Figure]) -> None:
    header = f"{'figure':<66}{'value':>12}  {'reference':>12}{'ratio':>8}  {'goal':<26}met"
    print(header)
    print("-" * len(header))
    section = None
    for f in figures:
        if f.section != section:
            section = f.section
            print(f"[{section}]")
        print(
            f"  {f.name[:64]:<64}{_number(f.value):>8} {f.unit[:3]:<3}  "
            f"{_number(f.reference_value):>12}{f.ratio:>7.2f}x  {f.goal:<26}"
            f"{_verdict(f)}"
        )
        print(f"      vs {f.reference}")


def write(figures: list[Figure], calibration: dict[str, float], seconds: float) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    document = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "machine": {"cpus": _cpus(), "platform": platform.platform()},
        "seconds": round(seconds, 1),
        "calibration": calibration,
        "figures": [f.as_dict() for f in figures],
    }
    (OUT / "results.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    (OUT / "results.md").write_text(_markdown(figures, calibration, document))
    _chart(figures, OUT / "results.png")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _markdown(figures: list[Figure], calibration: dict[str, float], document: dict) -> str:
    lines = [
        "# `make bench` results",
        "",
        f"Run {document['when']}, Python {document['python']}, {document['machine']['cpus']}"
        f" CPUs, {document['seconds']} s. Every figure is the median of 3 repetitions,"
        " divided by a reference measured in the same run. Raw runs: `results.json`.",
        "",
        "## Calibration",
        "",
        "| unit | value |",
        "|---|---|",
    ]
    for key, value in calibration.items():
        unit = "" if key.endswith("per_s") else " ms"
        lines.append(f"| {LABELS.get(key, key)} | {_number(value)}{unit} |")
    lines += [
        "",
        "## Figures",
        "",
        "| figure | value | reference | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.name} | {_number(f.value)} {f.unit} | {f.reference}:"
            f" {_number(f.reference_value)} | {f.ratio:.2f}x | {f.goal} |"
            f" {_verdict(f, '**no**')} |"
        )
    notes = [f for f in figures if f.note]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- **{f.name}**: {f.note}" for f in notes]
    return "\n".join(lines) + "\n"


def _chart(figures: list[Figure], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 0.42 * len(figures) + 1.5))
    names = [f"[{f.section}] {f.name}" for f in figures][::-1]
    ratios = [f.ratio for f in figures][::-1]
    colours = [
        "#9e9e9e" if f.goal == "informative" else "#2e7d32" if f.met else "#c62828" for f in figures
    ][::-1]
    ax.barh(names, ratios, color=colours)
    for y, f in enumerate(figures[::-1]):
        ax.text(f.ratio, y, f"  {f.ratio:.2f}x  ({f.goal})", va="center", fontsize=7)
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("ratio to the reference measured in the same run (log scale)")
    ax.set_title("sagaflow make bench: green = goal met, red = not met, grey = informative")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
