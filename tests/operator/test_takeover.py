"""Operator HA: two real operator processes with kopf peering against the emulator. The
standby serves the webhook, stays out of reconciling, and takes over when the active one is
killed. (Takeover time is measured by `python -m tests.operator.bench_operator takeover`;
here it is only bounded generously.)"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from mailwarden_operator.common.kube import CONFIGMAPS, SPAMPOLICIES
from tests.operator.conftest import (Cluster, FakeDeploymentController, OperatorProcess,
                                     condition, example_policy, model_configmap, wait_for)
from tests.operator.emulator import EmulatorThread
from tests.operator.test_operator_emulated import _review

pytestmark = pytest.mark.timeout(240)

LIFETIME = 5  # seconds a silent peer counts as alive: bounds takeover after SIGKILL


def _reconciled(cluster: Cluster, ns: str, name: str) -> bool:
    ready = condition(cluster.kube.get(SPAMPOLICIES, ns, name), "Ready")
    return bool(ready and ready["status"] == "True")


def test_standby_takes_over_when_the_active_operator_dies(tmp_path: Path) -> None:
    with EmulatorThread() as emulator:
        cluster = Cluster(emulator)
        _takeover(cluster, tmp_path)


def _takeover(cluster: Cluster, tmp_path: Path) -> None:
    with FakeDeploymentController(cluster.kube):
        peering = ("--peering", "mailwarden", "--peering-lifetime", str(LIFETIME))
        active = OperatorProcess(cluster, tmp_path, *peering, "--priority", "200",
                                 name="active")
        standby = OperatorProcess(cluster, tmp_path, *peering, "--priority", "100",
                                  name="standby")
        try:
            active.start()
            standby.start()
            cluster.kube.create(CONFIGMAPS, "ha", model_configmap("ha"))
            cluster.kube.create(SPAMPOLICIES, "ha", example_policy("ha", "first"))
            wait_for(lambda: _reconciled(cluster, "ha", "first"), 60, "first policy Ready")
            time.sleep(2)  # a couple of resync rounds
            assert active.metric("mailwarden_operator_reconciles_total") > 0
            assert standby.metric("mailwarden_operator_reconciles_total") == 0, \
                "the standby reconciled while the active replica was alive"

            # Every replica serves the webhook, the standby included.
            spec = example_policy("ha", "x")["spec"]
            spec["policy"]["rules"][0]["pattern"] = "(oops"
            assert _review(standby.webhook_port, spec)["allowed"] is False

            active.stop(signum=signal.SIGKILL)
            killed = time.monotonic()
            cluster.kube.create(SPAMPOLICIES, "ha", example_policy("ha", "second"))
            wait_for(lambda: _reconciled(cluster, "ha", "second"), 90,
                     "the standby to reconcile after the active replica was killed")
            takeover = time.monotonic() - killed
            print(f"takeover after SIGKILL with peering lifetime {LIFETIME}s: "
                  f"{takeover:.1f}s")
            assert standby.metric("mailwarden_operator_reconciles_total") > 0
        finally:
            active.stop()
            standby.stop()
