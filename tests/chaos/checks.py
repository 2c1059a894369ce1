"""The invariants of issue 7, checked after heal and drain over the shop's tables, the
fake services' own records and logs, and what the load generator saw; the checks of
the probe fault kinds (5c, 9 to 13) are in ``fault_checks``.

Each check returns the number of offenders and the first few of them; a check with
nothing to look at says so in its detail rather than passing silently.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from datetime import timedelta

from django.db.models import Count

import sagaflow
from demo_shop import invariants
from demo_shop.models import Order, OrderStatus, ServiceRequest, Shipment
from sagaflow.models import InboxMessage, OutboxEvent, Saga, SagaStep
from sagaflow.outbox import consumers
from sagaflow.saga import registry
from sagaflow.saga.attempts import timeout_of

from .load import LoadStats
from .results import Result, _result

TERMINAL = ("completed", "compensated", "failed")
#: Service log outcomes that mean "this request acted" (a replay does not).
EFFECTS = {
    ("payments", "authorise"): {"ok", "timeout", "decline"},
    ("payments", "capture"): {"ok", "timeout"},
    ("payments", "cancel"): {"voided", "refunded", "tombstone"},
    ("shipping", "schedule"): {"ok", "timeout"},
    ("shipping", "cancel"): {"cancelled", "tombstone"},
}
ORDER_OF_SAGA = {"completed": "confirmed", "compensated": "cancelled", "failed": "failed"}


def sagas_terminal(
    sweep_interval: float,
    tolerance: float,
    allowance: dict[str, float] | None = None,
    lease_grace: float = 0.0,
) -> Result:
    """``allowance``: extra seconds for runs a fault made untouchable for a while
    (``fault_checks.lateness_allowance``). A run whose step was running when its
    deadline passed is also allowed that attempt's lease (its timeout + LEASE_GRACE):
    its compensation waits until the attempt settles, by its record or by the lease's
    expiry, never undoing an action that is still running (DESIGN §4, issue 13 hole 3)."""
    bad = []
    allowance = allowance or {}
    sagas = list(Saga.objects.all())
    for saga in sagas:
        extra = allowance.get(str(saga.id), 0.0) + _in_flight_at_deadline(saga, lease_grace)
        allowed = timedelta(seconds=sweep_interval + tolerance + extra)
        if saga.state not in TERMINAL:
            bad.append(f"{saga.id} still {saga.state}")
        elif (
            saga.deadline_at and saga.finished_at and saga.finished_at - saga.deadline_at > allowed
        ):
            late = (saga.finished_at - saga.deadline_at).total_seconds()
            bad.append(f"{saga.id} ended {late:.1f} s after its deadline")
    return _result(
        f"1 every saga terminal within deadline + sweep ({sweep_interval:g} s, +{tolerance:g} s)",
        bad,
        f"{len(sagas)} sagas",
    )


def _in_flight_at_deadline(saga: Saga, lease_grace: float) -> float:
    """The lease of the step attempt that was running when ``saga``'s deadline passed."""
    if saga.deadline_at is None:
        return 0.0
    running = [
        step
        for step in SagaStep.objects.filter(saga=saga, started_at__lt=saga.deadline_at)
        if step.finished_at is None or step.finished_at > saga.deadline_at
    ]
    if not running:
        return 0.0
    try:
        definition = registry.get_definition(saga.name, saga.version)
    except sagaflow.UnknownSagaError:
        return 0.0
    longest = 0.0
    for step in running:
        if step.index < len(definition.steps):
            longest = max(longest, timeout_of(definition.steps[step.index], "forward"))
    return longest + lease_grace


