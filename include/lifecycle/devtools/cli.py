"""`python -m lifecycle check|run|portable|serve`: the newcomer's loop, check a pipeline YAML against its data,
run its DAGs once on the embedded default (the environment `make demo` uses; variables already set win),
prove its champion runs outside this repository, and serve the champions online.

Imports nothing heavy at the top: `--help` and argument errors answer at once, and Airflow is imported only
where a SQL source needs a connection.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DAG_KINDS = ("retrain", "batch_predict", "drift_check", "performance", "rollout")


def dag_kinds(config: Any) -> tuple[str, ...]:
    """The DAGs a pipeline gets: performance with a `labels:` source, rollout with a serving rollout."""
    return tuple(
        kind
        for kind in DAG_KINDS
        if (kind != "performance" or config.labels is not None)
        and (kind != "rollout" or config.serving.rollout.mode != "none")
    )


_RUN = re.compile(r"<DagRun \S+ @ .+?: (\S+), state:")
_FINISHED = re.compile(r"DagRun Finished: dag_id=[^,]+, .*?run_id=([^,]+), .*?state=(\w+)")
_ERROR = re.compile(r"^[\w.]+(?:Exception|Error): .+")  # a traceback's last line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lifecycle", description="Check a pipeline YAML against its data; run one of its DAGs once."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check a pipeline YAML against its data; exit 1 on errors")
    check.add_argument("pipeline", type=Path, help="the pipeline YAML file")
    check.add_argument(
        "--as-of",
        type=dt.date.fromisoformat,
        help="check the training window ending the day before (default: the day after the base source's "
        "newest partition or timestamp, i.e. what tomorrow's retrain reads; today for a SQL base source)",
    )
    check.add_argument("--window-days", type=_days, help="the window's length (default: training.window_days)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    run = commands.add_parser("run", help="run one DAG once with `airflow dags test` on the embedded default")
    run.add_argument("dag_id", help="<pipeline>__retrain, __batch_predict, __drift_check, __performance or __rollout")
    run.add_argument("date", type=dt.date.fromisoformat, help="the logical date, YYYY-MM-DD")
    run.add_argument("--conf", type=_conf, default={}, help="the run's Params as a JSON object")
    portable = commands.add_parser(
        "portable", help="load, predict and serve the champion from a clean virtualenv; compare with batch rows"
    )
    portable.add_argument("pipeline", type=Path, help="the pipeline YAML file")
    portable.add_argument("--date", type=dt.date.fromisoformat, help="the batch to compare (default: the newest)")
    portable.add_argument("--no-serve", action="store_true", help="skip `mlflow models serve`")
    serve = commands.add_parser("serve", help="serve every pipeline's champion over HTTP (docs/serving.md)")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8787, help="the port to listen on (default 8787)")
    serve.add_argument("--access-log", action="store_true", help="log every request (off: it costs latency)")
    args = parser.parse_args(argv)
    embedded_environment()
    handlers = {"check": check_command, "run": run_command, "portable": portable_command, "serve": serve_command}
    return handlers[args.command](args)


def _days(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of days")
    return int(text)


def _conf(text: str) -> dict[str, Any]:
    try:
        conf = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(conf, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. \'{"reason": "trying it"}\'')
    return conf


def embedded_environment() -> dict[str, str]:
    """The embedded default (lifecycle.config.settings) under whatever the environment already sets."""
    from lifecycle.config.settings import embedded_environment as defaults

    for key, value in defaults().items():
        os.environ.setdefault(key, value)
    if os.environ.get("PIPELINES_DIR"):  # Airflow parses the DAG files elsewhere: make it absolute
        os.environ["PIPELINES_DIR"] = str(Path(os.environ["PIPELINES_DIR"]).resolve())
    return dict(os.environ)


def pipelines_dir() -> Path:
    from lifecycle.config.pipeline import PIPELINES_DIR

    return Path(os.environ.get("PIPELINES_DIR") or PIPELINES_DIR).resolve()


def connection_urls(conn_ids: Iterable[str]) -> dict[str, str]:
    """Airflow connections as SQLAlchemy URLs, found as Airflow finds them outside a task: AIRFLOW_CONN_<ID>,
    secrets backends, then the metadata database (the SDK's Connection.get skips the database there).
    Undefined ones are left out, and the check reports them by name."""
    wanted = sorted({c for c in conn_ids if c})
    if not wanted:
        return {}
    from airflow.models.connection import Connection

    from lifecycle.tasks.airflow_glue import as_sqlalchemy_url

    urls = {}
    for conn_id in wanted:
        try:
            urls[conn_id] = as_sqlalchemy_url(Connection.get_connection_from_secrets(conn_id).get_uri())
        except Exception as err:  # not defined, or no metadata database yet
            print(f"connection {conn_id!r}: {type(err).__name__}: {err}", file=sys.stderr)
    return urls


def check_command(args: argparse.Namespace) -> int:
    from lifecycle.config.pipeline import ConfigError, load_pipeline
    from lifecycle.devtools.check import check_pipeline, default_as_of, render

    try:
        config = load_pipeline(args.pipeline)
    except (ConfigError, OSError) as err:
        print(f"ERROR    {err}" if isinstance(err, ConfigError) else f"ERROR    {args.pipeline}: {err}")
        return 1
    as_of = args.as_of or default_as_of(config)
    urls = connection_urls(s.conn_id for s in config.sources if s.sql is not None)
    report = check_pipeline(config, as_of, args.window_days, urls, path=args.pipeline)
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    if args.pipeline.resolve().parent != pipelines_dir():
        print(
            f"note: {args.pipeline} is not in {pipelines_dir()}: set PIPELINES_DIR={args.pipeline.parent} "
            "for Airflow (and `make run`) to build its DAGs",
            file=sys.stderr,
        )
    return 1 if report["errors"] else 0


def portable_command(args: argparse.Namespace) -> int:
    from lifecycle.config.pipeline import load_pipeline
    from lifecycle.registry.portable import PortabilityError, check

    config = load_pipeline(args.pipeline)
    urls = connection_urls([config.prediction.conn_id, *(s.conn_id for s in config.sources if s.sql is not None)])
    if config.prediction.conn_id not in urls:
        print(f"ERROR    connection {config.prediction.conn_id!r} (prediction.conn_id) is not defined")
        return 1
    try:
        result = check(config, urls[config.prediction.conn_id], args.date and args.date.isoformat(), urls,
                       serve=not args.no_serve)  # fmt: skip
    except PortabilityError as err:
        print(f"ERROR    {err}")
        return 1
    print(json.dumps(result, indent=2))
    return 0


def serve_command(args: argparse.Namespace) -> int:
    """The online prediction service (lifecycle.serving) in this process, until SIGTERM or Ctrl-C."""
    import logging

    import uvicorn

    from lifecycle.serving.app import create_app
    from lifecycle.serving.settings import serving_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per model load is noise here
    try:
        settings = serving_settings()
    except ValueError as err:
        print(f"ERROR    {err}")
        return 2
    print(f"serving the pipelines of {pipelines_dir()} on http://{args.host}:{args.port} "
          f"(API key {'required' if settings.api_key else 'not set'}; poll every {settings.poll_seconds:g}s)")  # fmt: skip
    # Graceful shutdown: requests in flight finish (30 s at most), then the lifespan writes the queued log rows.
    uvicorn.run(create_app(settings=settings), host=args.host, port=args.port, access_log=args.access_log,
                timeout_graceful_shutdown=30, log_level="info")  # fmt: skip
    return 0


def run_command(args: argparse.Namespace) -> int:
    from lifecycle.config.pipeline import load_pipelines
    from lifecycle.devtools.local_airflow import AirflowStartError, migrate_db

    env, date = dict(os.environ), args.date.isoformat()
    env.setdefault("LIFECYCLE_TASK_RETRIES", "0")  # a one-off run reports a failure at once, not minutes later
    configs, errors = load_pipelines(pipelines_dir())
    dags = {f"{c.name}__{kind}": (c, kind) for c in configs for kind in dag_kinds(c)}
    if args.dag_id not in dags:
        print(f"no DAG {args.dag_id!r} from the pipelines in {pipelines_dir()}; there are: {sorted(dags) or 'none'}")
        for error in errors:
            print(f"  invalid: {error}")
        return 1
    config, kind = dags[args.dag_id]
    conf = dict(args.conf)
    if kind == "drift_check" and not conf.get("batch_date"):
        conf["batch_date"] = date  # outside the scheduler no predictions event triggers it: name the batch
        print(f"checking the batch of {date} (pass --conf '{{\"batch_date\": ...}}' for another)")
    for key in ("MLFLOW_TRACKING_URI", "AIRFLOW_CONN_PREDICTIONS_DB"):  # SQLite makes files, not folders
        if env[key].startswith("sqlite:////"):
            Path(env[key].removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    try:
        seconds = migrate_db(env, home / "db-migrate.log")
    except AirflowStartError as err:
        print(err)
        return 1
    if seconds > 1:
        print(f"migrated Airflow's metadata database in {seconds:.0f}s (log: {home / 'db-migrate.log'})")
    command = [sys.executable, "-m", "airflow", "dags", "test", args.dag_id, date]
    if conf:
        command += ["--conf", json.dumps(conf)]
    started = time.monotonic()
    returncode, run_id, state, error = _stream(command, env)
    print(
        f"\n== {args.dag_id} {date}: {state or 'FAILED'} in {time.monotonic() - started:.0f}s"
        f"{f' (run {run_id})' if run_id else ''}"
    )
    ok = returncode == 0 and state == "success"
    if error and not ok:
        print(f"   error: {error}")
    if run_id:
        _summarise(config, kind if ok else None, args.dag_id, run_id, date, conf)
    return 0 if ok else 1


def _stream(command: list[str], env: dict[str, str]) -> tuple[int, str | None, str | None, str | None]:
    """Run it with its output passed through line by line; the exit code, run id, final state, last error."""
    run_id = state = error = None
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1, errors="replace"
    ) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                if run_id is None and (found := _RUN.search(line)):
                    run_id = found.group(1)
                if found := _FINISHED.search(line):
                    run_id, state = found.group(1), found.group(2)
                if found := _ERROR.match(line):
                    error = found.group(0)
        except KeyboardInterrupt:  # the terminal sent SIGINT to Airflow too: let it stop its tasks
            process.wait(timeout=60)
            raise
        returncode = process.wait()
    sys.stdout.flush()
    return returncode, run_id, state, error


def task_states(dag_id: str, run_id: str) -> list[tuple[str, str]]:
    """(task_id, state) of every task instance of the run (mapped ones once per index), in the order they ran.

    Read from the metadata database in this process, so the summary shares one Airflow import with the
    connection look-up instead of paying for a CLI process."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = (
        select(TaskInstance.task_id, TaskInstance.state)
        .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        .order_by(TaskInstance.start_date.is_(None), TaskInstance.start_date, TaskInstance.map_index)
    )
    with create_session() as session:
        return [(task_id, str(state or "no state")) for task_id, state in session.execute(query).all()]


