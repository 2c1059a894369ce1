"""One run's table (Markdown, also printed) and its plot (PNG: throughput and backlog
over time, fault intervals shaded), and the files they are written to."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

#: What each unsafe setting of a control run does (``settings.py``, ``unsafe/patches.py``).
UNSAFE = {
    "acks": "early acks",
    "publish": "step messages sent inside the transaction",
    "sweeper": "sweepers off",
    "lock-wait": "the sweeper waits for row locks and no engine transaction is bounded",
    "deadline": "a deadline compensates the running step at once and skips waits that acted",
    "rename": "a renamed step counts as having no compensation",
    "clock": "leases and due times read on the worker's clock",
}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def table(summary: dict) -> str:
    s = summary
    config = (
        "**UNSAFE control** (" + ", ".join(UNSAFE.get(u, u) for u in s["unsafe"]) + ")"
        if s["unsafe"]
        else "safe (documented defaults)"
    )
    recoveries = [f["recovery"] for f in s["faults"] if f.get("recovery") is not None]
    out = [
        f"## chaos run: profile `{s['profile']}`, seed {s['seed']}, {s['load_seconds']:.0f} s "
        f"of load, drained in {_fmt(s['drain_seconds'])} s, {s['wall_seconds']:.0f} s wall "
        f"({s['started_at']})",
        "",
        f"Topology: {s['topology']}. Configuration: {config}.",
        "",
        "### Faults injected",
        "",
        "| kind | injected | fired | recovery after each (s) |",
        "|---|---:|---:|---|",
    ]
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for f in s["faults"]:
        by_kind[f["kind"]].append(f)
    for kind in sorted(by_kind):
        items = by_kind[kind]
        rec = ", ".join(_fmt(f.get("recovery")) for f in items)
        fired = sum(f["fired"] for f in items)
        out.append(f"| {kind} | {len(items)} | {fired} | {rec} |")
    out.append(
        f"| **total** | {len(s['faults'])} | {sum(f['fired'] for f in s['faults'])} | "
        f"max {_fmt(max(recoveries, default=None))} |"
    )
    out += ["", "### Sagas and orders by outcome", ""]
    out.append("| saga | " + " | ".join(s["saga_states"]) + " |")
    out.append("|---|" + "---:|" * len(s["saga_states"]))
    for name, row in sorted(s["sagas"].items()):
        out.append(f"| {name} | " + " | ".join(str(row.get(k, 0)) for k in s["saga_states"]) + " |")
    statuses = ["confirmed", "cancelled", "failed", "pending"]
    out += ["", "| orders | " + " | ".join(statuses) + " |", "|---|" + "---:|" * len(statuses)]
    for style, row in sorted(s["orders"].items()):
        out.append(f"| {style} | " + " | ".join(str(row.get(k, 0)) for k in statuses) + " |")
    load = s["load"]
    scenarios = ", ".join(f"{k} {v}" for k, v in sorted(load["scenarios"].items()))
    statuses_seen = ", ".join(f"{k}: {v}" for k, v in sorted(load["statuses"].items()))
    out += [
        "",
        "### Load and counts",
        "",
        "| what | count |",
        "|---|---:|",
        f"| idempotency keys (scenarios: {scenarios}) | {load['keys']} |",
        f"| HTTP requests ({statuses_seen}) | {load['requests']} |",
        f"| transport errors (retried with the same key) | {load['transport_errors']} |",
        f"| 409 in flight (retried) | {load['in_flight_409']} |",
        f"| identical replays of retried / duplicate requests | {load['replays_identical']} |",
    ]
    for name, value in s["counts"].items():
        out.append(f"| {name} | {value} |")
    out += [
        "",
        "### Invariants (after heal and drain)",
        "",
        "| invariant | violations | detail |",
        "|---|---:|---|",
    ]
    for r in s["invariants"]:
        mark = "PASS" if r["violations"] == 0 else "**FAIL**"
        detail = r["detail"].replace("|", "/")
        out.append(f"| {mark} {r['name']} | {r['violations']} | {detail} |")
    out += [
        "",
        f"Throughput: {s['throughput']:.2f} orders settled/s over the load; "
        f"{s['requests_per_second']:.2f} HTTP requests/s. "
        f"Violations in all: **{s['violations']}**.",
        "",
    ]
    return "\n".join(out)


def plot(summary: dict, samples: list[dict], path: Path) -> bool:
    """Write the PNG; False when matplotlib (the ``chaos`` extra) is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = summary["t0"]
    good = [x for x in samples if x.get("settled") is not None]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 7), sharex=True)
    if good:
        ts = [x["t"] - t0 for x in good]
        rate = []
        for i, x in enumerate(good):
            j = max(0, i - 5)
            dt = x["t"] - good[j]["t"]
            rate.append((x["settled"] - good[j]["settled"]) / dt if dt > 0 else 0.0)
        top.plot(ts, rate, color="tab:green", label="orders settled / s (5 s window)")
        bottom.plot(ts, [x["pending_orders"] for x in good], label="pending orders")
        bottom.plot(ts, [x["outbox_pending"] for x in good], label="outbox events pending")
        bottom.plot(ts, [x["live_sagas"] for x in good], label="sagas running/compensating")
    colours = Counter()
    palette = plt.get_cmap("tab20")
    kinds = sorted({f["kind"] for f in summary["faults"]})
    for f in summary["faults"]:
        start, end = f["started"] - t0, max(f["ended"] - t0, f["started"] - t0 + 1.0)
        colour = palette(kinds.index(f["kind"]) % 20)
        for ax in (top, bottom):
            ax.axvspan(start, end, color=colour, alpha=0.3, lw=0)
        colours[f["kind"]] += 1
        top.text(
            start,
            0.98,
            f["kind"],
            rotation=90,
            va="top",
            ha="right",
            fontsize=6,
            transform=top.get_xaxis_transform(),
        )
    for name in ("load_end", "drain_end"):
        if summary.get(name):
            for ax in (top, bottom):
                ax.axvline(summary[name] - t0, color="grey", ls="--", lw=0.8)
    top.set_ylabel("throughput")
    bottom.set_ylabel("backlog")
    bottom.set_xlabel("seconds since the load started (dashed: load end, drain end)")
    top.legend(loc="upper right", fontsize=8)
    bottom.legend(loc="upper right", fontsize=8)
    top.set_title(
        f"sagaflow chaos run ({summary['profile']}, seed {summary['seed']}): "
        f"{len(summary['faults'])} faults shaded, {summary['violations']} violations"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(summary: dict, samples: list[dict], out: Path | None, log: Callable[[str], None]) -> None:
    """Print the table; with ``out``, write ``chaos-<profile>.md``, ``.png`` and
    ``.json`` (the summary and every sample) there."""
    text = table(summary)
    print(text, flush=True)
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    stem = f"chaos-{summary['profile']}"
    (out / f"{stem}.md").write_text(text)
    if not plot(summary, samples, out / f"{stem}.png"):
        log("no plot: matplotlib is not installed (pip install -e '.[chaos]')")
    (out / f"{stem}.json").write_text(
        json.dumps({**summary, "samples": samples}, indent=1, default=str)
    )
    log(f"wrote {out / stem}.md, .png and .json")
