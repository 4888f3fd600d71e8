"""running_airflow(preload=...): the scheduler's command imports the named modules, then runs the Airflow CLI."""

from __future__ import annotations

import os
import subprocess

from lifecycle.devtools import local_airflow as la


def _run_with_preload(modules: tuple[str, ...], *airflow_args: str) -> subprocess.CompletedProcess:
    """The scheduler's preload command line, with `airflow <airflow_args>` in place of `airflow scheduler`."""
    command = la._command("scheduler", 0, modules)
    assert command[1] == "-c" and command[3] == ",".join(modules) and command[4] == "scheduler"
    return subprocess.run(
        [*command[:4], *airflow_args], capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )


def test_preloaded_module_is_imported_before_the_airflow_cli_runs():
    # `this` prints the Zen of Python when imported: its text before Airflow's version is the proof.
    done = _run_with_preload(("this",), "version")
    assert done.returncode == 0, done.stderr[-2000:]
    zen, version = done.stdout.index("Beautiful is better than ugly"), done.stdout.index("3.3.2")
    assert zen < version


def test_a_module_that_cannot_be_imported_stops_the_command_naming_it():
    done = _run_with_preload(("json", "lifecycle_no_such_module"), "version")
    assert done.returncode != 0
    assert "lifecycle_no_such_module" in done.stderr


def test_without_preload_the_services_run_as_before():
    assert la._command("scheduler", 0) == la._command("scheduler", 0, ())
    assert la._command("scheduler", 0)[1:] == ["-m", "airflow", "scheduler", "--skip-serve-logs"]
    assert la._command("api-server", 8080, la.TASK_PRELOAD)[1:4] == ["-m", "airflow", "api-server"]
