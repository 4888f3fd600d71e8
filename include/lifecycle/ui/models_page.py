"""The models page: what the Airflow UI's "Models" view shows, as pure functions (no Airflow import).

Reading is a handful of calls whatever the history's length: per pipeline one `get_registered_model`
(the aliases), one `search_model_versions`, one `search_runs` for the retrain runs (plus one for versions
whose runs fall outside that window), and five SQL queries (rows scored per batch, drift per feature per
batch, the registry history, realised and estimated performance per batch, the newest rollout decisions).
A table that does not exist yet is an empty section. Rendering is Jinja2 templates (autoescaped) under
templates/models_page/, with the CSS, the JavaScript and Chart.js as static files under static/ (nothing
from outside the api-server); the charts' data is JSON in the page, drawn in the browser.

`plugins/lifecycle_models.py` serves this inside Airflow; the rollback there calls `rollback` here.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from lifecycle.config.pipeline import PipelineConfig

CHAMPION = "champion"  # the alias, as lifecycle.registry.tracking names it (not imported: that module is not light)
MAX_RUNS = 500
MAX_VERSIONS = 1000
MAX_BATCHES = 400
SHOWN_RUNS = 200
SHOWN_PERFORMANCE = 120  # rows of the performance table (newest batches); the chart has every batch read
SHOWN_DECISIONS = 60
MAX_MARKERS = 400  # drifted points marked on the drift charts; past that the lines say enough


class RollbackError(ValueError):
    """A rollback that cannot be done as asked; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------- data


@dataclass
class RetrainRun:
    mlflow_run_id: str
    dag_id: str
    airflow_run_id: str
    started_ms: int | None
    status: str
    as_of: str | None
    window_days: Any
    search: str | None
    reason: str
    grid: Any
    grid_is_default: bool
    triggered_by: Any
    verdict: str | None
    gate_reason: str
    registered_version: int | None
    primary: float | None
    baseline_primary: float | None
    champion_primary: float | None
    experiment_id: str | None = None


@dataclass
class ModelVersion:
    version: int
    created_ms: int | None
    mlflow_run_id: str | None
    airflow_run_id: str | None
    aliases: list[str]
    verdict: str | None
    gate_reason: str
    primary: float | None
    holdout: dict[str, float]
    family: str | None = None  # the model family the gate's selection chose (lightgbm, linear)
    rollback_by: str | None = None
    rollback_at: str | None = None
    rollback_from: str | None = None
    rollback_reason: str | None = None


@dataclass
class Champion:
    version: int
    promoted_at: str | None  # ISO-8601 UTC
    how: str  # "gate" or "rollback"
    why: str
    by: str | None
    mlflow_run_id: str | None
    airflow_run_id: str | None
    holdout: dict[str, float]


@dataclass
class AliasMove:
    """One period of the registry history: `version` was champion from `since` until `until` (None: now)."""

    version: str
    since: str
    until: str | None
    moved_by: str
    how: str  # gate, rollback or observed
    reason: str
    previous_version: str | None
    airflow_run_id: str | None


@dataclass
class Batch:
    batch_key: str
    rows: int
    model_versions: list[str]


@dataclass
class DriftSeries:
    metric: str  # "psi" or "jensen_shannon"
    threshold: float | None  # the configured one; each point's own (noise floor included) decided `flagged`
    batches: list[str]
    values: dict[str, list[float | None]]  # feature -> one value per batch (None where not measured)
    drifted: dict[str, int]  # feature -> batches where it counted as drifted
    flagged: dict[str, list[bool]] = field(default_factory=dict)  # feature -> drifted per batch


@dataclass
class PerformancePoint:
    """One batch and model version: the primary metric realised (once labels arrived) and estimated."""

    batch_key: str
    model_version: str
    batch_rows: int | None = None
    realised: float | None = None
    realised_low: float | None = None
    realised_high: float | None = None
    labelled_rows: int | None = None  # the rows the realised value is computed from
    estimated: float | None = None
    estimated_low: float | None = None
    estimated_high: float | None = None
    estimate_error: float | None = None  # estimated minus realised
    reference: float | None = None  # the version's holdout value
    computed_at: str | None = None


@dataclass
class PerformanceSeries:
    metric: str
    higher_is_better: bool
    relative: bool  # RMSE and MAE: the policy's drop is a share of the holdout's value
    max_drop: float
    policy_enabled: bool
    floor: float | None  # the gate's floor for the metric, when it has one
    signals: list[str] = field(default_factory=lambda: ["realised", "estimated"])  # what the policy acts on
    points: list[PerformancePoint] = field(default_factory=list)  # oldest batch first, then version

    def trigger(self, reference: float | None) -> float | None:
        """Where the performance policy fires for a version with this holdout value."""
        if reference is None or not math.isfinite(reference):
            return None
        drop = self.max_drop * abs(reference) if self.relative else self.max_drop
        return reference - drop if self.higher_is_better else reference + drop


@dataclass
class RolloutDecision:
    """One day's verdict of `<pipeline>__rollout` (the columns of lifecycle.persistence.rollout_store's table)."""

    decided_on: str
    mode: str
    metric: str
    champion_version: str
    challenger_version: str
    champion_rows: int
    challenger_rows: int
    champion_value: float | None
    champion_ci_low: float | None
    champion_ci_high: float | None
    challenger_value: float | None
    challenger_ci_low: float | None
    challenger_ci_high: float | None
    difference: float | None
    difference_ci_low: float | None
    difference_ci_high: float | None
    paired: bool
    decision: str
    reason: str
    airflow_run_id: str
    decided_at: str | None


