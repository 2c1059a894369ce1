"""What one invariant check found: its name, how many offenders, the first few."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Result:
    name: str
    violations: int
    detail: str

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def as_dict(self) -> dict:
        return {"name": self.name, "violations": self.violations, "detail": self.detail}


def _result(name: str, bad: list[str], fine: str) -> Result:
    return Result(name, len(bad), "; ".join(bad[:4]) if bad else fine)
