"""The local Airflow launcher: real services schedule a triggered run and the asset-triggered run it causes.

Runs on its own AIRFLOW_HOME and DAGs folder (two tiny DAGs written here), not the project's DAGs.
"""

from __future__ import annotations

import json
import os
import socket
import textwrap
from pathlib import Path

import pytest

from lifecycle.devtools.local_airflow import (
    AirflowApiError,
    AirflowStartError,
    _request,
    login_banner,
    running_airflow,
    trigger,
    unpause,
    wait_for_dag,
    wait_for_run,
)

pytestmark = pytest.mark.airflow

PRODUCER, CONSUMER = "local_airflow_producer", "local_airflow_consumer"

DAGS = '''
"""Two tiny DAGs for tests/integration/test_local_airflow.py: the producer updates an asset, the consumer is
scheduled on it and writes down the asset events that triggered it."""

import json
from pathlib import Path

from airflow.sdk import Asset, dag, task

SIGNAL = Asset(name="local_airflow_signal", uri="file://{out}/signal")
OUT = Path("{out}")


@dag(dag_id="{producer}", schedule=None, catchup=False)
def producer():
    @task(outlets=[SIGNAL])
    def produce(**context):
        (OUT / "produced.json").write_text(json.dumps(context["dag_run"].conf))
        return "produced"

    produce()


@dag(dag_id="{consumer}", schedule=[SIGNAL], catchup=False)
def consumer():
    @task
    def consume(**context):
        events = context["triggering_asset_events"][SIGNAL]
        (OUT / "consumed.json").write_text(json.dumps([e.source_run_id for e in events]))

    consume()


producer()
consumer()
'''


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port`, from /proc/net/tcp{,6} (hex, as the kernel has them)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_scheduler_runs_a_triggered_dag_and_the_asset_triggered_one(tmp_path):
    dags, out = tmp_path / "dags", tmp_path / "out"
    dags.mkdir()
    out.mkdir()
    (dags / "local_airflow_dags.py").write_text(
        textwrap.dedent(DAGS).format(out=out, producer=PRODUCER, consumer=CONSUMER)
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AIRFLOW__") and key not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG")
    }
    env |= {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(tmp_path / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # unpaused below through the API
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "LOCAL_AIRFLOW_TEST_MARKER": str(tmp_path),
    }

    with running_airflow(env, log_dir=tmp_path / "logs", startup_timeout=150, grace=15) as airflow:
        processes = list(airflow.processes.values())
        print(f"\nAirflow healthy after {airflow.startup_seconds:.1f}s")

        # The api-server listens on loopback only (127.0.0.1 is 0100007F in /proc/net/tcp).
        assert _listening_addresses(airflow.port) == {"0100007F"}
        assert airflow.base_url == f"http://127.0.0.1:{airflow.port}"

        # The printed login works; a wrong password and a missing token do not.
        banner = login_banner(airflow)
        assert f"username {airflow.username}" in banner and f"password {airflow.password}" in banner
        assert airflow.token(airflow.username, airflow.password)
        with pytest.raises(AirflowApiError) as wrong:
            airflow.token(airflow.username, airflow.password + "x")
        assert wrong.value.status == 401
        with pytest.raises(AirflowApiError) as anonymous:
            _request("GET", f"{airflow.base_url}/api/v2/dags", None, headers={}, timeout=10)
        assert anonymous.value.status == 401

        for dag_id in (PRODUCER, CONSUMER):
            wait_for_dag(airflow, dag_id, timeout=90, poll=1)
            assert unpause(airflow, dag_id)["is_paused"] is False

        run = trigger(airflow, PRODUCER, {"reason": "test"})
        produced = wait_for_run(airflow, PRODUCER, run["dag_run_id"], timeout=120, poll=1)
        assert produced["state"] == "success", produced
        assert json.loads((out / "produced.json").read_text())["reason"] == "test"

        consumed = wait_for_run(airflow, CONSUMER, timeout=120, poll=1)
        assert consumed["state"] == "success", consumed
        assert consumed["run_type"] == "asset_triggered"
        assert json.loads((out / "consumed.json").read_text()) == [run["dag_run_id"]]

    # Nothing is left running.
    assert all(proc.poll() is not None for proc in processes)
    assert _processes_with(f"LOCAL_AIRFLOW_TEST_MARKER={tmp_path}") == []  # task processes included
    assert _listening_addresses(airflow.port) == set()


def _processes_with(variable: str) -> list[int]:
    """Live processes whose environment has `variable` (NAME=value), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if variable.encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(AirflowStartError, match="in use"):
            with running_airflow(dict(os.environ), sock.getsockname()[1], log_dir=tmp_path):
                pass


def test_a_service_that_dies_while_starting_is_reported_and_the_others_stopped(tmp_path, airflow_db):
    marker = f"LOCAL_AIRFLOW_TEST_MARKER={tmp_path}"
    env = dict(os.environ, LOCAL_AIRFLOW_TEST_MARKER=str(tmp_path))
    services = ("api-server", "no-such-service")
    with pytest.raises(AirflowStartError, match="no-such-service exited") as error:
        with running_airflow(env, log_dir=tmp_path / "logs", services=services, migrate=False):
            pytest.fail("Airflow cannot be healthy without a scheduler")
    assert "invalid choice" in str(error.value)  # the tail of that service's log is in the message
    assert (tmp_path / "logs" / "api-server.log").exists()  # started alongside, and stopped:
    assert _processes_with(marker) == []