@dataclass
class PipelineView:
    name: str
    model_name: str
    retrain_dag_id: str
    primary_metric: str
    higher_is_better: bool
    champion: Champion | None = None
    versions: list[ModelVersion] = field(default_factory=list)  # newest first
    runs: list[RetrainRun] = field(default_factory=list)  # newest first
    batches: list[Batch] = field(default_factory=list)  # oldest first
    psi: DriftSeries | None = None
    js: DriftSeries | None = None
    latest_evaluation_run: str | None = None  # Airflow run id whose evaluation/report.html is the latest
    latest_drift: dict[str, str] | None = None  # {"batch_key", "airflow_run_id"} of the newest drift check
    history: list[AliasMove] = field(default_factory=list)  # newest first
    performance: PerformanceSeries | None = None
    decisions: list[RolloutDecision] = field(default_factory=list)  # newest first
    rollout_mode: str = "none"  # serving.rollout.mode, for the decisions' empty state
    errors: list[str] = field(default_factory=list)
    mlflow_calls: int = 0
    sql_queries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def _json(text: str | None) -> Any:
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return {}


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _is_missing(err: Exception) -> bool:
    code = str(getattr(err, "error_code", ""))
    return "RESOURCE_DOES_NOT_EXIST" in code or "not found" in str(err).lower()


def _retrain_run(run: Any, config: PipelineConfig) -> RetrainRun:
    tags, metrics = run.data.tags, run.data.metrics
    params = _json(tags.get("trigger.params"))
    primary = config.training.primary_metric
    grid = params.get("grid")
    version = tags.get("registered_version")
    return RetrainRun(
        mlflow_run_id=run.info.run_id,
        dag_id=tags.get("airflow.dag_id", ""),
        airflow_run_id=tags.get("airflow.run_id", ""),
        started_ms=run.info.start_time,
        status=run.info.status,
        as_of=params.get("as_of_date"),
        window_days=params.get("window_days"),
        search=params.get("search"),
        reason=tags.get("trigger.reason", params.get("reason", "")),
        grid=grid,
        grid_is_default=grid is None or grid == config.training.grid,
        triggered_by=params.get("triggered_by"),
        verdict=tags.get("gate.verdict"),
        gate_reason=tags.get("gate.reason", ""),
        registered_version=int(version) if version and version.isdigit() else None,
        primary=metrics.get(f"holdout_challenger_{primary}"),
        baseline_primary=metrics.get(f"holdout_baseline_{primary}"),
        champion_primary=metrics.get(f"holdout_champion_{primary}"),
        experiment_id=run.info.experiment_id,
    )


def _holdout(run: Any | None) -> dict[str, float]:
    if run is None:
        return {}
    prefix = "holdout_challenger_"
    return {k.removeprefix(prefix): v for k, v in sorted(run.data.metrics.items()) if k.startswith(prefix)}


