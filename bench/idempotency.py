"""What an Idempotency-Key costs a view, measured side by side in one run.

Figures (each a ratio to a reference measured in the same run, interleaved,
medians of 3 repetitions, PostgreSQL):

- **first request, atomic mode**: ``@idempotent`` view in a transaction that
  inserts one ``Order``, a new key each time, vs the same view (same transaction,
  same insert) without the middleware or a key. Goal <= 1.15x.
- **replay**: the same completed key again, vs a trivial view (no database,
  a small JSON response) without the middleware. Goal <= 1.5x.
- informative: the middleware installed and a request without a key (trivial
  view) vs the trivial view without the middleware; a first request in
  claim-first mode (no transaction around the view, the claim commits first) vs
  the reference of the first figure.

Requests go through a real WSGI call path (``WSGIHandler``: request parsing,
URL resolving, the middleware chain, the response iterable; no socket), with
``CommonMiddleware`` as the rest of the stack. The scope is a constant (no user
lookup), so only the idempotency work differs between a figure and its reference.
The views, their URLconf and the call path are in ``bench.idempotency_requests``;
this module measures them and states the figures.

Standalone: ``DATABASE_URL=postgres://… python bench/idempotency.py [--quick]
[--requests=N]``
(migrates that database first). Not a test: nothing is asserted.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Figure
from bench.idempotency_requests import (
    BASE_MIDDLEWARE,
    CUSTOMER,
    SCOPE,
    WITH_MIDDLEWARE,
    URLConf,
    Wsgi,
)

SECTION = "idempotency"
REPLAY_KEY = "bench-replay-key"
TIMES = "\N{MULTIPLICATION SIGN}"


# --- measuring ------------------------------------------------------------------------


class _Variant:
    def __init__(self, name: str, wsgi: Wsgi, path: str, keys: str | None) -> None:
        self.name = name
        self.wsgi = wsgi
        self.path = path
        self.keys = keys  # None: no key; "new": a fresh key per request; else that key
        self.seconds = 0.0

    def key_list(self, n: int) -> list[str | None]:
        if self.keys == "new":
            return [uuid.uuid4().hex for _ in range(n)]
        return [self.keys] * n

    def run(self, n: int) -> None:
        keys = self.key_list(n)  # made before the clock starts
        post, path = self.wsgi.post, self.path
        start = time.perf_counter()
        for key in keys:
            post(path, key)
        self.seconds += time.perf_counter() - start


class _CachedReplay(_Variant):
    """Replays with the replay cache on (``CACHES["default"]``: per-process memory)."""

    def run(self, n: int) -> None:
        from django.conf import settings
        from django.test.utils import override_settings

        sagaflow = {**getattr(settings, "SAGAFLOW", {}), "IDEMPOTENCY_REPLAY_CACHE": "default"}
        with override_settings(SAGAFLOW=sagaflow):
            super().run(n)


def _measure(variants: list[_Variant], per_run: int, chunk: int, runs: int) -> dict[str, list]:
    """ms per request of each variant, ``runs`` times, interleaved in chunks.

    Each run sends ``per_run`` requests per variant in chunks of ``chunk``, the
    variants taking turns (the order rotates every round), so a burst of load from
    elsewhere on the machine hits every variant alike.
    """
    results: dict[str, list[float]] = {v.name: [] for v in variants}
    rounds = max(1, per_run // chunk)
    for _ in range(runs):
        for variant in variants:
            variant.seconds = 0.0
        gc.collect()
        for turn in range(rounds):
            shift = turn % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                variant.run(chunk)
        for variant in variants:
            results[variant.name].append(1000 * variant.seconds / (rounds * chunk))
    return results


def _statements(call: Callable[[], object]) -> list[str]:
    """The SQL statements ``call`` sent, as ``VERB table``."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        call()
    summary = []
    for query in captured.captured_queries:
        words = query["sql"].replace('"', "").split()
        verb = words[0].upper()
        table = next(
            (
                words[i + 1]
                for i, word in enumerate(words[:-1])
                if word.upper() in ("INTO", "UPDATE", "JOIN", "FROM")
                and not words[i + 1].startswith("(")
            ),
            "",
        )
        summary.append(f"{'SELECT' if verb == 'WITH' else verb} {table}".strip())
    return summary


def _clean(vacuum: bool = False) -> None:
    """Delete this bench's rows; ``vacuum``: and the dead ones of earlier runs, so
    every run starts from the same tables."""
    from django.db import connection

    from demo_shop.models import Order
    from sagaflow.models import IdempotencyKey

    IdempotencyKey.objects.filter(scope=SCOPE).delete()
    Order.objects.filter(customer=CUSTOMER).delete()
    if vacuum:
        with connection.cursor() as cursor:  # autocommit: VACUUM cannot run in a transaction
            cursor.execute(
                f"VACUUM (ANALYZE) {connection.ops.quote_name(IdempotencyKey._meta.db_table)}, "
                f"{connection.ops.quote_name(Order._meta.db_table)}"
            )


