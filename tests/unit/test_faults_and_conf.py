import re

import pytest
from django.test import override_settings

from sagaflow import ConfigurationError, faults
from sagaflow.conf import conf
from sagaflow.exceptions import FaultInjected
from sagaflow.testing import armed_fault


def test_fault_points_do_nothing_until_armed():
    faults.fault_point("step.after_action")
    with armed_fault("step.after_action"), pytest.raises(FaultInjected):
        faults.fault_point("step.after_action")
    faults.fault_point("step.after_action")


def test_unknown_fault_point_is_refused():
    with pytest.raises(
        ConfigurationError, match=re.escape("Unknown fault point 'step.afterwards'")
    ):
        faults.arm("step.afterwards")


def test_environment_fault_fires_once_per_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("SAGAFLOW_FAULTS", "step.after_claim=raise")
    monkeypatch.setenv("SAGAFLOW_FAULTS_ONCE_DIR", str(tmp_path))
    with pytest.raises(FaultInjected):
        faults.fault_point("step.after_claim")
    faults.fault_point("step.after_claim")  # already fired
    faults.fault_point("step.after_record")  # not armed


def test_settings_are_read_live_with_defaults():
    with override_settings(SAGAFLOW={"MAX_COUNTDOWN": 5}):
        assert conf.MAX_COUNTDOWN == 5
        assert conf.KEY_MAX_LENGTH == 200
    with (
        override_settings(SAGAFLOW={"MAX_COUNTDWN": 5}),
        pytest.raises(
            ConfigurationError, match=re.escape("Unknown key(s) in settings.SAGAFLOW: MAX_COUNTDWN")
        ),
    ):
        _ = conf.MAX_COUNTDOWN