def load_mlflow(
    view: PipelineView,
    config: PipelineConfig,
    client: Any,
    *,
    max_runs: int = MAX_RUNS,
    max_versions: int = MAX_VERSIONS,
) -> None:
    """Fill the view's champion, versions and retrain runs from MLflow (3 to 5 calls)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(f"lifecycle/{config.name}")
    view.mlflow_calls += 1
    runs_by_id: dict[str, Any] = {}
    if experiment is not None:
        found = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`airflow.dag_id` = '{_quoted(view.retrain_dag_id)}'",
            order_by=["attributes.start_time DESC"],
            max_results=max_runs,
        )
        view.mlflow_calls += 1
        runs_by_id = {run.info.run_id: run for run in found}
        view.runs = [_retrain_run(run, config) for run in found]
        view.latest_evaluation_run = next((r.airflow_run_id for r in view.runs if r.verdict), None)

    try:
        registered = client.get_registered_model(config.registered_model_name)
        view.mlflow_calls += 1
    except MlflowException as err:
        view.mlflow_calls += 1
        if _is_missing(err):
            return
        raise
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(
        f"name = '{_quoted(config.registered_model_name)}'", max_results=max_versions, order_by=["version_number DESC"]
    )
    view.mlflow_calls += 1

    missing = sorted({v.run_id for v in versions if v.run_id and v.run_id not in runs_by_id})
    if missing and experiment is not None:
        listed = ", ".join(f"'{_quoted(r)}'" for r in missing)
        for run in client.search_runs(
            [experiment.experiment_id], filter_string=f"attributes.run_id IN ({listed})", max_results=len(missing)
        ):
            runs_by_id[run.info.run_id] = run
        view.mlflow_calls += 1

    primary = config.training.primary_metric
    for mv in versions:
        run = runs_by_id.get(mv.run_id)
        tags = mv.tags or {}
        holdout = _holdout(run)
        view.versions.append(
            ModelVersion(
                version=int(mv.version),
                created_ms=mv.creation_timestamp,
                mlflow_run_id=mv.run_id,
                airflow_run_id=run.data.tags.get("airflow.run_id") if run else None,
                aliases=sorted(aliases.get(str(mv.version), [])),
                verdict=tags.get("gate.verdict"),
                gate_reason=tags.get("gate.reason", ""),
                primary=holdout.get(primary),
                holdout=holdout,
                family=tags.get("model.family"),
                rollback_by=tags.get("rollback.by"),
                rollback_at=tags.get("rollback.at"),
                rollback_from=tags.get("rollback.from"),
                rollback_reason=tags.get("rollback.reason"),
            )
        )
    view.champion = _champion(view)


def _champion(view: PipelineView) -> Champion | None:
    current = next((v for v in view.versions if CHAMPION in v.aliases), None)
    if current is None:
        return None
    # The gate aliases a version only when it registers it: a champion with rollback tags is one by rollback.
    if current.rollback_at:
        why = f"rolled back from version {current.rollback_from}" if current.rollback_from else "rolled back"
        if current.rollback_reason:
            why += f": {current.rollback_reason}"
        how, when, by = "rollback", current.rollback_at, current.rollback_by
    else:
        run = next((r for r in view.runs if r.mlflow_run_id == current.mlflow_run_id), None)
        why = current.gate_reason or "promoted by the evaluation gate"
        if run is not None and run.reason:
            why += f" (run reason: {run.reason})"
        how, when, by = "gate", _iso(current.created_ms), None
    return Champion(
        version=current.version,
        promoted_at=when,
        how=how,
        why=why,
        by=by,
        mlflow_run_id=current.mlflow_run_id,
        airflow_run_id=current.airflow_run_id,
        holdout=current.holdout,
    )


def _has_table(engine: sa.Engine, name: str) -> bool:
    return sa.inspect(engine).has_table(name)


def _day(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)[:10]


def load_database(
    view: PipelineView, config: PipelineConfig, engine: sa.Engine, *, max_batches: int = MAX_BATCHES
) -> None:
    """Fill rows scored per batch and drift per feature per batch: one query each, the newest batches only."""
    from lifecycle.persistence.drift_store import tables
    from lifecycle.persistence.predictions_db import predictions_table

    metadata = sa.MetaData()
    predictions = predictions_table(metadata, config.prediction.table)
    metrics, _ = tables(metadata, config.drift.metrics_table)

    if _has_table(engine, predictions.name):
        recent = (
            sa.select(predictions.c.batch_key)
            .where(predictions.c.pipeline == config.name)
            .distinct()
            .order_by(predictions.c.batch_key.desc())
            .limit(max_batches)
            .subquery()
        )
        # A batch is written whole by one model (batch_predict resolves the alias once), so its version is
        # that of any one of its rows: counting per batch then stays on the (pipeline, batch_key) index.
        p, q = predictions.alias("p"), predictions.alias("q")
        version = (
            sa.select(q.c.model_version)
            .where(q.c.pipeline == config.name, q.c.batch_key == p.c.batch_key)
            .limit(1)
            .scalar_subquery()
        )
        query = (
            sa.select(p.c.batch_key, sa.func.count().label("rows"), version.label("model_version"))
            .where(
                p.c.pipeline == config.name,
                p.c.batch_key >= sa.select(sa.func.min(recent.c.batch_key)).scalar_subquery(),
            )
            .group_by(p.c.batch_key)
            .order_by(p.c.batch_key)
        )
        with engine.connect() as conn:
            view.batches = [Batch(_day(key), int(rows), [str(version)]) for key, rows, version in conn.execute(query)]
        view.sql_queries += 1

    if _has_table(engine, metrics.name):
        recent = (
            sa.select(metrics.c.batch_key)
            .where(metrics.c.pipeline == config.name)
            .distinct()
            .order_by(metrics.c.batch_key.desc())
            .limit(max_batches)
            .subquery()
        )
        query = (
            sa.select(
                metrics.c.batch_key,
                metrics.c.feature,
                metrics.c.metric,
                metrics.c.value,
                metrics.c.threshold,
                metrics.c.drifted,
                metrics.c.airflow_run_id,
            )
            .where(
                metrics.c.pipeline == config.name,
                metrics.c.batch_key >= sa.select(sa.func.min(recent.c.batch_key)).scalar_subquery(),
                metrics.c.metric.in_(["psi", "jensen_shannon"]),
            )
            .order_by(metrics.c.batch_key, metrics.c.feature)
        )
        with engine.connect() as conn:
            found = conn.execute(query).all()
        view.sql_queries += 1
        days: dict[Any, str] = {}
        rows = [(days.get(r[0]) or days.setdefault(r[0], _day(r[0])), *r[1:]) for r in found]
        view.psi = _series(rows, "psi", config.drift.psi_threshold)
        view.js = _series(rows, "jensen_shannon", config.drift.js_threshold)
        if rows:
            view.latest_drift = {"batch_key": rows[-1][0], "airflow_run_id": rows[-1][6]}


def _utc_iso(value: Any) -> str | None:
    if value is None:
        return None
    when = value if value.tzinfo else value.replace(tzinfo=dt.UTC)  # SQLite returns naive UTC
    return when.astimezone(dt.UTC).isoformat(timespec="seconds")


def load_history(view: PipelineView, engine: sa.Engine) -> None:
    from lifecycle.registry.registry_history import periods

    view.history = [
        AliasMove(
            version=row["version"], since=_utc_iso(row["moved_at"]), until=_utc_iso(row["until"]),
            moved_by=row["moved_by"], how=row["how"], reason=row["reason"] or "",
            previous_version=row["previous_version"], airflow_run_id=row["airflow_run_id"],
        )
        for row in periods(engine, view.model_name)
    ]  # fmt: skip
    view.sql_queries += 1


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def load_performance(
    view: PipelineView, config: PipelineConfig, engine: sa.Engine, *, max_batches: int = MAX_BATCHES
) -> None:
    """The primary metric per batch and version, realised and estimated: one query, the newest batches only."""
    from lifecycle.ml.performance_tracking import RELATIVE_METRICS
    from lifecycle.persistence.performance_store import performance_table

    metric = config.training.primary_metric
    policy = config.performance.policy
    view.performance = series = PerformanceSeries(
        metric=metric,
        higher_is_better=config.higher_is_better,
        relative=metric in RELATIVE_METRICS,
        max_drop=policy.max_drop if policy.max_drop is not None else config.drift.max_performance_drop,
        policy_enabled=policy.enabled,
        signals=list(policy.signals),
        floor=config.gate.floors.get(metric),
    )
    table = performance_table(sa.MetaData(), config.performance.metrics_table)
    if not _has_table(engine, table.name):
        return
    recent = (
        sa.select(table.c.batch_key)
        .where(table.c.pipeline == config.name, table.c.metric == metric)
        .distinct()
        .order_by(table.c.batch_key.desc())
        .limit(max_batches)
        .subquery()
    )
    query = (
        sa.select(
            table.c.batch_key, table.c.model_version, table.c.kind, table.c.value, table.c.ci_low, table.c.ci_high,
            table.c.rows, table.c.batch_rows, table.c.reference, table.c.computed_at,
        )
        .where(
            table.c.pipeline == config.name,
            table.c.metric == metric,
            table.c.batch_key >= sa.select(sa.func.min(recent.c.batch_key)).scalar_subquery(),
        )
        .order_by(table.c.batch_key)
    )  # fmt: skip
    with engine.connect() as conn:
        found = conn.execute(query).all()
    view.sql_queries += 1
    points: dict[tuple[str, str], PerformancePoint] = {}
    for key, version, kind, value, low, high, rows, batch_rows, reference, computed_at in found:
        version = str(version)
        point = points.get((day := _day(key), version))
        if point is None:
            point = points[(day, version)] = PerformancePoint(batch_key=day, model_version=version)
        point.batch_rows = point.batch_rows if batch_rows is None else int(batch_rows)
        point.reference = _finite(reference) if reference is not None else point.reference
        when = _utc_iso(computed_at) if computed_at is not None and not isinstance(computed_at, str) else None
        point.computed_at = max(filter(None, (point.computed_at, when)), default=None)
        if kind == "realised":
            point.realised, point.realised_low, point.realised_high = _finite(value), _finite(low), _finite(high)
            point.labelled_rows = int(rows)
        elif kind == "estimated":
            point.estimated, point.estimated_low, point.estimated_high = _finite(value), _finite(low), _finite(high)
        elif kind == "estimate_error":
            point.estimate_error = _finite(value)
    series.points = sorted(points.values(), key=lambda p: (p.batch_key, _version_order(p.model_version)))


def load_decisions(
    view: PipelineView, config: PipelineConfig, engine: sa.Engine, *, limit: int = SHOWN_DECISIONS
) -> None:
    """The newest verdicts of `<pipeline>__rollout` on its canary or A/B test (one query)."""
    from lifecycle.persistence.rollout_store import load_decisions as newest

    view.rollout_mode = config.serving.rollout.mode
    rows = newest(engine, config.name, limit)
    view.sql_queries += 1
    view.decisions = [
        RolloutDecision(
            decided_on=_day(row["decided_on"]), mode=str(row["mode"]), metric=str(row["metric"]),
            champion_version=str(row["champion_version"]), challenger_version=str(row["challenger_version"]),
            champion_rows=int(row["champion_rows"]), challenger_rows=int(row["challenger_rows"]),
            **{k: _finite(row[k]) for k in (
                "champion_value", "champion_ci_low", "champion_ci_high", "challenger_value", "challenger_ci_low",
                "challenger_ci_high", "difference", "difference_ci_low", "difference_ci_high")},
            paired=bool(row["paired"]), decision=str(row["decision"]), reason=str(row["reason"] or ""),
            airflow_run_id=str(row["airflow_run_id"]),
            decided_at=_utc_iso(row["decided_at"]) if not isinstance(row["decided_at"], str) else row["decided_at"],
        )
        for row in rows
    ]  # fmt: skip


def _series(rows: list[tuple], metric: str, default_threshold: float) -> DriftSeries | None:
    """Rows of (day, feature, metric, value, threshold, drifted, run id) as one line per feature."""
    chosen = [r for r in rows if r[2] == metric]
    if not chosen:
        return None
    batches = sorted({r[0] for r in chosen})
    index = {b: i for i, b in enumerate(batches)}
    values: dict[str, list[float | None]] = {}
    drifted: dict[str, int] = {}
    flagged: dict[str, list[bool]] = {}
    for day, feature, _, value, _limit, over, _ in chosen:
        name = "prediction" if feature == "__prediction__" else feature
        line = values.get(name)
        if line is None:
            line = values[name] = [None] * len(batches)
            flagged[name] = [False] * len(batches)
            drifted[name] = 0
        line[index[day]] = value if value is not None and math.isfinite(value) else None
        flagged[name][index[day]] = bool(over)
        drifted[name] += bool(over)
    return DriftSeries(
        metric=metric, threshold=default_threshold, batches=batches, values=values, drifted=drifted, flagged=flagged
    )


def pipeline_view(
    config: PipelineConfig,
    client: Any,
    engine: sa.Engine | None,
    *,
    max_runs: int = MAX_RUNS,
    max_versions: int = MAX_VERSIONS,
    max_batches: int = MAX_BATCHES,
) -> PipelineView:
    """Everything the page shows for one pipeline; a store that cannot be read is an error on the view."""
    view = PipelineView(
        name=config.name,
        model_name=config.registered_model_name,
        retrain_dag_id=f"{config.name}__retrain",
        primary_metric=config.training.primary_metric,
        higher_is_better=config.higher_is_better,
    )
    try:
        load_mlflow(view, config, client, max_runs=max_runs, max_versions=max_versions)
    except Exception as err:  # the page still shows what the other store has
        view.errors.append(f"MLflow could not be read: {type(err).__name__}: {err}")
    if engine is None:
        return view
    # Each part on its own: a table that cannot be read (an older schema, a lost connection) hides only itself.
    parts = [
        ("the predictions and drift tables", lambda: load_database(view, config, engine, max_batches=max_batches)),
        ("the registry history", lambda: load_history(view, engine)),
        (
            f"the performance table {config.performance.metrics_table!r}",
            lambda: load_performance(view, config, engine, max_batches=max_batches),
        ),
        ("the rollout decisions", lambda: load_decisions(view, config, engine)),
    ]
    for what, load in parts:
        try:
            load()
        except sa.exc.SQLAlchemyError as err:
            view.errors.append(f"the predictions database could not be read ({what}): {type(err).__name__}: {err}")
    return view


def rollback(
    client: Any,
    model_name: str,
    version: int | str,
    *,
    user: str,
    reason: str = "",
    expected_current: int | str | None = None,
    now: dt.datetime | None = None,
    engine: sa.Engine,
) -> dict[str, Any]:
    """Move the `champion` alias to an existing earlier version, recording who, when, from what and why.

    `expected_current` is the champion the user saw: if another promotion or rollback moved the alias
    since, nothing changes (RollbackError with status 409). The check and the move happen under the
    alias's lock in `engine`'s database, where the move joins the registry history.
    """
    from lifecycle.registry import registry_history

    target = str(version).strip()
    if not target.isdigit():
        raise RollbackError(f"version must be a number, got {version!r}")
    with registry_history.alias_lock(engine, model_name) as conn:
        return _rollback_locked(client, conn, model_name, target, user, reason, expected_current, now)


def _rollback_locked(
    client: Any,
    conn: sa.Connection,
    model_name: str,
    target: str,
    user: str,
    reason: str,
    expected_current: int | str | None,
    now: dt.datetime | None,
) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    from lifecycle.registry import registry_history

    try:
        current = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as err:
        if not _is_missing(err):
            raise
        current = None
    current_version = str(current.version) if current is not None else None
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    registry_history.observe(conn, model_name, current_version, at=moment)
    if expected_current not in (None, "") and str(expected_current) != current_version:
        raise RollbackError(
            f"the champion of {model_name} is version {current_version}, not {expected_current}: reload the page",
            status=409,
        )
    if target == current_version:
        raise RollbackError(f"version {target} of {model_name} is already the champion", status=409)
    try:
        chosen = client.get_model_version(model_name, target)
    except MlflowException as err:
        if _is_missing(err):
            raise RollbackError(f"{model_name} has no version {target}", status=404) from None
        raise
    if str(getattr(chosen, "status", "READY")) not in ("READY", "ModelVersionStatus.READY"):
        raise RollbackError(f"version {target} of {model_name} is {chosen.status}, not READY", status=409)
    at = moment.isoformat(timespec="seconds")
    # The audit tags first: a rollback that dies half-way leaves a record, never an unexplained alias move.
    tags = {"rollback.by": user, "rollback.at": at, "rollback.from": current_version or "", "rollback.reason": reason}
    for key, value in tags.items():
        client.set_model_version_tag(model_name, target, key, value[:5000])
    client.set_registered_model_alias(model_name, CHAMPION, target)
    registry_history.record(
        conn, model_name, target, previous=current_version, moved_by=user, how="rollback", reason=reason, at=moment
    )
    return {"model": model_name, "champion": int(target), "previous": current_version, "by": user, "at": at}


def run_details(client: Any, experiment_name: str, mlflow_run_id: str) -> dict[str, Any] | None:
    """One MLflow run of the pipeline's experiment (None for a run of another experiment or none at all)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(mlflow_run_id)
        experiment = client.get_experiment(run.info.experiment_id)
    except MlflowException as err:
        if _is_missing(err) or "INVALID_PARAMETER_VALUE" in str(getattr(err, "error_code", "")):
            return None
        raise
    if experiment is None or experiment.name != experiment_name:
        return None
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "started": _iso(run.info.start_time),
        "ended": _iso(run.info.end_time),
        "artifact_uri": run.info.artifact_uri,
        "experiment": experiment.name,
        "tags": {k: v for k, v in sorted(run.data.tags.items()) if not k.startswith("mlflow.")},
        "params": dict(sorted(run.data.params.items())),
        "metrics": dict(sorted(run.data.metrics.items())),
    }


