"""``manage.py sagaflow``: status as a health check, retry, compensate, graph."""

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from sagaflow.models import Saga, SagaState
from sagaflow.testing import captured_dispatches, drive, run_inline
from tests.sagaapp import sagas

pytestmark = pytest.mark.django_db


def status(capsys, *args):
    try:
        call_command("sagaflow", "status", *args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().out


def test_status_is_healthy_with_only_finished_sagas(capsys):
    run_inline(sagas.chain, {})
    code, out = status(capsys)
    assert code == 0
    assert "sagas: completed 1" in out and "outbox: 0 pending, 0 dead" in out and "ok" in out


def test_status_exits_1_and_names_failed_and_stuck_sagas(capsys):
    run_inline(sagas.chain, {"fail": {"s2": "abort"}, "comp_fail": {"s1": "always"}})
    with captured_dispatches():
        stuck = sagas.chain.start({})
    code, out = status(capsys, "--stuck-after", "0", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["sagas_by_state"] == {"failed": 1, "running": 1}
    assert report["stuck_count"] == 1 and report["stuck"][0]["id"] == str(stuck.id)
    assert report["problems"] == [
        "1 saga(s) failed and need a person (retry, or fix and resolve)",
        "1 saga(s) made no progress for 0s",
    ]


def test_retry_and_compensate_commands(capsys):
    failed = run_inline(sagas.chain, {"fail": {"s2": "abort"}, "comp_fail": {"s1": "always"}})
    Saga.objects.filter(pk=failed.pk).update(data={})
    with captured_dispatches():
        running = sagas.chain.start({})
    with captured_dispatches():
        call_command("sagaflow", "retry", str(failed.pk))
        call_command("sagaflow", "compensate", str(running.pk))
    out = capsys.readouterr().out
    assert f"{failed.pk}: compensation of step 's1' retried" in out
    assert drive(failed).state == SagaState.COMPENSATED
    assert drive(running).state == SagaState.COMPENSATED
    with pytest.raises(CommandError, match="1 of 1 refused"):
        call_command("sagaflow", "retry", str(running.pk))
    assert "a finished run is not retried" in capsys.readouterr().err


def test_graph_prints_mermaid(capsys):
    call_command("sagaflow", "graph", "crashable")
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "flowchart LR"
    assert 's0 -. on failure .-> c0(["undo charge"])' in out
    with pytest.raises(CommandError, match="No saga named 'nope'"):
        call_command("sagaflow", "graph", "nope")
