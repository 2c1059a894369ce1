"""The load generator: ``POST /api/checkout`` with idempotency keys over real HTTP.

Every key is driven to a *definitive* answer (anything but a transport error, a 5xx or
409 ``idempotency-key-in-flight``), retrying with the same key and body as a careful
client would. Some keys are then replayed (the answer must be byte-identical), some are
sent twice at once, and some are reused with a different body (422 expected).
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

SKUS = ["BOOK", "MUG", "PEN", "LAMP", "SOCKS", "CHAIR"]
#: A catalogue big enough that checkouts rarely run out, with one scarce product.
CATALOGUE = [
    ("BOOK", "A book about sagas", 1800, 100_000),
    ("MUG", "Outbox mug", 900, 100_000),
    ("PEN", "Idempotent pen", 250, 100_000),
    ("LAMP", "Compensating lamp", 4200, 100_000),
    ("SOCKS", "At-least-once socks", 600, 100_000),
    ("CHAIR", "Exactly-once chair", 12000, 60),
]
#: Customers whose checkouts fail on purpose (rules armed in ``run.py``).
STEP_FAILS = "step-fails@chaos.test"  # authorise always errors: retries run out
#: Each such checkout gets a customer of its own, whose rules ``arm_customer`` writes:
#: shipping refuses, and cancelling the payment fails as many times as the compensation
#: may try (then the saga is ``failed``); later cancels by ``reconcile`` succeed.
COMPENSATION_FAILS = "compensation-fails-{n}@chaos.test"
SCENARIOS = [
    ("plain", 0.62),
    ("replayed", 0.15),
    ("concurrent", 0.08),
    ("changed", 0.08),
    ("step_fails", 0.04),
    ("compensation_fails", 0.03),
]
GIVE_UP_AFTER = 240.0  # seconds a client keeps retrying one key


@dataclass
class Answer:
    status: int
    body: bytes
    replayed: bool

    @property
    def code(self) -> str:
        try:
            return json.loads(self.body).get("code", "")
        except (ValueError, AttributeError):
            return ""

    @property
    def definitive(self) -> bool:
        if self.status >= 500:
            return False
        return not (self.status == 409 and self.code == "idempotency-key-in-flight")


@dataclass
class LoadStats:
    requests: int = 0
    transport_errors: int = 0
    statuses: Counter = field(default_factory=Counter)
    scenarios: Counter = field(default_factory=Counter)
    keys: int = 0
    #: key -> first definitive answer
    first: dict[str, Answer] = field(default_factory=dict)
    order_of_key: dict[str, int] = field(default_factory=dict)
    replays_identical: int = 0
    replay_mismatches: list[str] = field(default_factory=list)
    changed_body_refused: int = 0
    changed_body_accepted: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    in_flight_409: int = 0
    #: (wall time, status) of every response, for the plot
    timeline: list[tuple[float, int]] = field(default_factory=list)


class LoadGenerator:
    def __init__(
        self, base_url: str, *, rate: float, threads: int, seed: int, arm_customer=None
    ) -> None:
        self.base_url = base_url
        self.arm_customer = arm_customer
        self.rate = rate
        self.threads = threads
        self.seed = seed
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._counter = 0

    # --- HTTP ------------------------------------------------------------------------------

    def _post(self, key: str, body: dict, client: str) -> Answer | None:
        data = json.dumps(body, sort_keys=True).encode()
        request = urllib.request.Request(
            f"{self.base_url}/api/checkout",
            data=data,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": key,
                "Cookie": client,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                answer = Answer(
                    response.status,
                    response.read(),
                    response.headers.get("Idempotent-Replayed") == "true",
                )
        except urllib.error.HTTPError as exc:
            answer = Answer(exc.code, exc.read(), exc.headers.get("Idempotent-Replayed") == "true")
        except OSError:  # refused, reset, timed out: the outcome is unknown, retry the key
            with self._lock:
                self.stats.requests += 1
                self.stats.transport_errors += 1
            return None
        with self._lock:
            self.stats.requests += 1
            self.stats.statuses[answer.status] += 1
            self.stats.timeline.append((time.time(), answer.status))
            if answer.status == 409 and answer.code == "idempotency-key-in-flight":
                self.stats.in_flight_409 += 1
        return answer

    def _until_definitive(self, key: str, body: dict, client: str, rng: random.Random):
        started = time.monotonic()
        pause = 0.2
        while time.monotonic() - started < GIVE_UP_AFTER:
            answer = self._post(key, body, client)
            if answer is not None and answer.definitive:
                return answer
            time.sleep(pause * (0.5 + rng.random()))
            pause = min(pause * 2, 3.0)
        return None

    def _record_first(self, key: str, answer: Answer | None) -> Answer | None:
        with self._lock:
            if answer is None:
                self.stats.gave_up.append(key)
                return None
            first = self.stats.first.setdefault(key, answer)
            if first is not answer:
                self._compare(key, first, answer)
            if answer.status == 202:
                order_id = json.loads(answer.body)["order"]["id"]
                self.stats.order_of_key.setdefault(key, order_id)
            return first

    def _compare(self, key: str, first: Answer, later: Answer) -> None:
        # Of two answers to one key, at most one is the original (concurrent twins may
        # finish in either order); the other must be its byte-identical replay.
        if (
            later.status == first.status
            and later.body == first.body
            and (later.replayed or first.replayed)
        ):
            self.stats.replays_identical += 1
        else:
            self.stats.replay_mismatches.append(
                f"{key}: first {first.status} {first.body[:80]!r}, "
                f"later {later.status} replayed={later.replayed} {later.body[:80]!r}"
            )

    # --- scenarios -------------------------------------------------------------------------

    def _body(self, rng: random.Random, n: int, customer: str | None, style: str | None):
        lines = rng.sample(SKUS[:5], rng.randint(1, 2))
        if rng.random() < 0.05:
            lines.append("CHAIR")
        return {
            "customer": customer or f"c{n}@chaos.test",
            "style": style or rng.choice(["orchestrated", "choreographed"]),
            "items": [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in lines],
        }

    def _one(self, rng: random.Random, client: str) -> None:
        with self._lock:
            self._counter += 1
            n = self._counter
        scenario = rng.choices([s for s, _ in SCENARIOS], [w for _, w in SCENARIOS])[0]
        key = f"chaos-{self.seed}-{n}-{rng.getrandbits(32):08x}"
        customer = style = None
        if scenario == "step_fails":
            customer, style = STEP_FAILS, "orchestrated"
        elif scenario == "compensation_fails":
            customer, style = COMPENSATION_FAILS.format(n=n), "orchestrated"
            if not self._arm(customer):
                customer, style, scenario = None, None, "plain"
        body = self._body(rng, n, customer, style)
        with self._lock:
            self.stats.keys += 1
            self.stats.scenarios[scenario] += 1
        self._drive(rng, client, n, scenario, key, body)

    def _arm(self, customer: str) -> bool:
        """Write the customer's fault rules (the database may be restarting: retry)."""
        for _ in range(10):
            try:
                self.arm_customer(customer)
                return True
            except Exception:
                time.sleep(1.0)
        return False

    def _drive(self, rng, client, n, scenario, key, body) -> None:
        if scenario == "concurrent":
            twin_answers: list[Answer | None] = []
            twin = threading.Thread(
                target=lambda: twin_answers.append(
                    self._until_definitive(key, body, client, random.Random(n))
                )
            )
            twin.start()
            first = self._record_first(key, self._until_definitive(key, body, client, rng))
            twin.join()
            self._record_first(key, twin_answers[0] if twin_answers else None)
            return
        first = self._record_first(key, self._until_definitive(key, body, client, rng))
        if first is None:
            return
        if scenario == "replayed":
            time.sleep(rng.uniform(0, 2))
            self._record_first(key, self._until_definitive(key, body, client, rng))
        elif scenario == "changed":
            changed = {**body, "items": [{**body["items"][0], "quantity": 4}]}
            answer = self._until_definitive(key, changed, client, rng)
            with self._lock:
                if answer is not None and answer.status == 422:
                    self.stats.changed_body_refused += 1
                elif answer is not None:
                    self.stats.changed_body_accepted.append(f"{key}: {answer.status}")

    def _session(self) -> str:
        """A shopper session, as its ``Cookie`` header: the scope of this client's keys."""
        deadline = time.monotonic() + GIVE_UP_AFTER
        while True:
            try:
                with urllib.request.urlopen(f"{self.base_url}/api/session", timeout=20) as answer:
                    cookies = answer.headers.get_all("Set-Cookie") or []
                    return next(c.split(";", 1)[0] for c in cookies if c.startswith("sessionid="))
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _run(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        client = self._session()
        interval = self.threads / self.rate
        next_at = time.monotonic() + rng.uniform(0, interval)
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            next_at = max(next_at + interval, time.monotonic())
            self._one(rng, client)

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, timeout: float = GIVE_UP_AFTER + 30) -> None:
        """Stop placing new keys; keys in progress are driven to their answer."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