# ------------------------------------------------------------------------------------------- rendering
#
# The HTML is in templates/models_page/ (Jinja2, autoescaped), the CSS and JavaScript in
# static/models_page/, and the charts are drawn in the browser by Chart.js (static/vendor/). What each
# chart shows is decided here, as JSON-ready data: its points, their hover texts, its rules and legend.

PACKAGE = Path(__file__).resolve().parent
TEMPLATES = PACKAGE / "templates"
STATIC = PACKAGE / "static"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
           "#393b79", "#ad494a", "#637939"]  # fmt: skip


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _when(value: str | int | None) -> str:
    if value is None:
        return "–"
    text = _iso(value) if isinstance(value, int) else value
    return text.replace("T", " ").replace("+00:00", " UTC")


def _interval(low: float | None, high: float | None, signed: bool = False) -> str:
    if low is None or high is None:
        return ""
    show = _signed if signed else _fmt
    return f" [{show(low)}, {show(high)}]"


def _past(series: PerformanceSeries, kind: str, value: float | None, reference: float | None) -> bool:
    """Whether a value of a signal the policy acts on is beyond the version's retrain trigger."""
    trigger = series.trigger(reference)
    if value is None or trigger is None or not series.policy_enabled or kind not in series.signals:
        return False
    return value < trigger if series.higher_is_better else value > trigger