def figures(quick: bool = False, *, requests: int | None = None) -> list[Figure]:
    """The idempotency section; Django must be set up (``bench.common.setup_django``).

    ``requests``: per variant and run (default 800; 60 when ``quick``).
    """
    from django.test.utils import override_settings

    per_run, chunk, runs = (60, 20, 3) if quick else (800, 50, 3)
    if requests is not None:
        per_run = max(requests, chunk)
    _clean(vacuum=True)
    with override_settings(ROOT_URLCONF=URLConf(), DEBUG=False):
        plain, keyed = Wsgi(BASE_MIDDLEWARE), Wsgi(WITH_MIDDLEWARE)
        write = _Variant("write, no middleware, no key", plain, "/write/", None)
        first = _Variant("write, first request (new key), atomic", keyed, "/write-keyed/", "new")
        claim_first = _Variant(
            "write, first request (new key), claim-first", keyed, "/write-claim-first/", "new"
        )
        trivial = _Variant("trivial, no middleware", plain, "/trivial/", None)
        no_key = _Variant("trivial, middleware, no key", keyed, "/trivial/", None)
        replay = _Variant(
            "replay (completed key), view without transaction",
            keyed,
            "/write-claim-first/",
            REPLAY_KEY,
        )
        replay_atomic = _Variant(
            "replay (completed key), view in a transaction", keyed, "/write-keyed/", REPLAY_KEY
        )
        read = _Variant("one indexed read (raw SQL), no middleware", plain, "/read/", None)
        cached = _CachedReplay(
            "replay (completed key), replay cache on", keyed, "/write-claim-first/", REPLAY_KEY
        )
        variants = [write, first, claim_first, trivial, no_key, replay, replay_atomic, read, cached]
        for variant in variants:  # warm up; the first keyed POST completes REPLAY_KEY
            for _ in range(3 if quick else 30):
                variant.wsgi.post(variant.path, variant.key_list(1)[0])
        counts = {
            v.name: _statements(lambda v=v: v.wsgi.post(v.path, v.key_list(1)[0])) for v in variants
        }
        results = _measure(variants, per_run, chunk, runs)
    _clean()

    def figure(name: str, value: _Variant, reference: _Variant, goal: float | None, note: str):
        runs_v, runs_r = results[value.name], results[reference.name]
        med_v, med_r = statistics.median(runs_v), statistics.median(runs_r)
        ratio = med_v / med_r
        paired = " ".join(f"{v / r:.2f}" for v, r in zip(runs_v, runs_r, strict=True))
        note = f"{note}; ratio per run (interleaved, paired): {paired}"
        return Figure(
            section=SECTION,
            name=name,
            value=med_v,
            unit="ms/request",
            reference=reference.name,
            reference_value=med_r,
            goal=f"≤ {goal:g}{TIMES}" if goal is not None else "informative",
            met=ratio <= goal if goal is not None else True,
            runs=runs_v,
            reference_runs=runs_r,
            note=note,
            ratio=ratio,
        )

    def sql(variant: _Variant) -> str:
        statements = counts[variant.name]
        return f"{len(statements)} statements ({', '.join(statements) or 'none'})"

    how = (
        f"{per_run} requests x {runs} runs, interleaved, WSGI call path; each request "
        f"that touches the database also pays Django's connection health check"
    )
    return [
        figure(
            "first request (new key), atomic mode",
            first,
            write,
            1.15,
            f"{sql(first)} vs {sql(write)}; {how}",
        ),
        figure(
            "replay (same completed key), view without transaction",
            replay,
            trivial,
            1.5,
            f"{sql(replay)}; {how}",
        ),
        figure(
            "replay (same completed key), replay cache on",
            cached,
            trivial,
            1.5,
            f"SAGAFLOW['IDEMPOTENCY_REPLAY_CACHE'] = 'default' (per-process memory): "
            f"{sql(cached)}; {how}",
        ),
        figure(
            "replay (same completed key), view in a transaction",
            replay_atomic,
            trivial,
            None,
            f"{sql(replay_atomic)}; {how}",
        ),
        figure(
            "replay (same completed key), view without transaction, vs one read",
            replay,
            read,
            None,
            f"the floor of any replay: a view that reads one row by primary key (raw "
            f"SQL, no ORM); {how}",
        ),
        figure(
            "middleware installed, request without key",
            no_key,
            trivial,
            None,
            f"{sql(no_key)}; {how}",
        ),
        figure(
            "first request (new key), claim-first mode",
            claim_first,
            write,
            None,
            f"{sql(claim_first)} vs {sql(write)}; the claim commits before the view; {how}",
        ),
    ]


def main() -> None:
    from bench.common import setup_django

    quick = "--quick" in sys.argv[1:]
    sizes = [int(arg.split("=", 1)[1]) for arg in sys.argv[1:] if arg.startswith("--requests=")]
    setup_django()
    started = time.perf_counter()
    rows = figures(quick=quick, requests=sizes[-1] if sizes else None)
    print(
        f"idempotency figures ({time.perf_counter() - started:.1f} s, Python "
        f"{sys.version.split()[0]})"
    )
    for row in rows:
        runs = " ".join(f"{v:.3f}" for v in row.runs)
        reference_runs = " ".join(f"{v:.3f}" for v in row.reference_runs)
        print(
            f"- {row.name}: {row.value:.3f} {row.unit} vs {row.reference_value:.3f} "
            f"({row.reference}) = {row.ratio:.2f}x, goal {row.goal}, "
            f"{'met' if row.met else 'NOT met'}\n"
            f"    runs {runs} | reference {reference_runs}\n    {row.note}"
        )


if __name__ == "__main__":
    main()