def outbox_delivery() -> tuple[Result, Result, dict[str, int]]:
    """Every committed event reached every consumer of its topic; nothing else did."""
    lost, unexpected = [], []
    events = list(OutboxEvent.objects.values_list("id", "topic", "state"))
    ids = {e[0] for e in events}
    inbox = defaultdict(dict)
    for consumer, message_id, state in InboxMessage.objects.values_list(
        "consumer", "message_id", "state"
    ):
        inbox[message_id][consumer] = state
    deliveries = 0
    for event_id, topic, state in events:
        if state != "published":
            lost.append(f"event {event_id} {topic} {state}")
            continue
        for entry in consumers.consumers_of(topic):
            got = inbox.get(event_id, {}).get(entry.name)
            deliveries += 1
            if got != "processed":
                lost.append(f"event {event_id} {topic} -> {entry.name}: {got or 'never'}")
    for message_id in inbox:
        if message_id not in ids:
            unexpected.append(f"inbox row for event {message_id} that was never committed")
    counts = {"events": len(events), "consumer deliveries": deliveries}
    return (
        _result(
            "2a no committed outbox event lost",
            lost,
            f"{len(events)} events, {deliveries} consumer deliveries",
        ),
        _result("2b nothing delivered that was never committed", unexpected, "0 unknown ids"),
        counts,
    )


def one_effect_per_key(stats: LoadStats) -> tuple[Result, Result, int]:
    bad = []
    replayed = 0
    rows = (
        ServiceRequest.objects.values("service", "operation", "key", "outcome")
        .annotate(n=Count("id"))
        .order_by()
    )
    acted: Counter = Counter()
    for row in rows:
        if row["outcome"] == "replayed":
            replayed += row["n"]
        if row["outcome"] in EFFECTS.get((row["service"], row["operation"]), ()):
            acted[(row["service"], row["operation"], row["key"])] += row["n"]
    for (service, operation, key), n in acted.items():
        if n > 1:
            bad.append(f"{service}.{operation} {key} acted {n} times")
    services = _result(
        "3a at most one effect per idempotency key at the services",
        bad,
        f"{len(acted)} keys acted once; {replayed} duplicate requests replayed",
    )
    api_bad = []
    known = set(stats.order_of_key.values())
    if len(known) != len(stats.order_of_key):
        api_bad.append("two keys answered with the same order")
    for pk in Order.objects.values_list("pk", flat=True):
        if pk not in known:
            api_bad.append(f"order {pk} belongs to no key the clients were answered for")
    api_bad += [f"client gave up on {key}" for key in stats.gave_up]
    api = _result(
        "3b one order per API idempotency key",
        api_bad,
        f"{len(stats.order_of_key)} keys -> {len(known)} orders",
    )
    return services, api, replayed


def shop_invariants() -> list[Result]:
    out = []
    pending = Order.objects.filter(status=OrderStatus.PENDING).count()
    for check in invariants.check_all():
        # An unsettled order is one lost checkout each; the other checks count once.
        failures = pending if check.name == "every order settled" else 1
        out.append(Result(f"4 {check.name}", 0 if check.ok else failures, check.detail))
    return out


def shipments_exactly_for_confirmed() -> Result:
    bad = []
    status = dict(Order.objects.values_list("pk", "status"))
    for shipment in Shipment.objects.filter(state=Shipment.State.SCHEDULED):
        pk = int(shipment.order_ref.removeprefix("order-"))
        if status.get(pk) not in (OrderStatus.CONFIRMED, OrderStatus.FAILED):
            bad.append(f"order {pk} ({status.get(pk)}) has a scheduled shipment")
    confirmed = Order.objects.filter(status=OrderStatus.CONFIRMED).count()
    return _result("5a shipments exactly for confirmed orders", bad, f"{confirmed} confirmed")


def compensations_exact() -> Result:
    """Compensated exactly the steps that ran or may have run, in reverse order."""
    bad = []
    checked = 0
    steps_of = defaultdict(list)
    for step in SagaStep.objects.select_related("saga").order_by("saga_id", "index"):
        steps_of[step.saga].append(step)
    for saga, steps in steps_of.items():
        definition = registry.get_definition(saga.name, saga.version)
        has_undo = {s.name: s.has_compensation for s in definition.steps}
        compensated = [s for s in steps if s.state == "compensated"]
        if saga.state == "completed":
            if any(s.state != "succeeded" for s in steps):
                bad.append(f"{saga.id} completed with {[s.state for s in steps]}")
            continue
        if saga.state != "compensated":
            continue
        checked += 1
        for s in steps:
            if s.state == "compensated" and s.attempts == 0:
                bad.append(f"{saga.id} compensated {s.name}, which never ran")
            if s.state == "succeeded" and has_undo[s.name]:
                bad.append(f"{saga.id} left {s.name} succeeded, not compensated")
            if s.interrupted and has_undo[s.name] and s.state != "compensated":
                bad.append(f"{saga.id} interrupted {s.name} not compensated")
        times = [s.compensated_at for s in compensated]
        if any(a is None or b is None or a < b for a, b in itertools.pairwise(times)):
            bad.append(f"{saga.id} compensated out of reverse order")
    return _result(
        "5b compensations exactly for the steps that ran, reversed",
        bad,
        f"{checked} compensated sagas",
    )