def _drop_text(series: PerformanceSeries) -> str:
    sign = "−" if series.higher_is_better else "+"
    return f"{sign} {series.max_drop:.0%}" if series.relative else f"{sign} {series.max_drop:g}"


def _trigger_text(series: PerformanceSeries, version: str, reference: float) -> str:
    side = "below" if series.higher_is_better else "above"
    how = f"{_drop_text(series)} of it" if series.relative else _drop_text(series)
    return f"v{version} retrain trigger: {series.metric} {side} {_fmt(series.trigger(reference))} (holdout {_fmt(reference)} {how})"


@dataclass
class Chart:
    """One chart: `data` is what models.js gives Chart.js (JSON), `legend` what the template lists under it.

    data = {"kind": "line" | "bar", "x_labels": [...], "y_label": str, "y_min": float | None, "datasets": [...]};
    a dataset is {"role", "label", "color", "x": [...], "y": [...]} and, where its points have them, "text"
    (what hovering a point shows), "r" (a point's radius) and "champion"; a y of None breaks the line. In
    columns, not a dict per point: a year of daily batches is a third less JSON. `role` names how models.js
    draws it (realised, estimated, trigger, ...).
    """

    id: str
    label: str
    data: dict[str, Any]
    legend: list[dict[str, str]] = field(default_factory=list)
    readout: bool = False  # a line under the chart repeats the hovered value (readable without a tooltip)


