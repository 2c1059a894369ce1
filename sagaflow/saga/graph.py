"""A saga definition as a Mermaid flowchart, optionally coloured by a run's progress."""

from __future__ import annotations

import itertools

from ..models import Saga, StepState
from .definition import SagaDefinition

_CLASSES: dict[str, str] = {
    StepState.SUCCEEDED: "done",
    StepState.RUNNING: "active",
    StepState.FAILED: "failed",
    StepState.COMPENSATING: "active",
    StepState.COMPENSATED: "undone",
}
_STYLES = [
    "classDef done fill:#d4edda,stroke:#28a745",
    "classDef active fill:#fff3cd,stroke:#ffc107",
    "classDef failed fill:#f8d7da,stroke:#dc3545",
    "classDef undone fill:#e2e3e5,stroke:#6c757d",
]


def mermaid(definition: SagaDefinition, saga: Saga | None = None) -> str:
    """Steps left to right; each compensation hangs below its step, dashed arrows
    running backwards in the order compensations run."""
    lines = ["flowchart LR", f'    start(["{definition.name}"])']
    previous = "start"
    compensations = []
    for step in definition.steps:
        node = f"s{step.index}"
        label = step.name + (" (atomic)" if step.atomic else "")
        lines.append(f'    {previous} --> {node}["{label}"]')
        previous = node
        if step.has_compensation:
            compensations.append(step)
            lines.append(f'    {node} -. on failure .-> c{step.index}(["undo {step.name}"])')
    lines.append(f"    {previous} --> finish([completed])")
    undo_order = list(reversed(compensations))
    for later, earlier in itertools.pairwise(undo_order):
        lines.append(f"    c{later.index} -.-> c{earlier.index}")
    if saga is not None:
        lines.extend(f"    {style}" for style in _STYLES)
        for row in saga.steps.order_by("index"):
            css = _CLASSES.get(row.state)
            if css:
                lines.append(f"    class s{row.index} {css}")
            if row.state == StepState.COMPENSATED:
                lines.append(f"    class c{row.index} done")
    return "\n".join(lines)