def state_consistent(logs: str, frozen: list[str]) -> Result:
    """An order's status matches its saga's end: nothing moved backwards; and the late
    result of every step frozen past its lease was rejected, not applied."""
    bad = []
    late_sweeps = 0
    for saga_id in frozen:
        step = SagaStep.objects.filter(saga_id=saga_id).first()
        if step is not None and step.attempts == 1 and step.state == "succeeded":
            # No sweep took the lease over in the seconds the step stayed frozen past
            # it (a loaded machine): the only attempt's result is rightly kept.
            late_sweeps += 1
            continue
        if "stale result rejected: the lease of attempt 1" not in _lines_of(logs, saga_id):
            bad.append(f"frozen step of {saga_id}: no late result rejected")
        if step is None or step.state != "succeeded" or (step.result or {}).get("attempt") == 1:
            got = None if step is None else (step.state, step.result)
            bad.append(f"frozen step of {saga_id}: the late attempt's result was applied {got}")
    states = dict(Saga.objects.values_list("id", "state"))
    n = 0
    for order in Order.objects.filter(saga_id__isnull=False):
        n += 1
        expected = ORDER_OF_SAGA.get(states.get(order.saga_id))
        if expected and order.status != expected:
            bad.append(f"order {order.pk} {order.status}, saga {states.get(order.saga_id)}")
    stale = logs.count("stale result rejected")
    return _result(
        "6 state never moves backwards; late results rejected",
        bad,
        f"{n} orchestrated orders match their saga; {stale} stale results rejected "
        f"({len(frozen) - late_sweeps} from steps frozen past their lease; "
        f"{late_sweeps} frozen steps not taken over in time)",
    )


def _lines_of(logs: str, saga_id: str) -> str:
    return "\n".join(line for line in logs.splitlines() if f"saga_id={saga_id}" in line)


def failed_alerted(logs: str) -> Result:
    alerted = set(re.findall(r"saga failed and needs a person.*saga_id=([0-9a-f-]{36})", logs))
    failed = [str(pk) for pk in Saga.objects.filter(state="failed").values_list("id", flat=True)]
    bad = [f"{pk} failed without an alert" for pk in failed if pk not in alerted]
    return _result("7 every failed saga raised an alert", bad, f"{len(failed)} failed, alerted")


def replays_identical(stats: LoadStats) -> Result:
    bad = list(stats.replay_mismatches) + [
        f"changed body accepted: {x}" for x in stats.changed_body_accepted
    ]
    return _result(
        "8 every replayed API response equals the first",
        bad,
        f"{stats.replays_identical} identical replays, "
        f"{stats.changed_body_refused} changed bodies refused (422)",
    )


def run_all(
    stats: LoadStats,
    logs: str,
    sweep_interval: float,
    faults: list[dict],
    restarts: list[tuple[float, str]],
    lease_grace: float,
) -> tuple[list[Result], dict]:
    from . import fault_checks

    frozen = [f["saga_id"] for f in faults if f["kind"] == "stop_worker_past_lease" and f["fired"]]
    delivered, unexpected, counts = outbox_delivery()
    effects, api, replayed = one_effect_per_key(stats)
    allowance = fault_checks.lateness_allowance(faults, lease_grace)
    results = [
        sagas_terminal(
            sweep_interval, tolerance=10.0, allowance=allowance, lease_grace=lease_grace
        ),
        delivered,
        unexpected,
        effects,
        api,
        *shop_invariants(),
        shipments_exactly_for_confirmed(),
        compensations_exact(),
        state_consistent(logs, frozen),
        failed_alerted(logs),
        replays_identical(stats),
        *fault_checks.run_all(faults, logs, restarts, lease_grace),
    ]
    counts["service duplicate requests (replayed)"] = replayed
    return results, counts