def _summarise(config: Any, kind: str | None, dag_id: str, run_id: str, date: str, conf: dict) -> None:
    """Each task's state, where the run's artifacts are, and (after a success) what it decided or wrote."""
    from lifecycle.persistence import storage

    try:
        counted = collections.Counter(task_states(dag_id, run_id))
        for (task_id, state), count in counted.items():
            print(f"   {state:16s} {task_id}{f' (x{count})' if count > 1 else ''}")
        root = storage.artifact_uri(config.name, run_id)
        local = storage.local_path(root)
        folders = sorted(p.name for p in local.iterdir()) if local and local.is_dir() else []
        print(f"   artifacts: {root}/{' (' + ', '.join(folders) + ')' if folders else ''}")
        if kind is None:
            return
        {"retrain": _retrain, "batch_predict": _batch_predict, "drift_check": _drift_check}[kind](
            config, root, date, conf
        )
    except Exception as err:  # the summary is a convenience: never hide the run's own result behind it
        print(f"   (summary incomplete: {type(err).__name__}: {err})")


def _retrain(config: Any, root: str, date: str, conf: dict) -> None:
    from lifecycle.config.settings import get_settings
    from lifecycle.persistence import storage
    from lifecycle.registry import tracking

    decision_uri = f"{root}/evaluation/decision.json"
    if storage.exists(decision_uri):
        decision = storage.read_json(decision_uri)
        print(f"   gate: {decision['verdict']}, action {decision['action']}: {decision['reason']}")
        print(f"   evaluation report: {root}/evaluation/report.html")
    champion = tracking.champion(config.registered_model_name)
    print(
        f"   MLflow: experiment lifecycle/{config.name} at {_shown(get_settings().mlflow_tracking_uri)}; "
        f"champion {f'version {champion.version}' if champion else 'none yet'}"
    )
    print(f"   next: make run DAG={config.name}__batch_predict DATE={conf.get('as_of_date') or date}")