def _data(kind: str, x_labels: list[str], y_label: str, datasets: list[dict], y_min: float | None = None) -> dict:
    return {"kind": kind, "x_labels": x_labels, "y_label": y_label, "y_min": y_min, "datasets": datasets}


def _y(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _dataset(role: str, label: str, color: str | None, points: list[dict], **extra: Any) -> dict:
    """Points ({"x", "y", and maybe "text", "r", "champion"}) as a dataset in columns."""
    out = {"role": role, "label": label, "color": color, **extra}
    out["x"] = [p["x"] for p in points]
    out["y"] = [None if (y := p["y"]) is None else round(y, 6) for p in points]
    present = set().union(*points)
    for key in ("text", "r", "champion"):
        if key in present:
            out[key] = [p.get(key) for p in points]
    return out


def _rule(role: str, label: str, color: str | None, x1: float, x2: float, y: float, text: str) -> dict:
    """A horizontal line from x1 to x2 (a reference, a trigger, a floor, a threshold)."""
    return _dataset(role, label, color, [{"x": x1, "y": y, "text": text}, {"x": x2, "y": y, "text": text}])


def _joined(items: list[tuple[int, dict | None]]) -> list[dict]:
    """Points by batch index, with a break (y None) where a batch has no value or batches are not consecutive."""
    out: list[dict] = []
    last = None
    for i, point in items:
        if out and out[-1]["y"] is not None and (point is None or i != last + 1):
            out.append({"x": out[-1]["x"], "y": None})
        if point is not None:
            out.append(point)
        last = i
    return out


def metric_chart(view: PipelineView) -> Chart | None:
    """The primary holdout metric of each registered version, oldest to newest; the champion in gold."""
    shown = [v for v in reversed(view.versions) if v.primary is not None]
    if not shown:
        return None
    points = []
    for i, v in enumerate(shown):
        champion = CHAMPION in v.aliases
        text = f"version {v.version}: {view.primary_metric} {_fmt(v.primary)}{' (champion)' if champion else ''}"
        point = {"x": i, "y": v.primary, "text": text}
        if champion:
            point["champion"] = True
        points.append(point)
    dataset = _dataset("metric", f"holdout {view.primary_metric}", "#0f6ecd", points)
    data = _data("line", [f"v{v.version}" for v in shown], view.primary_metric, [dataset])
    return Chart("chart-metric", f"holdout {view.primary_metric} per model version", data)


def rows_chart(view: PipelineView) -> Chart | None:
    """Rows scored per batch, one bar each."""
    if not view.batches:
        return None
    points = [
        {"x": i, "y": b.rows, "text": f"{b.batch_key}: {b.rows} rows (model version {', '.join(b.model_versions)})"}
        for i, b in enumerate(view.batches)
    ]
    dataset = _dataset("bar", "rows scored", "#60a5fa", points)
    data = _data("bar", [b.batch_key for b in view.batches], "rows scored", [dataset], y_min=0)
    return Chart("chart-rows", "rows scored per batch", data)


def _performance_marks(
    series: PerformanceSeries, own: list[PerformancePoint], version: str, color: str, index: dict, x: Any
) -> list[dict]:
    """One version's realised and estimated values (joined across consecutive batches) and their intervals."""
    metric = series.metric
    realised, estimated, realised_ci, estimated_ci = [], [], [], []
    for p in own:
        i, cx = index[p.batch_key], x(p)
        if p.estimated is None:
            estimated.append((i, None))
        else:
            error = f"; error {_signed(p.estimate_error)} vs realised" if p.estimate_error is not None else ""
            rows = f" from {p.batch_rows} scored rows" if p.batch_rows is not None else ""
            text = (f"{p.batch_key} · v{version} · estimated {metric} {_fmt(p.estimated)}"
                    f"{_interval(p.estimated_low, p.estimated_high)}{rows}{error}")  # fmt: skip
            estimated.append((i, {"x": cx, "y": p.estimated, "text": text}))
            if p.estimated_low is not None and p.estimated_high is not None:
                estimated_ci += [
                    {"x": cx, "y": p.estimated_low},
                    {"x": cx, "y": p.estimated_high},
                    {"x": cx, "y": None},
                ]
        if p.realised is None:
            realised.append((i, None))
        else:
            labelled = f" on {p.labelled_rows} of {p.batch_rows} rows labelled" if p.labelled_rows is not None else ""
            text = (f"{p.batch_key} · v{version} · realised {metric} {_fmt(p.realised)}"
                    f"{_interval(p.realised_low, p.realised_high)}{labelled}")  # fmt: skip
            realised.append((i, {"x": cx, "y": p.realised, "text": text}))
            if p.realised_low is not None and p.realised_high is not None:
                realised_ci += [{"x": cx, "y": p.realised_low}, {"x": cx, "y": p.realised_high}, {"x": cx, "y": None}]
    return [
        _dataset("realised", f"v{version} realised {metric}", color, _joined(realised), version=version),
        _dataset("estimated", f"v{version} estimated {metric}", color, _joined(estimated), version=version),
        _dataset("realised_ci", f"v{version} realised CI", color, realised_ci),
        _dataset("estimated_ci", f"v{version} estimated CI", color, estimated_ci),
    ]


def performance_chart(view: PipelineView) -> Chart | None:
    """The primary metric per batch: realised (dots, CI whiskers, solid) and estimated (rings, dashed) per version,
    with each version's holdout reference and retrain trigger, and the gate's floor."""
    series = view.performance
    if series is None or not series.points:
        return None
    batches = sorted({p.batch_key for p in series.points})
    index = {b: i for i, b in enumerate(batches)}
    versions = sorted({p.model_version for p in series.points}, key=_version_order)
    colors = {v: PALETTE[n % len(PALETTE)] for n, v in enumerate(versions)}
    in_batch: dict[str, list[str]] = {}
    for point in series.points:
        in_batch.setdefault(point.batch_key, []).append(point.model_version)
    references = {p.model_version: p.reference for p in series.points if p.reference is not None}
    metric = series.metric

    def x(point: PerformancePoint) -> float:
        """Versions scored on the same batch side by side around the batch's slot, not on top of each other."""
        present = in_batch[point.batch_key]
        step = min(0.2, 1 / (len(present) + 1))
        return round(index[point.batch_key] + (present.index(point.model_version) - (len(present) - 1) / 2) * step, 4)

    by_version: dict[str, list[PerformancePoint]] = {}
    for point in series.points:
        by_version.setdefault(point.model_version, []).append(point)
    marks, rules = [], []  # marks first: Chart.js draws the first dataset on top
    for version in versions:
        own = by_version[version]
        marks += _performance_marks(series, own, version, colors[version], index, x)
        x1, x2 = index[own[0].batch_key] - 0.5, index[own[-1].batch_key] + 0.5
        reference = references.get(version)
        if reference is None:
            continue
        text = f"v{version} holdout {metric} {_fmt(reference)}"
        rules.append(_rule("reference", f"v{version} holdout", colors[version], x1, x2, reference, text))
        trigger = series.trigger(reference)
        if series.policy_enabled and trigger is not None:
            text = _trigger_text(series, version, reference)
            rules.append(_rule("trigger", f"v{version} retrain trigger", None, x1, x2, trigger, text))
    if series.floor is not None:
        text = f"gate floor {metric} {series.floor:g}"
        rules.append(_rule("floor", f"gate floor {series.floor:g}", None, -0.5, len(batches) - 0.5, series.floor, text))

    legend = [{"kind": "swatch", "color": colors[v], "text": f"v{v}"} for v in versions]
    legend += [{"kind": "plain", "text": "● realised (whiskers: confidence interval)"},
               {"kind": "plain", "text": "○ estimated (dashed, label-free)"},
               {"kind": "reference", "text": "holdout reference"}]  # fmt: skip
    if series.policy_enabled:
        legend.append({"kind": "trigger", "text": f"retrain trigger (holdout {_drop_text(series)})"})
    else:
        legend.append({"kind": "muted", "text": "performance policy off"})
    if series.floor is not None:
        legend.append({"kind": "floor", "text": f"gate floor {series.floor:g}"})
    data = _data("line", batches, metric, marks + rules)
    label = f"{metric} per batch: realised and estimated, per model version"
    return Chart("chart-performance", label, data, legend, readout=True)


def drift_chart(series: DriftSeries | None, chart_id: str, label: str) -> Chart | None:
    """One line per feature over the batches, the drifted batches marked, and the configured threshold."""
    if series is None or not series.batches:
        return None
    marked = series.threshold is not None and sum(series.drifted.values()) <= MAX_MARKERS
    datasets, legend = [], []
    x = list(range(len(series.batches)))
    for n, (feature, line) in enumerate(sorted(series.values.items())):
        color = PALETTE[n % len(PALETTE)]
        flags = series.flagged.get(feature) or [False] * len(line)
        flagged = [i for i, over in enumerate(flags) if over and line[i] is not None] if marked else []
        # A value with no neighbour to join is a dot, or it would not show; a drifted one a bigger dot.
        lonely = [i for i, v in enumerate(line) if v is not None and (i == 0 or line[i - 1] is None)
                  and (i == len(line) - 1 or line[i + 1] is None)]  # fmt: skip
        radius = dict.fromkeys(lonely, 2.5) | dict.fromkeys(flagged, 3)
        # Hovering shows "<feature> <batch>: <value to `digits` places>", "(drifted)" after the flagged ones:
        # formatted by models.js, as a text per point would double this chart's JSON.
        dataset = {"role": "feature", "label": feature, "color": color, "x": x, "y": [_y(v) for v in line],
                   "digits": 3, "drifted": flagged}  # fmt: skip
        if radius:
            dataset["r"] = [radius.get(i) for i in x]
        datasets.append(dataset)
        drifted = series.drifted.get(feature, 0)
        legend.append(
            {"kind": "swatch", "color": color, "text": feature, "strong": f"({drifted} over)" if drifted else ""}
        )
    if series.threshold is not None:
        text = f"threshold {series.threshold:g}"
        datasets.append(_rule("threshold", text, None, -0.5, len(series.batches) - 0.5, series.threshold, text))
    return Chart(chart_id, label, _data("line", series.batches, label, datasets, y_min=0), legend)


@dataclass
class Links:
    """Where the page's links point: the plugin's own root and Airflow's UI root (both absolute paths)."""

    app: str = "/lifecycle"
    airflow: str = ""
    mlflow_ui: str | None = None  # an MLflow UI to link runs to, when there is one

    def airflow_run(self, dag_id: str, run_id: str) -> str:
        return f"{self.airflow}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"

    def airflow_dag(self, dag_id: str) -> str:
        return f"{self.airflow}/dags/{quote(dag_id, safe='')}"

    def mlflow_run(self, pipeline: str, mlflow_run_id: str) -> str:
        return f"{self.app}/pipelines/{quote(pipeline, safe='')}/mlflow/{quote(mlflow_run_id, safe='')}"

    def mlflow_ui_run(self, experiment_id: str | None, mlflow_run_id: str) -> str | None:
        if not self.mlflow_ui or experiment_id is None:
            return None
        return f"{self.mlflow_ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{mlflow_run_id}"

    def evaluation(self, pipeline: str, airflow_run_id: str) -> str:
        return f"{self.app}/pipelines/{quote(pipeline, safe='')}/runs/{quote(airflow_run_id, safe='')}/evaluation"

    def drift(self, pipeline: str, airflow_run_id: str) -> str:
        return f"{self.app}/pipelines/{quote(pipeline, safe='')}/runs/{quote(airflow_run_id, safe='')}/drift"

    def rollback(self, pipeline: str) -> str:
        return f"{self.app}/pipelines/{quote(pipeline, safe='')}/rollback"

    def page(self, pipeline: str) -> str:
        return f"{self.app}/?pipeline={quote(pipeline, safe='')}"


# The static files by URL relative to the page that links them: the page is served at <app>/ (the Airflow
# UI frames "lifecycle/", and <app> without the slash redirects to it), a run at <app>/pipelines/<p>/mlflow/<id>.
PAGE_STATIC = "static"
RUN_STATIC = "../../../static"


@functools.cache
def environment() -> Any:
    """The Jinja2 environment: autoescaped HTML, and an undefined name is an error, not an empty string."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # templates change with a deploy, which restarts the api-server
    )
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "separators": (",", ":"), "ensure_ascii": False}
    env.filters |= {"fmt": _fmt, "signed": _signed, "when": _when}
    env.tests["champion"] = lambda version: CHAMPION in version.aliases
    env.globals |= {"interval": _interval, "past": _past, "CHAMPION": CHAMPION, "SHOWN_RUNS": SHOWN_RUNS,
                    "SHOWN_PERFORMANCE": SHOWN_PERFORMANCE, "dumps": json.dumps}  # fmt: skip
    return env


def preload_templates() -> int:
    """Compile every template now (the plugin's warm-up calls it), so the first page view does not pay ~0.4 s."""
    env = environment()
    names = env.list_templates(filter_func=lambda name: name.endswith(".html"))
    for name in names:
        env.get_template(name)
    return len(names)


def _charts(view: PipelineView) -> dict[str, Chart | None]:
    return {
        "metric": metric_chart(view),
        "performance": performance_chart(view),
        "rows": rows_chart(view),
        "psi": drift_chart(view.psi, "chart-psi", "PSI"),
        "js": drift_chart(view.js, "chart-js", "JS distance"),
    }


def render_pipeline(view: PipelineView, links: Links, *, can_rollback: bool) -> str:
    """One pipeline's section of the page."""
    return (
        environment()
        .get_template("models_page/pipeline.html")
        .render(view=view, links=links, can_rollback=can_rollback, charts=_charts(view))
    )


def render_page(
    views: list[PipelineView],
    names: list[str],
    links: Links,
    *,
    can_rollback: dict[str, bool],
    user: str | None = None,
    seconds: float | None = None,
) -> str:
    """The whole page: a pipeline switcher over the pipelines the user may read, and the chosen ones."""
    sections = [(v, _charts(v), can_rollback.get(v.name, False)) for v in views]
    return environment().get_template("models_page/page.html").render(
        names=names, shown={v.name for v in views}, sections=sections, links=links, user=user, seconds=seconds,
        static=PAGE_STATIC,
    )  # fmt: skip


def render_run(details: dict[str, Any], pipeline: str, links: Links) -> str:
    """One MLflow run's tags, metrics and params, for a link from the page (no MLflow UI needed)."""
    info = {k: details[k] for k in ("run_id", "run_name", "status", "started", "ended", "experiment", "artifact_uri")}
    return (
        environment()
        .get_template("models_page/run.html")
        .render(details=details, info=info, pipeline=pipeline, links=links, static=RUN_STATIC)
    )


def with_back_link(page: bytes, back: str) -> bytes:
    """A stored report with a link back to the models page at the top of its body."""
    bar = f'<p style="font-family:sans-serif"><a id="lifecycle-back" href="{_e(back)}">&larr; Models</a></p>'.encode()
    head, sep, rest = page.partition(b"<body>")
    if not sep:
        head, sep, rest = page.partition(b"<body")
        if not sep:
            return bar + page
        tag_end = rest.find(b">") + 1
        return head + sep + rest[:tag_end] + bar + rest[tag_end:]
    return head + sep + bar + rest
