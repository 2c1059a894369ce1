"""A log format that keeps sagaflow's structured fields (``saga_id``, ``step``, ...), so
the harness can tie an alert in a worker's log to the saga that raised it."""

import logging

_FIELDS = ("saga_id", "step", "attempt")


class ExtraFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = [f"{name}={getattr(record, name)}" for name in _FIELDS if hasattr(record, name)]
        return f"{text} [{' '.join(extra)}]" if extra else text