def _batch_predict(config: Any, root: str, date: str, conf: dict) -> None:
    from lifecycle.persistence.predictions_db import count_batch, engine_for

    batch = conf.get("batch_date") or date
    url = connection_urls([config.prediction.conn_id]).get(config.prediction.conn_id)
    rows = "?"
    if url:
        engine = engine_for(url)
        try:
            rows = count_batch(engine, config.prediction.table, config.name, dt.date.fromisoformat(batch))
        finally:
            engine.dispose()
    print(
        f"   predictions: {rows} rows for batch {batch} in table {config.prediction.table} "
        f"of connection {config.prediction.conn_id} ({_shown(url) if url else 'not defined'})"
    )
    print(f"   next: make run DAG={config.name}__drift_check DATE={batch}")


def _drift_check(config: Any, root: str, date: str, conf: dict) -> None:
    from lifecycle.persistence import storage

    report = storage.read_json(f"{root}/drift/report.json")
    drifted = [name for name, feature in report.get("features", {}).items() if feature.get("drifted")]
    policy = report.get("policy", {})
    print(
        f"   drift on batch {report.get('batch_key')}: {'DRIFT' if report.get('dataset_drift') else 'stable'}"
        f"{' (' + ', '.join(drifted) + ')' if drifted else ''}; report {root}/drift/report.html"
    )
    print(f"   policy: retrain {'requested' if policy.get('retrain') else 'not requested'}: {policy.get('reason', '')}")
    print(f"   rows per feature in table {config.drift.metrics_table} of connection {config.prediction.conn_id}")
    if policy.get("retrain") and report.get("batch_key"):
        as_of = dt.date.fromisoformat(report["batch_key"]) + dt.timedelta(days=1)
        print(
            f"   the retrain-request Asset was updated: a running scheduler (make airflow) starts {config.name}__retrain;"
            f" or run it: make run DAG={config.name}__retrain DATE={as_of}"
        )


def _shown(url: str) -> str:
    """A URL to print: decoded (Airflow quotes a SQLite path), without its password."""
    from urllib.parse import unquote

    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", unquote(url))
