"""The checks of the fault kinds in ``probe_faults``: what each probe run must show, on
the chaos app's ground truth (``Effect``: what each step and compensation really did,
on the database's clock), the harness's observations, the process logs and the
supervisor's restarts.

Each check also says how much it looked at ("exercised"): a probe whose fault did not
reach the path it aims at is counted apart, so a check cannot pass by looking at
nothing unnoticed.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime

from sagaflow.models import OutboxEvent, Saga, SagaStep
from sagaflow.saga import registry

from .results import Result, _result

#: The error a run stopped by a definition that changed mid-run ends with
#: (``transitions.resolve``; a compensation the code no longer has: ``engine._claim``).
DEFINITION_CHANGED = ("The definition changed while this run was in flight", "definition changed")


def _effects(saga_ids=None) -> dict[str, list]:
    from .chaosapp.models import Effect

    rows = Effect.objects.order_by("id")
    if saga_ids is not None:
        rows = rows.filter(saga_id__in=saga_ids)
    found: dict[str, list] = defaultdict(list)
    for effect in rows:
        found[str(effect.saga_id)].append(effect)
    return found


# --- 5c: compensations against what the steps really did -----------------------------


def effects_compensated() -> Result:
    """Every chaos saga that ended ``compensated`` undid each step that acted (its
    ``Effect`` committed), after that action, in reverse order; a ``completed`` one
    undid nothing. ``failed`` ones (a person must look) are counted."""
    bad: list[str] = []
    effects = _effects()
    sagas = {str(s.pk): s for s in Saga.objects.filter(pk__in=list(effects))}
    steps: dict[str, list[SagaStep]] = defaultdict(list)
    for step in SagaStep.objects.filter(saga_id__in=list(sagas)).order_by("index"):
        steps[str(step.saga_id)].append(step)
    outcome: Counter = Counter()
    for saga_id, saga in sagas.items():
        outcome[saga.state] += 1
        acted: dict[str, list[int]] = defaultdict(list)
        undone: dict[str, list[int]] = defaultdict(list)
        for e in effects[saga_id]:
            if e.kind == "action":
                acted[e.step].append(e.id)
            elif e.kind == "undo":
                undone[e.step].append(e.id)
        if saga.state == "completed" and undone:
            bad.append(f"{saga.name} {saga_id} completed, yet undid {sorted(undone)}")
        if saga.state != "compensated":
            continue
        definition = registry.get_definition(saga.name)
        has_undo = {s.name: s.has_compensation for s in definition.steps}
        for step in steps[saga_id]:
            name = step.name
            if acted[name] and has_undo.get(name, True) and not undone[name]:
                bad.append(f"{saga.name} {saga_id} compensated, {name} acted and was not undone")
            if acted[name] and undone[name] and min(undone[name]) < max(acted[name]):
                bad.append(f"{saga.name} {saga_id}: {name} undone before its action settled")
            if undone[name] and step.attempts == 0:
                bad.append(f"{saga.name} {saga_id}: {name} undone, yet it never ran")
        order = [s.name for s in steps[saga_id] if undone[s.name]]
        for earlier, later in itertools.pairwise(order):
            if max(undone[later]) > min(undone[earlier]):
                bad.append(f"{saga.name} {saga_id}: {earlier} undone before {later}")
    counts = ", ".join(f"{n} {state}" for state, n in sorted(outcome.items()))
    return _result(
        "5c chaos sagas: every step that acted undone, after it settled, in reverse",
        bad,
        f"{len(sagas)} chaos sagas with effects ({counts or 'none'}); failed ones need a person",
    )


# --- 9: a frozen lock holder --------------------------------------------------------------


def lock_holder(faults: list[dict], lease_grace: float) -> Result:
    """While a frozen worker held a run's lock, the sweeper compensated another run at
    its deadline; and PostgreSQL ended the frozen session within its bound."""
    from .chaosapp.sagas import LOCK_STEP_TIMEOUT

    bad, seen = [], 0
    bound = LOCK_STEP_TIMEOUT + lease_grace + 5.0
    for f in faults:
        if f["kind"] != "stop_lock_holder" or not f["fired"]:
            continue
        seen += 1
        p = f["probes"]
        ended, released = p["probe_ended_at"], p["released_at"]
        state = Saga.objects.filter(pk=p["probe"]).values_list("state", flat=True).first()
        if ended is None:
            bad.append(
                f"probe {p['probe']} not recovered in {p['thawed_at'] - p['frozen_at']:.0f} s "
                f"while {p['locked']}'s lock was held"
            )
        elif released is not None and ended > released:
            bad.append(
                f"probe {p['probe']} recovered only {ended - released:.1f} s after the frozen "
                f"lock holder's lock was released"
            )
        if state != "compensated":
            bad.append(f"probe {p['probe']} (deadline during its retry wait) ended {state}")
        if released is None or released - p["frozen_at"] > bound:
            took = "never" if released is None else f"after {released - p['frozen_at']:.0f} s"
            bad.append(
                f"the frozen session of {p['locked']} kept its lock: released {took}, "
                f"bound {bound:.0f} s (idle_in_transaction_session_timeout)"
            )
    return _result(
        "9 a frozen lock holder delays no other run's recovery",
        bad,
        f"{seen} frozen lock holders; each time another run's deadline was handled "
        f"while the lock was held, and PostgreSQL released the lock",
    )


# --- 10: worker clocks off ------------------------------------------------------------


def clock_probes(faults: list[dict]) -> Result:
    """No lease taken from an attempt that ran within its timeout; no retry started
    before its backoff ran out (both on the database's clock)."""
    from .chaosapp.sagas import CLOCK_HOLD_TIMEOUT

    runs = [r for f in faults if f["kind"] == "clock_skew" for r in f["probes"].get("runs", [])]
    effects = _effects(runs)
    steps = {
        (str(s.saga_id), s.name): s for s in SagaStep.objects.filter(saga_id__in=runs).order_by()
    }
    bad, skewed, checked = [], 0, 0
    for saga_id in runs:
        mine = effects.get(saga_id, [])
        skewed += any(abs((e.py_at - e.at).total_seconds()) > 10 for e in mine)
        hold = steps.get((saga_id, "hold"))
        retry = steps.get((saga_id, "retry"))
        if hold is None or retry is None:
            continue
        checked += 1
        began = {e.attempt: e.at for e in mine if e.step == "hold" and e.kind == "begin"}
        done = {e.attempt: e.at for e in mine if e.step == "hold" and e.kind == "action"}
        for entry in hold.history:
            k = entry.get("attempt")
            if entry.get("outcome") == "lost" and k in began and k in done:
                ran = (done[k] - began[k]).total_seconds()
                if ran <= CLOCK_HOLD_TIMEOUT:
                    bad.append(
                        f"{saga_id}: hold attempt {k} ran {ran:.1f} s of its {CLOCK_HOLD_TIMEOUT} s"
                        f" and its lease was taken over"
                    )
        tries = {e.attempt: e for e in mine if e.step == "retry" and e.kind == "action"}
        waits = {e.get("attempt"): e.get("retry_in") for e in retry.history if e.get("retry_in")}
        if 1 in tries and 2 in tries and waits.get(1):
            gap = (tries[2].at - tries[1].at).total_seconds()
            if gap < waits[1]:
                bad.append(
                    f"{saga_id}: retry attempt 2 started {waits[1] - gap:.2f} s before its "
                    f"{waits[1]:.2f} s backoff ran out (worker clock {_skew(tries[2]):+.0f} s)"
                )
    return _result(
        "10 worker clocks decide no lease and no retry time",
        bad,
        f"{checked} chaos.clock probes checked, {skewed} of them run by a skewed worker",
    )


def _skew(effect) -> float:
    return (effect.py_at - effect.at).total_seconds()


# --- 11: a slow broker ----------------------------------------------------------------

_BATCH = re.compile(r"chaos relayed batch ids=([0-9,]*) redelivered=(True|False)")


def relayed_counts(logs: str) -> Counter:
    """How many times the relays published each event (batches the broker returned
    after a worker died are not publishes)."""
    published: Counter = Counter()
    for ids, redelivered in _BATCH.findall(logs):
        if redelivered == "False":
            published.update(int(i) for i in ids.split(",") if i)
    return published


def slow_broker(faults: list[dict], logs: str, restarts: list[tuple[float, str]]) -> Result:
    """Under a slow broker the relays keep running, and an event whose publish outlived
    the hold limit is not published again with no failed attempt counted (it would be
    sent again on every pass, never backing off nor dead-lettered: issue 13, hole 4).

    Within a slow-broker window no other fault runs, so nothing else republishes an
    event without counting: a relay killed after its publish, a session ended by a
    database restart (``point:relay.*``, ``pg_*``; their exits are not counted here).
    """
    windows = [
        (f["started"], f["ended"], f["probes"].get("hold_limit", 8.0))
        for f in faults
        if f["kind"] == "slow_broker" and f["fired"]
    ]
    others = [
        (f["started"], f["ended"] + 5.0)
        for f in faults
        if f["kind"] != "slow_broker" and f["kind"].startswith(("point:relay", "pg_"))
    ]
    bad: list[str] = []
    exits = 0
    for at, name in restarts:
        if not name.startswith("relay-") or any(a <= at <= b for a, b in others):
            continue
        for start, end, hold in windows:
            if start <= at <= end + 4 * hold:
                exits += 1
                bad.append(f"{name} exited {at - start:.0f} s into a slow broker")
    published = relayed_counts(logs)
    republished = 0
    for start, end, _ in windows:
        created = (datetime.fromtimestamp(start - 10, UTC), datetime.fromtimestamp(end, UTC))
        events = OutboxEvent.objects.filter(created_at__range=created).values_list("id", "attempts")
        for event_id, attempts in events:
            n = published.get(event_id, 0)
            if n >= 2 and attempts == 0:
                republished += 1
                bad.append(f"event {event_id} published {n} times, no failed publish counted")
    most = max(published.values(), default=0)
    return _result(
        "11 a slow broker: relays survive, a publish past the hold limit is counted",
        bad,
        f"{len(windows)} slow-broker windows: 0 relay exits, no event republished without "
        f"a counted attempt (most publishes of one event in the run: {most})",
    )


# --- 12, 13: deadlines and deploys --------------------------------------------------------


def deadline_probes(faults: list[dict]) -> Result:
    """Each run whose deadline passed during a retry wait or a running step ended
    ``compensated`` (5c checks what it undid and when); how many met their moment."""
    runs, met = [], Counter()
    for f in faults:
        if f["kind"] == "deadline_passes":
            passed = f["probes"].get("passed", {})
            runs += list(f["probes"].get("runs", {}).items())
            met.update(passed.keys())
        elif f["kind"] == "stop_lock_holder" and f["probes"].get("probe"):
            runs.append(("lock holder's other run", f["probes"]["probe"]))
    sagas = {str(s.pk): s for s in Saga.objects.filter(pk__in=[i for _, i in runs])}
    bad = []
    for kind, saga_id in runs:
        saga = sagas.get(saga_id)
        if saga is None or saga.state != "compensated":
            bad.append(f"{kind} probe {saga_id} ended {saga.state if saga else 'missing'}")
    summary = ", ".join(f"{k} {n}" for k, n in sorted(met.items())) or "none"
    return _result(
        "12 a deadline during a retry wait or a running step compensates what acted",
        bad,
        f"{len(runs)} deadline probes compensated; deadline passed in the moment aimed at: "
        f"{summary}",
    )


def deploy_runs(faults: list[dict]) -> Result:
    """Runs in flight when a pool got the renamed definition: completed, compensated
    (5c checks what it undid) or ``failed`` loudly because the code changed."""
    runs = [
        r for f in faults if f["kind"] == "definition_renamed" for r in f["probes"].get("runs", [])
    ]
    sagas = list(Saga.objects.filter(pk__in=runs))
    renamed = {
        str(e.saga_id) for rows in _effects(runs).values() for e in rows if e.variant == "renamed"
    }
    bad, outcome = [], Counter()
    for saga in sagas:
        outcome[saga.state] += 1
        if saga.state == "failed":
            if any(text in saga.error for text in DEFINITION_CHANGED):
                renamed.add(str(saga.pk))
            else:
                bad.append(f"deploy run {saga.pk} failed for another reason: {saga.error[:120]}")
    counts = ", ".join(f"{n} {state}" for state, n in sorted(outcome.items())) or "none"
    return _result(
        "13 a definition renamed mid-run: no silent skip; failed runs counted",
        bad,
        f"{len(sagas)} deploy runs ({counts}; failed = stopped by the new code, a person "
        f"must look); {len(renamed)} touched by the renamed pool",
    )


def lateness_allowance(faults: list[dict], lease_grace: float) -> dict[str, float]:
    """Extra seconds invariant 1 allows a run past its deadline: a run whose lock a
    frozen worker held can be touched by nobody until PostgreSQL ends that session
    (the step's timeout + LEASE_GRACE after the lock was taken)."""
    from .chaosapp.sagas import LOCK_STEP_TIMEOUT

    return {
        f["probes"]["locked"]: LOCK_STEP_TIMEOUT + lease_grace
        for f in faults
        if f["kind"] == "stop_lock_holder" and f["probes"].get("locked")
    }


def run_all(
    faults: list[dict], logs: str, restarts: list[tuple[float, str]], lease_grace: float
) -> list[Result]:
    return [
        effects_compensated(),
        lock_holder(faults, lease_grace),
        clock_probes(faults),
        slow_broker(faults, logs, restarts),
        deadline_probes(faults),
        deploy_runs(faults),
    ]
