"""The periodic sweep that makes every saga terminate whatever was lost.

It finds three kinds of work, each in bounded batches: leases whose worker died
(or overran), runs past their deadline, and due steps whose message never ran
(lost in a Redis flush, a crash between commit and send, a broker outage). Every
action re-checks its condition under the run's lock, so two sweeps running at
once (two beat processes) do the work once.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from ..conf import conf
from . import recovery, scans

logger = logging.getLogger("sagaflow.sweeper")


@dataclass
class SweepReport:
    expired_leases: int = 0
    deadlines: int = 0
    redispatched: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sweep() -> SweepReport:
    report = SweepReport()
    batch = conf.SWEEP_BATCH_SIZE
    for step_id in scans.expired_leases(batch):
        report.expired_leases += recovery.recover_expired_lease(step_id)
    for saga_id in scans.overdue_sagas(batch):
        report.deadlines += recovery.enforce_deadline(saga_id)
    for item in scans.take_lost_dispatches(batch, conf.REDISPATCH_AFTER):
        recovery.redispatch(item)
        report.redispatched += 1
    if report.expired_leases or report.deadlines or report.redispatched:
        logger.info("sweep: %s", report.as_dict())
    return report
