"""What the DAG files share: default arguments, the run's as-of date, connections, and failing fast.

Light on purpose: DAG files import this at parse time, so it imports no pandas, sklearn or mlflow.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from lifecycle.config.pipeline import PipelineConfig

log = logging.getLogger(__name__)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a DAG file builds one DAG per pipeline.

    Why: with hundreds of pipelines the build allocates hundreds of thousands of objects that all stay alive,
    and every full collection on the way walks all of them for nothing (about a tenth of the parse time with
    200 pipelines, benchmarks/parse_time.py). The collector is switched back on, if it was on, even when a
    build fails; nothing else changes.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def default_args(config: PipelineConfig) -> dict[str, Any]:
    return {
        "owner": config.owner,
        "retries": int(os.environ.get("LIFECYCLE_TASK_RETRIES", "2")),
        "retry_delay": dt.timedelta(seconds=int(os.environ.get("LIFECYCLE_RETRY_DELAY_SECONDS", "60"))),
    }


def run_date(context: dict[str, Any], param: str) -> str:
    """The day a run is about: the date Param `param` when given, else the logical date, else when it was due."""
    chosen = (context.get("params") or {}).get(param) or triggering_extra(context).get(param)
    if chosen:
        return dt.date.fromisoformat(str(chosen)[:10]).isoformat()
    when = context.get("logical_date") or context["dag_run"].run_after
    return when.date().isoformat()


def triggering_extra(context: dict[str, Any]) -> dict[str, Any]:
    """The extra of the newest asset event that triggered this run ({} for cron or manual runs)."""
    events = [e for found in (context.get("triggering_asset_events") or {}).values() for e in found]
    return dict(events[-1].extra or {}) if events else {}


def sqlalchemy_url(conn_id: str) -> str:
    """An Airflow connection as a SQLAlchemy URL (postgres:// becomes postgresql+psycopg://)."""
    from airflow.sdk import Connection

    return as_sqlalchemy_url(Connection.get(conn_id).get_uri())


def as_sqlalchemy_url(uri: str) -> str:
    """An Airflow connection URI as SQLAlchemy takes it (Airflow knows postgres://, SQLAlchemy +psycopg)."""
    for prefix in ("postgres://", "postgresql://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg://" + uri[len(prefix) :]
    return uri


def connection_urls(config: PipelineConfig) -> dict[str, str]:
    return {s.conn_id: sqlalchemy_url(s.conn_id) for s in config.sources if s.conn_id}


def permanent_errors() -> tuple[type[BaseException], ...]:
    """Errors no retry can fix: bad configuration or data, an impossible split, a stale gate decision."""
    from lifecycle.config.pipeline import ConfigError
    from lifecycle.ml.features import SplitError
    from lifecycle.ml.ingestion import SourceError
    from lifecycle.ml.scoring import ScoringBatchError
    from lifecycle.ml.validation import DataValidationError
    from lifecycle.persistence.storage import OutsideAllowedPrefixError, TamperedArtifactError
    from lifecycle.registry.model_trust import UntrustedModelError
    from lifecycle.registry.tracking import ChampionMovedError
    from lifecycle.tasks.batch_scoring import NoChampionError

    return (
        ConfigError, SourceError, DataValidationError, ScoringBatchError, NoChampionError, SplitError,
        ChampionMovedError, UntrustedModelError, OutsideAllowedPrefixError, TamperedArtifactError,
    )  # fmt: skip


def fail_fast_on_bad_input(function: Callable[..., Any]) -> Callable[..., Any]:
    """Fail at once on what a retry cannot fix; let Airflow retry the rest (S3, database, MLflow outages).

    Either way the log says which, so whoever reads a failed task knows whether waiting will help.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except permanent_errors() as err:
            from airflow.sdk.exceptions import AirflowFailException

            log.error("not retried: %s cannot be fixed by running again: %s", type(err).__name__, err)
            raise AirflowFailException(f"{type(err).__name__}: {err}") from err
        except Exception as err:
            log.warning("retryable: %s: %s (Airflow retries it while retries remain)", type(err).__name__, err)
            raise

    return wrapper


def end_mlflow_run_on_failure(config: PipelineConfig) -> Callable[[dict[str, Any]], None]:
    """An `on_failure_callback` that marks the Airflow run's MLflow run FAILED, naming the task and error."""

    def callback(context: dict[str, Any]) -> None:
        from lifecycle.tasks.retraining import fail_run

        ti = context["ti"]
        error = context.get("exception")
        try:
            failed = _segment_of(config, ti)
            fail_run(failed, context["dag"].dag_id, context["run_id"], ti.task_id, repr(error)[:4000])
        except Exception:  # a callback must not hide the task's own failure
            log.exception("could not mark the MLflow run of %s as FAILED", context["run_id"])

    return callback


def _segment_of(config: PipelineConfig, ti: Any) -> PipelineConfig:
    """The segment a failed mapped task trained (its map index into plan_segments' list), else the pipeline."""
    index = getattr(ti, "map_index", -1)
    if config.segments is None or index is None or index < 0:
        return config
    planned = ti.xcom_pull(task_ids="plan_segments") or []
    return config.for_segment(planned[index]) if index < len(planned) else config


def predictions_asset(config: PipelineConfig) -> Any:
    """Updated by every batch written; the drift check is scheduled on it."""
    from airflow.sdk import Asset

    return Asset(name=f"{config.name}__predictions", uri=f"x-lifecycle://{config.name}/predictions")


def retrain_request_asset(config: PipelineConfig) -> Any:
    """Updated when the drift policy asks for a retrain; the retrain DAG is scheduled on it and on cron."""
    from airflow.sdk import Asset

    return Asset(name=f"{config.name}__retrain_request", uri=f"x-lifecycle://{config.name}/retrain-request")


def labels_asset(config: PipelineConfig) -> Any:
    """Updated by whatever loads new labels (a POST to /api/v2/assets/events, or a producer DAG's outlet);
    the performance DAG is scheduled on it. An event's extra may say `as_of_date`: the day labels arrived by."""
    from airflow.sdk import Asset

    return Asset(name=f"{config.name}__labels", uri=f"x-lifecycle://{config.name}/labels")


def as_of_from_events(context: dict[str, Any], param: str = "as_of_date") -> str:
    """The day a monitoring run is about: the Param, else the newest day the triggering events name (their
    `as_of_date` or `batch_key`: a predictions event is about its batch), else the run's logical date."""
    if (context.get("params") or {}).get(param):
        return run_date(context, param)
    days = [
        str(e.extra.get("as_of_date") or e.extra.get("batch_key"))[:10]
        for found in (context.get("triggering_asset_events") or {}).values()
        for e in found
        if e.extra and (e.extra.get("as_of_date") or e.extra.get("batch_key"))
    ]
    if days:
        return max(dt.date.fromisoformat(d) for d in days).isoformat()
    return run_date(context, param)
