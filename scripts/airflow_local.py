"""Run a real local Airflow (api-server, scheduler, dag-processor, triggerer) on the embedded default.

`make airflow` calls this. It sets the embedded-default environment where it is not set already (the same
values as the Makefile's exports, everything under .local/), serves the UI on 127.0.0.1 (port 8080 when it
is free, else a free one, or --port), prints the address and the login once Airflow is healthy, and runs
until Ctrl-C, when it stops every service it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / ".local"
sys.path.insert(0, str(REPO / "include"))

from lifecycle.config.settings import embedded_environment  # noqa: E402
from lifecycle.devtools.local_airflow import (  # noqa: E402
    TASK_PRELOAD,
    AirflowStartError,
    free_port,
    login_banner,
    port_is_free,
    running_airflow,
    tail,
)

PREFERRED_PORT = 8080


def embedded_defaults() -> dict[str, str]:
    """The embedded default, with DAGs unpaused so that the demo pipeline schedules."""
    return {**embedded_environment(), "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False"}


def _make_sqlite_folders(env: dict[str, str]) -> None:
    """SQLite creates a database file but not its folder: make the folders of the file databases."""
    for key in ("MLFLOW_TRACKING_URI", "AIRFLOW_CONN_PREDICTIONS_DB"):
        value = env.get(key, "")
        if value.startswith("sqlite:////"):
            Path(value.removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True, exist_ok=True)


def _stop_on_sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help=f"the UI/API port on 127.0.0.1 (default {PREFERRED_PORT} if free)")
    parser.add_argument("--log-dir", type=Path, default=LOCAL / "logs" / "airflow", help="the services' logs")
    parser.add_argument("--startup-timeout", type=float, default=300, help="seconds to wait for healthy services")
    parser.add_argument(
        "--no-preload",
        action="store_true",
        help="do not import the tasks' libraries in the scheduler before it forks its task processes (each task "
        "then imports them itself: slower tasks, a faster scheduler start)",
    )
    args = parser.parse_args()

    for key, value in embedded_defaults().items():
        os.environ.setdefault(key, value)
    env = dict(os.environ)
    _make_sqlite_folders(env)
    port = args.port or (PREFERRED_PORT if port_is_free(PREFERRED_PORT) else free_port())
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    signal.signal(signal.SIGHUP, _stop_on_sigterm)

    print(f"Starting Airflow on http://127.0.0.1:{port}/ (AIRFLOW_HOME={env['AIRFLOW_HOME']})", flush=True)
    print(f"DAGs from {env['AIRFLOW__CORE__DAGS_FOLDER']}; service logs in {args.log_dir}", flush=True)
    try:
        preload = () if args.no_preload else TASK_PRELOAD
        with running_airflow(
            env, port, log_dir=args.log_dir, startup_timeout=args.startup_timeout, preload=preload
        ) as airflow:
            print(login_banner(airflow), flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            while True:
                for name, proc in airflow.processes.items():
                    if proc.poll() is not None:
                        print(f"airflow {name} exited with code {proc.returncode}; the end of its log:", flush=True)
                        print(tail(airflow.log_file(name)), flush=True)
                        return 1
                time.sleep(1)
    except AirflowStartError as error:
        print(f"Airflow did not start: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nStopped: every Airflow service has exited.", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
