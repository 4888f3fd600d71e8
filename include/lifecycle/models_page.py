"""The models page: what the Airflow UI's "Models" view shows, as pure functions (no Airflow import).

Reading is a handful of calls whatever the history's length: per pipeline one `get_registered_model`
(the aliases), one `search_model_versions`, one `search_runs` for the retrain runs (plus one for versions
whose runs fall outside that window), and five SQL queries (rows scored per batch, drift per feature per
batch, the registry history, realised and estimated performance per batch, the newest rollout decisions).
A table that does not exist yet is an empty section. Rendering is server-side HTML with inline SVG charts
and no external resource.

`plugins/lifecycle_models.py` serves this inside Airflow; the rollback there calls `rollback` here.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from lifecycle.config import PipelineConfig

CHAMPION = "champion"  # the alias, as lifecycle.tracking names it (not imported: that module is not light)
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
    """One day's verdict of `<pipeline>__rollout` (the columns of lifecycle.rollout_store's table)."""

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
    from lifecycle.drift_store import tables
    from lifecycle.predictions_db import predictions_table

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
    from lifecycle.registry_history import periods

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
    from lifecycle.performance import RELATIVE_METRICS
    from lifecycle.performance_store import performance_table

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
    from lifecycle.rollout_store import load_decisions as newest

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
    from lifecycle import registry_history

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

    from lifecycle import registry_history

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

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
           "#393b79", "#ad494a", "#637939"]  # fmt: skip
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 920, 240, 56, 16, 14, 36


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _when(value: str | int | None) -> str:
    if value is None:
        return "–"
    text = _iso(value) if isinstance(value, int) else value
    return text.replace("T", " ").replace("+00:00", " UTC")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10)), key=lambda s: abs(s - raw))
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


class _Frame:
    """Maps data to the SVG's pixels: x by index over n slots, y linear over [low, high]."""

    def __init__(self, n: int, low: float, high: float):
        if high <= low:
            pad = abs(high) * 0.05 or 0.05
            low, high = low - pad, high + pad
        self.n, self.low, self.high = max(n, 1), low, high
        self.w, self.h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(self, i: float) -> float:
        return LEFT + (i + 0.5) * self.w / self.n

    def y(self, value: float) -> float:
        return TOP + self.h * (1 - (value - self.low) / (self.high - self.low))

    def axes(self, labels: list[tuple[int, str]], y_label: str) -> str:
        parts = [
            f'<line x1="{LEFT}" y1="{TOP + self.h}" x2="{LEFT + self.w}" y2="{TOP + self.h}" class="axis"/>',
            f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + self.h}" class="axis"/>',
            f'<text x="12" y="{TOP + self.h / 2}" class="lbl" transform="rotate(-90 12 {TOP + self.h / 2})" '
            f'text-anchor="middle">{_e(y_label)}</text>',
        ]
        for tick in _ticks(self.low, self.high):
            y = self.y(tick)
            parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + self.w}" y2="{y:.1f}" class="grid"/>')
            parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="lbl">{tick:g}</text>')
        for i, text in labels:
            x, anchor = self.x(i), "middle"
            if x + len(text) * 3.3 > WIDTH:  # a date under the last slot would be cut at the right edge
                x, anchor = WIDTH - 2, "end"
            parts.append(
                f'<text x="{x:.1f}" y="{TOP + self.h + 16}" text-anchor="{anchor}" class="lbl">{_e(text)}</text>'
            )
        return "".join(parts)


def _x_labels(names: list[str], most: int = 8) -> list[tuple[int, str]]:
    if not names:
        return []
    step = max(1, math.ceil(len(names) / most))
    chosen = list(range(0, len(names), step))
    if chosen[-1] != len(names) - 1 and len(names) - 1 - chosen[-1] >= step / 2:
        chosen.append(len(names) - 1)
    return [(i, names[i]) for i in chosen]


def _svg(body: str, label: str, chart_id: str, *, readout: bool = False) -> str:
    """The chart; with `readout`, a line under it shows the <title> of what the pointer is on (no waiting)."""
    extra = f' data-readout="{chart_id}-readout"' if readout else ""
    svg = (
        f'<svg id="{chart_id}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(label)}" '
        f'preserveAspectRatio="xMinYMin meet"{extra}>{body}</svg>'
    )
    if readout:
        svg += f'<div class="readout" id="{chart_id}-readout" aria-live="polite">Point at a mark for its value.</div>'
    return svg


def metric_chart(view: PipelineView) -> str:
    """The primary holdout metric of each registered version, oldest to newest; the champion in gold."""
    points = [v for v in reversed(view.versions) if v.primary is not None]
    if not points:
        return '<p class="empty">No registered version has holdout metrics yet.</p>'
    values = [v.primary for v in points]
    frame = _Frame(len(points), min(values), max(values))
    pad = (frame.high - frame.low) * 0.1
    frame = _Frame(len(points), frame.low - pad, frame.high + pad)
    line = " ".join(f"{frame.x(i):.1f},{frame.y(v.primary):.1f}" for i, v in enumerate(points))
    dots = "".join(
        f'<circle cx="{frame.x(i):.1f}" cy="{frame.y(v.primary):.1f}" r="{6 if CHAMPION in v.aliases else 3.5}" '
        f'class="{"champ" if CHAMPION in v.aliases else "ver"}"><title>version {v.version}: '
        f"{view.primary_metric} {_fmt(v.primary)}{' (champion)' if CHAMPION in v.aliases else ''}</title></circle>"
        for i, v in enumerate(points)
    )
    labels = _x_labels([f"v{v.version}" for v in points], 12)
    body = frame.axes(labels, view.primary_metric) + f'<polyline points="{line}" class="metric"/>' + dots
    return _svg(body, f"holdout {view.primary_metric} per model version", "chart-metric")


def rows_chart(view: PipelineView) -> str:
    batches = view.batches
    if not batches:
        return '<p class="empty">No batch has been scored yet.</p>'
    top = max(b.rows for b in batches)
    frame = _Frame(len(batches), 0, top * 1.05 or 1)
    width = max(1.0, frame.w / len(batches) * 0.8)
    bars = "".join(
        f'<rect x="{frame.x(i) - width / 2:.1f}" y="{frame.y(b.rows):.1f}" width="{width:.1f}" '
        f'height="{frame.y(0) - frame.y(b.rows):.1f}" class="bar"><title>{b.batch_key}: {b.rows} rows '
        f"(model version {', '.join(b.model_versions)})</title></rect>"
        for i, b in enumerate(batches)
    )
    body = frame.axes(_x_labels([b.batch_key for b in batches]), "rows scored") + bars
    return _svg(body, "rows scored per batch", "chart-rows")


def _signed(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


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


def _trigger_text(series: PerformanceSeries, version: str, reference: float) -> str:
    side = "below" if series.higher_is_better else "above"
    sign = "−" if series.higher_is_better else "+"
    how = f"{sign} {series.max_drop:.0%} of it" if series.relative else f"{sign} {series.max_drop:g}"
    return f"v{version} retrain trigger: {series.metric} {side} {_fmt(series.trigger(reference))} (holdout {_fmt(reference)} {how})"


def _polylines(points: list[tuple[int, str | None]], css: str, title: str) -> str:
    """Lines through (batch index, "x,y") where consecutive batches both have a value (None: no value)."""
    parts, current, last = [], [], None
    for i, xy in points:
        if xy is None or (last is not None and i != last + 1):
            if len(current) > 1:
                parts.append(current)
            current = []
        if xy is not None:
            current.append(xy)
        last = i
    if len(current) > 1:
        parts.append(current)
    return "".join(
        f'<polyline points="{" ".join(line)}" class="{css}"><title>{_e(title)}</title></polyline>' for line in parts
    )


def performance_chart(view: PipelineView) -> str:
    """The primary metric per batch: realised (dots, CI whiskers, solid) and estimated (rings, dashed) per version,
    with each version's holdout reference and retrain trigger, and the gate's floor."""
    series = view.performance
    if series is None or not series.points:
        return ""
    batches = sorted({p.batch_key for p in series.points})
    index = {b: i for i, b in enumerate(batches)}
    versions = sorted({p.model_version for p in series.points}, key=_version_order)
    colors = {v: PALETTE[n % len(PALETTE)] for n, v in enumerate(versions)}
    in_batch: dict[str, list[str]] = {}
    for point in series.points:
        in_batch.setdefault(point.batch_key, []).append(point.model_version)
    references = {p.model_version: p.reference for p in series.points if p.reference is not None}
    found = [
        v
        for p in series.points
        for v in (p.realised, p.realised_low, p.realised_high, p.estimated, p.estimated_low, p.estimated_high)
        if v is not None
    ]
    found += [
        v
        for r in references.values()
        for v in (r, series.trigger(r) if series.policy_enabled else None)
        if v is not None
    ]
    if series.floor is not None:
        found.append(series.floor)
    frame = _Frame(len(batches), min(found), max(found))
    pad = (frame.high - frame.low) * 0.08
    frame = _Frame(len(batches), frame.low - pad, frame.high + pad)
    slot = frame.w / len(batches)
    metric = series.metric

    def x(point: PerformancePoint) -> float:
        present = in_batch[point.batch_key]
        step = min(8.0, slot / (len(present) + 1))
        return frame.x(index[point.batch_key]) + (present.index(point.model_version) - (len(present) - 1) / 2) * step

    parts = [frame.axes(_x_labels(batches), metric)]
    lines, marks = [], []  # per version, in a group of its colour: every line under every mark
    for version in versions:
        own = [p for p in series.points if p.model_version == version]
        lines.append(f'<g style="color:{colors[version]}">')
        marks.append(f'<g style="color:{colors[version]}">')
        first, last = index[own[0].batch_key], index[own[-1].batch_key]
        x1, x2 = frame.x(first) - slot / 2, frame.x(last) + slot / 2
        reference = references.get(version)
        if reference is not None:
            y = frame.y(reference)
            lines.append(
                f'<line x1="{x1:.1f}" y1="{y:.1f}" x2="{x2:.1f}" y2="{y:.1f}" class="reference">'
                f"<title>v{_e(version)} holdout {_e(metric)} {_fmt(reference)}</title></line>"
            )
            trigger = series.trigger(reference)
            if series.policy_enabled and trigger is not None:
                y = frame.y(trigger)
                lines.append(
                    f'<line x1="{x1:.1f}" y1="{y:.1f}" x2="{x2:.1f}" y2="{y:.1f}" class="trigger">'
                    f"<title>{_e(_trigger_text(series, version, reference))}</title></line>"
                )

        def coords(value_of: Any, own: list[PerformancePoint] = own) -> list[tuple[int, str | None]]:
            return [
                (index[p.batch_key], None if (v := value_of(p)) is None else f"{x(p):.1f},{frame.y(v):.1f}")
                for p in own
            ]

        lines.append(_polylines(coords(lambda p: p.estimated), "estimated", f"v{version} estimated {metric}"))
        lines.append(_polylines(coords(lambda p: p.realised), "realised", f"v{version} realised {metric}") + "</g>")
        for p in own:
            cx = x(p)
            if p.estimated is not None:
                if p.estimated_low is not None and p.estimated_high is not None:
                    marks.append(
                        f'<line x1="{cx:.1f}" y1="{frame.y(p.estimated_low):.1f}" x2="{cx:.1f}" '
                        f'y2="{frame.y(p.estimated_high):.1f}" class="ci est"/>'
                    )
                error = f"; error {_signed(p.estimate_error)} vs realised" if p.estimate_error is not None else ""
                rows = f" from {p.batch_rows} scored rows" if p.batch_rows is not None else ""
                marks.append(
                    f'<circle cx="{cx:.1f}" cy="{frame.y(p.estimated):.1f}" r="3.5" '
                    f'class="pt-estimated" data-batch="{_e(p.batch_key)}" data-version="{_e(version)}"><title>'
                    f"{_e(p.batch_key)} · v{_e(version)} · estimated {_e(metric)} {_fmt(p.estimated)}"
                    f"{_interval(p.estimated_low, p.estimated_high)}{rows}{error}</title></circle>"
                )
            if p.realised is not None:
                if p.realised_low is not None and p.realised_high is not None:
                    low, high = frame.y(p.realised_low), frame.y(p.realised_high)
                    marks.append(
                        f'<path d="M{cx:.1f} {low:.1f}V{high:.1f}M{cx - 3:.1f} {low:.1f}h6M{cx - 3:.1f} {high:.1f}h6" '
                        'class="ci"/>'
                    )
                labelled = (
                    f" on {p.labelled_rows} of {p.batch_rows} rows labelled" if p.labelled_rows is not None else ""
                )
                marks.append(
                    f'<circle cx="{cx:.1f}" cy="{frame.y(p.realised):.1f}" r="4" '
                    f'class="pt-realised" data-batch="{_e(p.batch_key)}" data-version="{_e(version)}"><title>'
                    f"{_e(p.batch_key)} · v{_e(version)} · realised {_e(metric)} {_fmt(p.realised)}"
                    f"{_interval(p.realised_low, p.realised_high)}{labelled}</title></circle>"
                )
        marks.append("</g>")
    if series.floor is not None:
        y = frame.y(series.floor)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + frame.w}" y2="{y:.1f}" class="threshold floor">'
            f"<title>gate floor {_e(metric)} {series.floor:g}</title></line>"
            f'<text x="{LEFT + frame.w - 4}" y="{y - 4:.1f}" text-anchor="end" class="lbl thr">'
            f"gate floor {series.floor:g}</text>"
        )
    parts += lines + marks
    keys = "".join(f'<span class="key"><i style="background:{colors[v]}"></i>v{_e(v)}</span>' for v in versions)
    trigger = (
        f'<span class="key"><i class="k-trigger"></i>retrain trigger (holdout {"−" if series.higher_is_better else "+"} '
        f"{f'{series.max_drop:.0%}' if series.relative else f'{series.max_drop:g}'})</span>"
        if series.policy_enabled
        else '<span class="key muted">performance policy off</span>'
    )
    legend = (
        f'{keys}<span class="key">● realised (whiskers: confidence interval)</span><span class="key">○ estimated '
        f'(dashed, label-free)</span><span class="key"><i class="k-reference"></i>holdout reference</span>{trigger}'
        f"{'<span class=key><i class=k-floor></i>gate floor</span>' if series.floor is not None else ''}"
    )
    label = f"{metric} per batch: realised and estimated, per model version"
    return _svg("".join(parts), label, "chart-performance", readout=True) + f'<div class="legend">{legend}</div>'


def _performance_table(view: PipelineView, links: Links) -> str:
    series = view.performance
    if series is None or not series.points:
        dag = f"{view.name}__performance"
        return (
            f'<p class="empty" id="performance-empty">No performance has been recorded yet: the '
            f'<a data-top href="{_e(links.airflow_dag(dag))}"><code>{_e(dag)}</code></a> DAG fills it, the estimate '
            "for every scored batch and the realised value as its labels arrive.</p>"
        )
    shown = series.points[::-1][:SHOWN_PERFORMANCE]
    rows = []
    for p in shown:
        if p.realised is not None:
            realised = f"<b>{_fmt(p.realised)}</b>{_interval(p.realised_low, p.realised_high)}"
        else:
            realised = '<span class="muted">awaiting labels</span>'
        realised += (
            f'<div class="muted">{"–" if p.labelled_rows is None else p.labelled_rows} / '
            f"{'–' if p.batch_rows is None else p.batch_rows} rows labelled</div>"
        )
        if _past(series, "realised", p.realised, p.reference):
            realised += '<div class="bad">past the retrain trigger</div>'
        estimated = f"{_fmt(p.estimated)}{_interval(p.estimated_low, p.estimated_high)}"
        if _past(series, "estimated", p.estimated, p.reference):
            estimated += '<div class="bad">past the retrain trigger</div>'
        rows.append(
            f'<tr data-batch="{_e(p.batch_key)}" data-version="{_e(p.model_version)}"><td>{_e(p.batch_key)}</td>'
            f"<td>v{_e(p.model_version)}</td><td>{realised}</td><td>{estimated}</td>"
            f"<td>{_signed(p.estimate_error)}</td><td>{_fmt(p.reference)}</td></tr>"
        )
    more = (
        f'<p class="muted">Showing the newest {len(shown)} of {len(series.points)} batches and versions.</p>'
        if len(series.points) > len(shown)
        else ""
    )
    metric = _e(series.metric)
    return (
        f'<table id="performance"><tr><th>batch</th><th>version</th><th>realised {metric} [CI]</th>'
        f"<th>estimated {metric}</th><th>estimate error</th><th>holdout {metric}</th></tr>{''.join(rows)}</table>{more}"
    )


def _arm(label: str, value: float | None, low: float | None, high: float | None) -> str:
    return f"<div>{label} <b>{_fmt(value)}</b>{_interval(low, high)}</div>"


def _decisions_table(view: PipelineView, links: Links) -> str:
    dag = f"{view.name}__rollout"
    if not view.decisions:
        mode = " (serving.rollout.mode is <code>none</code>: no test is running)" if view.rollout_mode == "none" else ""
        return (
            f'<p class="empty" id="decisions-empty">No rollout decision yet: the <a data-top '
            f'href="{_e(links.airflow_dag(dag))}"><code>{_e(dag)}</code></a> DAG records one a day while a shadow, '
            f"canary or A/B test runs{mode}.</p>"
        )
    rows = []
    for d in view.decisions:
        run = (
            f' <a data-top href="{_e(links.airflow_run(dag, d.airflow_run_id))}">Airflow run</a>'
            if d.airflow_run_id
            else ""
        )
        rows.append(
            f'<tr data-day="{_e(d.decided_on)}"><td>{_e(d.decided_on)}</td><td>{_e(d.mode)}</td>'
            f"<td>champion v{_e(d.champion_version)}<br>challenger v{_e(d.challenger_version)}</td>"
            f"<td>{d.champion_rows}<br>{d.challenger_rows}</td>"
            f'<td><span class="muted">{_e(d.metric)}</span>'
            f"{_arm('champion', d.champion_value, d.champion_ci_low, d.champion_ci_high)}"
            f"{_arm('challenger', d.challenger_value, d.challenger_ci_low, d.challenger_ci_high)}</td>"
            f"<td><b>{_signed(d.difference)}</b>{_interval(d.difference_ci_low, d.difference_ci_high, signed=True)}</td>"
            f"<td>{'paired' if d.paired else 'unpaired'}</td>"
            f'<td><span class="verdict v-{_e(d.decision)}">{_e(d.decision)}</span></td><td>{_e(d.reason)}{run}</td></tr>'
        )  # fmt: skip
    return (
        '<table id="decisions"><tr><th>day</th><th>mode</th><th>versions</th><th>labelled rows</th>'
        "<th>metric per arm [CI]</th><th>challenger − champion [CI]</th><th>paired</th><th>decision</th><th>reason</th>"
        f"</tr>{''.join(rows)}</table>"
    )


def drift_chart(series: DriftSeries | None, chart_id: str, label: str) -> str:
    if series is None or not series.batches:
        return '<p class="empty">No drift check has run yet.</p>'
    found = [v for line in series.values.values() for v in line if v is not None]
    top = max([*found, series.threshold or 0.0, 1e-6])
    frame = _Frame(len(series.batches), 0, top * 1.1)
    parts = [frame.axes(_x_labels(series.batches), label)]
    if series.threshold is not None:
        y = frame.y(series.threshold)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + frame.w}" y2="{y:.1f}" class="threshold">'
            f"<title>threshold {series.threshold:g}</title></line>"
            f'<text x="{LEFT + frame.w - 4}" y="{y - 4:.1f}" text-anchor="end" class="lbl thr">'
            f"threshold {series.threshold:g}</text>"
        )
    legend = []
    for n, (feature, line) in enumerate(sorted(series.values.items())):
        color = PALETTE[n % len(PALETTE)]
        segments, current = [], []
        for i, value in enumerate(line):
            if value is None:
                if current:
                    segments.append(current)
                current = []
            else:
                current.append(f"{frame.x(i):.1f},{frame.y(value):.1f}")
        if current:
            segments.append(current)
        for segment in segments:
            if len(segment) == 1:
                x, y = segment[0].split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"><title>{_e(feature)}</title></circle>')
            else:
                parts.append(
                    f'<polyline points="{" ".join(segment)}" fill="none" stroke="{color}" stroke-width="1.6">'
                    f"<title>{_e(feature)}</title></polyline>"
                )
        if series.threshold is not None and sum(series.drifted.values()) <= MAX_MARKERS:
            for i, value in enumerate(line):
                if value is not None and series.flagged.get(feature, [False] * len(line))[i]:
                    parts.append(
                        f'<circle cx="{frame.x(i):.1f}" cy="{frame.y(value):.1f}" r="3" fill="{color}">'
                        f"<title>{_e(feature)} {series.batches[i]}: {value:.3f}</title></circle>"
                    )
        drifted = series.drifted.get(feature, 0)
        legend.append(
            f'<span class="key"><i style="background:{color}"></i>{_e(feature)}'
            f"{f' <b>({drifted} over)</b>' if drifted else ''}</span>"
        )
    return _svg("".join(parts), label, chart_id) + f'<div class="legend">{"".join(legend)}</div>'


STYLE = """
:root{--fg:#1a202c;--muted:#64748b;--line:#e2e8f0;--accent:#0f6ecd;--ok:#15803d;--bad:#b91c1c;--warn:#b45309}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
margin:0;padding:16px 20px;background:#fff}h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 8px}
h3{font-size:14px;margin:14px 0 6px}a{color:var(--accent)}.muted,.empty{color:var(--muted)}
.nav a{margin-right:12px}.nav a.on{font-weight:600;text-decoration:none;color:var(--fg)}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid var(--line);border-radius:8px;padding:12px 14px;
min-width:240px;flex:1}.big{font-size:26px;font-weight:600}table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}th{color:var(--muted);
font-weight:600}tr.champion td{background:#fffbea}.verdict{font-weight:600}.v-promote{color:var(--ok)}
.v-reject{color:var(--bad)}.v-dry_run,.v-running{color:var(--warn)}code{font-size:12px}
svg{width:100%;max-width:920px;height:auto;display:block}.axis{stroke:#94a3b8}.grid{stroke:#f1f5f9}
.lbl{font-size:11px;fill:#64748b}.thr{fill:#b91c1c}.threshold{stroke:#b91c1c;stroke-dasharray:6 4;stroke-width:1.5}
.metric{fill:none;stroke:#0f6ecd;stroke-width:2}.ver{fill:#0f6ecd}.champ{fill:#eab308;stroke:#854d0e;stroke-width:1.5}
.bar{fill:#60a5fa}.legend{font-size:12px;margin:2px 0 0 56px}.key{margin-right:14px;white-space:nowrap}
.key i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
.errors{background:#fef2f2;border:1px solid #fecaca;padding:8px 12px;border-radius:6px;color:var(--bad)}
form.rollback{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin-top:8px}
button{background:#b91c1c;color:#fff;border:0;border-radius:6px;padding:6px 12px;cursor:pointer}
input,select{padding:5px;border:1px solid #cbd5e1;border-radius:6px}.reason{max-width:420px}
#rollback-status{font-weight:600}td.links{white-space:nowrap}.bad{color:var(--bad)}
.v-abort{color:var(--bad)}.v-extend{color:var(--warn)}.reference,.ci,.realised,.estimated,.pt-estimated{stroke:currentColor}
.realised,.estimated{fill:none}.pt-realised{fill:currentColor}.realised{stroke-width:1.6}
.estimated{stroke-width:1.4;stroke-dasharray:5 4}.pt-estimated{fill:#fff;stroke-width:1.6}.ci{stroke-width:1.2;fill:none}
.ci.est{stroke-opacity:.35;stroke-width:3}.reference{stroke-width:1;stroke-dasharray:1 3;stroke-opacity:.9}
.trigger{stroke:#b45309;stroke-width:1.2;stroke-dasharray:4 3}
.k-reference,.k-trigger,.k-floor{height:0!important;border-top:2px dotted #64748b;border-radius:0!important}
.k-trigger{border-top:2px dashed #b45309}.k-floor{border-top:2px dashed #b91c1c}
.readout{font-size:12px;color:var(--fg);margin:2px 0 0 56px;min-height:1.4em}
[data-readout] circle{cursor:crosshair}
"""

SCRIPT = """
(function () {
  var inFrame = window.top !== window;
  function topWindow() { try { return inFrame ? window.top : window; } catch (e) { return window; } }
  // The Airflow UI frames this page in a sandbox without top navigation and without dialogs of its own:
  // links to Airflow pages open in the top window, and the confirmation is asked by the top window.
  document.addEventListener('click', function (event) {
    var link = event.target.closest('a[data-top]');
    if (!link || !inFrame) return;
    event.preventDefault();
    try {
      var doc = window.top.document, a = doc.createElement('a');
      a.href = link.href; doc.body.appendChild(a); a.click(); a.remove();
    } catch (e) { window.location.href = link.href; }
  });
  // A chart with a readout shows the <title> of the mark under the pointer at once (the browser's own
  // tooltip waits and cannot be read without a mouse).
  document.querySelectorAll('svg[data-readout]').forEach(function (svg) {
    var out = document.getElementById(svg.dataset.readout);
    svg.addEventListener('mouseover', function (event) {
      var title = event.target !== svg && event.target.querySelector && event.target.querySelector(':scope > title');
      if (title && out) out.textContent = title.textContent;
    });
  });
  document.querySelectorAll('form.rollback').forEach(function (form) {
    form.addEventListener('submit', function (event) {
      event.preventDefault();
      var status = document.getElementById('rollback-status');
      var version = form.elements.version.value, current = form.dataset.current;
      var question = 'Move the champion alias of ' + form.dataset.model + ' from version ' + current +
        ' to version ' + version + '? Batch predictions will use version ' + version + ' from their next run.';
      if (!topWindow().confirm(question)) { status.textContent = 'Rollback cancelled.'; return; }
      status.textContent = 'Rolling back...';
      fetch(form.action, {
        method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json', 'X-Lifecycle-Action': 'rollback'},
        body: JSON.stringify({version: version, expected_current: current, reason: form.elements.reason.value})
      }).then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) throw new Error(body.detail || ('HTTP ' + response.status));
          status.textContent = 'Champion is now version ' + body.champion + '.';
          window.location.reload();
        });
      }).catch(function (err) { status.textContent = 'Rollback failed: ' + err.message; });
    });
  });
})();
"""


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


def _verdict(run: RetrainRun) -> str:
    if run.verdict:
        return f'<span class="verdict v-{_e(run.verdict)}">{_e(run.verdict)}</span>'
    if run.status == "RUNNING":
        return '<span class="verdict v-running">running</span>'
    return f'<span class="muted">{_e(run.status.lower())}</span>'


def _trigger_cell(run: RetrainRun) -> str:
    parts = [f"<div>reason: <b>{_e(run.reason)}</b></div>"]
    details = [f"window {_e(run.window_days)} d" if run.window_days is not None else "", _e(run.search or "")]
    parts.append(f'<div class="muted">{" · ".join(d for d in details if d)}</div>')
    if not run.grid_is_default:
        parts.append(f"<div>grid: <code>{_e(json.dumps(run.grid, sort_keys=True))}</code></div>")
    if run.triggered_by:
        parts.append('<div class="muted">requested by the drift policy</div>')
    return "".join(parts)


def _champion_card(view: PipelineView, links: Links) -> str:
    champion = view.champion
    if champion is None:
        return '<div class="card"><h3>Champion</h3><p class="empty">No champion yet.</p></div>'
    metric = champion.holdout.get(view.primary_metric)
    holdout = ", ".join(f"{k} {_fmt(v)}" for k, v in champion.holdout.items()) or "–"
    run = ""
    if champion.airflow_run_id:
        run = (
            f' · <a data-top href="{_e(links.airflow_run(view.retrain_dag_id, champion.airflow_run_id))}">'
            "Airflow run</a>"
        )
    if champion.mlflow_run_id:
        run += f' · <a href="{_e(links.mlflow_run(view.name, champion.mlflow_run_id))}">MLflow run</a>'
    by = f" by {_e(champion.by)}" if champion.by else ""
    return f"""<div class="card" id="champion"><h3>Champion</h3>
<div class="big">version <span id="champion-version">{champion.version}</span></div>
<div>{_e(view.primary_metric)} on holdout: <b>{_fmt(metric)}</b></div>
<div>{"rolled back" if champion.how == "rollback" else "promoted"} {_e(_when(champion.promoted_at))}{by}</div>
<div class="muted">why: {_e(champion.why)}</div>
<div class="muted">holdout: {_e(holdout)}</div><div>models:/{_e(view.model_name)}@champion{run}</div></div>"""


def _reports_card(view: PipelineView, links: Links) -> str:
    items = []
    if view.latest_evaluation_run:
        items.append(
            f'<li><a id="latest-evaluation" href="{_e(links.evaluation(view.name, view.latest_evaluation_run))}">'
            f"Latest evaluation report</a> <span class=muted>({_e(view.latest_evaluation_run)})</span></li>"
        )
    if view.latest_drift:
        items.append(
            f'<li><a id="latest-drift" href="{_e(links.drift(view.name, view.latest_drift["airflow_run_id"]))}">'
            f"Latest drift report</a> <span class=muted>(batch {_e(view.latest_drift['batch_key'])})</span></li>"
        )
    listed = "".join(items) or '<li class="empty">No report yet.</li>'
    dags = " · ".join(
        f'<a data-top href="{_e(links.airflow_dag(f"{view.name}__{kind}"))}">{kind}</a>'
        for kind in ("retrain", "batch_predict", "drift_check")
    )
    return f'<div class="card"><h3>Reports</h3><ul>{listed}</ul><div class="muted">DAGs: {dags}</div></div>'


def _rollback_form(view: PipelineView, links: Links, can_rollback: bool) -> str:
    if view.champion is None:
        return ""
    earlier = [v for v in view.versions if CHAMPION not in v.aliases]
    if not earlier:
        return '<p class="muted">Rollback: there is no other version to roll back to.</p>'
    if not can_rollback:
        return (
            '<p class="muted">Rollback needs permission to edit this pipeline\'s retrain DAG and, when its YAML '
            "names <code>access.rollbackers</code>, one of those roles.</p>"
        )
    options = "".join(
        f'<option value="{v.version}">version {v.version} · {_e(view.primary_metric)} {_fmt(v.primary)} · '
        f"{_e(_when(v.created_ms))}</option>"
        for v in earlier
    )
    return f"""<form class="rollback" id="rollback-form" action="{_e(links.rollback(view.name))}" method="post"
 data-model="{_e(view.model_name)}" data-current="{view.champion.version}">
<label>Move the champion to <select name="version" id="rollback-version">{options}</select></label>
<input class="reason" name="reason" placeholder="reason (recorded on the version)" maxlength="500">
<button type="submit" id="rollback-button">Roll back</button><span id="rollback-status"></span></form>"""


def _versions_table(view: PipelineView, links: Links) -> str:
    if not view.versions:
        return '<p class="empty">No registered version yet.</p>'
    rows = []
    for v in view.versions:
        rollback = ""
        if v.rollback_at:
            rollback = f"to this by {_e(v.rollback_by)} at {_e(_when(v.rollback_at))}"
            if v.rollback_reason:
                rollback += f": {_e(v.rollback_reason)}"
        run = (
            f'<a data-top href="{_e(links.airflow_run(view.retrain_dag_id, v.airflow_run_id))}">Airflow</a>'
            if v.airflow_run_id
            else ""
        )
        if v.mlflow_run_id:
            run += f' <a href="{_e(links.mlflow_run(view.name, v.mlflow_run_id))}">MLflow</a>'
        rows.append(
            f'<tr class="{"champion" if CHAMPION in v.aliases else ""}"><td>v{v.version}</td>'
            f"<td>{_e(', '.join(v.aliases))}</td><td>{_e(v.family or '')}</td><td>{_e(_when(v.created_ms))}</td>"
            f"<td>{_fmt(v.primary)}</td>"
            f"<td>{_e(v.gate_reason)}</td><td>{rollback}</td><td>{run}</td></tr>"
        )
    return (
        f'<table id="versions"><tr><th>version</th><th>alias</th><th>family</th><th>registered</th><th>{_e(view.primary_metric)}</th>'
        f"<th>gate reason</th><th>rollback</th><th>runs</th></tr>{''.join(rows)}</table>"
    )


def _history_table(view: PipelineView, links: Links) -> str:
    if not view.history:
        return '<p class="empty">No alias move recorded yet.</p>'
    rows = []
    for move in view.history:
        run = (
            f' <a data-top href="{_e(links.airflow_run(view.retrain_dag_id, move.airflow_run_id))}">Airflow run</a>'
            if move.airflow_run_id
            else ""
        )
        came = f"from v{_e(move.previous_version)}" if move.previous_version else "first champion"
        rows.append(
            f'<tr class="{"champion" if move.until is None else ""}"><td>v{_e(move.version)}</td>'
            f"<td>{_e(_when(move.since))}</td><td>{_e(_when(move.until)) if move.until else 'now'}</td>"
            f"<td>{_e(move.how)}</td><td>{_e(move.moved_by)}</td><td>{came}</td><td>{_e(move.reason)}{run}</td></tr>"
        )
    return (
        '<table id="alias-history"><tr><th>champion</th><th>from</th><th>until</th><th>how</th><th>by</th>'
        f"<th>replaced</th><th>why</th></tr>{''.join(rows)}</table>"
    )


def _mlflow_ui_link(links: Links, run: RetrainRun) -> str:
    url = links.mlflow_ui_run(run.experiment_id, run.mlflow_run_id)
    return f' <a data-top href="{_e(url)}">(UI)</a>' if url else ""


def _runs_table(view: PipelineView, links: Links) -> str:
    if not view.runs:
        return '<p class="empty">No retrain run yet.</p>'
    rows = []
    for run in view.runs[:SHOWN_RUNS]:
        report = f' <a href="{_e(links.evaluation(view.name, run.airflow_run_id))}">report</a>' if run.verdict else ""
        rows.append(
            f'<tr data-run-id="{_e(run.airflow_run_id)}"><td>{_e(_when(run.started_ms))}</td><td>{_e(run.as_of or "–")}</td>'
            f"<td>{_trigger_cell(run)}</td><td>{_verdict(run)}</td><td>{_e(run.gate_reason)}</td>"
            f"<td>{_fmt(run.primary)}<div class=muted>baseline {_fmt(run.baseline_primary)}"
            f"{f' · champion {_fmt(run.champion_primary)}' if run.champion_primary is not None else ''}</div></td>"
            f"<td>{f'v{run.registered_version}' if run.registered_version else '–'}</td>"
            f'<td class="links"><a data-top href="{_e(links.airflow_run(run.dag_id or view.retrain_dag_id, run.airflow_run_id))}">'
            f'Airflow run</a><br><a href="{_e(links.mlflow_run(view.name, run.mlflow_run_id))}">MLflow run</a>'
            f"{_mlflow_ui_link(links, run)}{report}</td></tr>"
        )
    more = (
        f'<p class="muted">Showing the newest {SHOWN_RUNS} of {len(view.runs)} runs.</p>'
        if len(view.runs) > SHOWN_RUNS
        else ""
    )
    return (
        f'<table id="runs"><tr><th>started</th><th>as of</th><th>trigger</th><th>verdict</th><th>reason</th>'
        f"<th>holdout {_e(view.primary_metric)}</th><th>version</th><th>links</th></tr>{''.join(rows)}</table>{more}"
    )


def render_pipeline(view: PipelineView, links: Links, *, can_rollback: bool) -> str:
    errors = "".join(f"<div>{_e(e)}</div>" for e in view.errors)
    direction = "higher" if view.higher_is_better else "lower"
    return f"""<section class="pipeline" id="pipeline-{_e(view.name)}">
<h1>{_e(view.name)} <span class="muted">· model {_e(view.model_name)}</span></h1>
{f'<div class="errors">{errors}</div>' if errors else ""}
<div class="cards">{_champion_card(view, links)}{_reports_card(view, links)}</div>
{_rollback_form(view, links, can_rollback)}
<h2>{_e(view.primary_metric)} on holdout per model version <span class="muted">({direction} is better)</span></h2>
{metric_chart(view)}
<h2>Performance over time: {_e(view.primary_metric)} per batch <span class="muted">(realised once labels arrive,
estimated before; {direction} is better)</span></h2>
{performance_chart(view)}
{_performance_table(view, links)}
<h2>Challengers: every retrain run</h2>
{_runs_table(view, links)}
<h2>Rollout decisions <span class="muted">(a challenger on live traffic against the champion)</span></h2>
{_decisions_table(view, links)}
<h2>Rows scored per batch</h2>
{rows_chart(view)}
<h2>Drift per feature over batches: PSI (numeric features and predictions)</h2>
{drift_chart(view.psi, "chart-psi", "PSI")}
<h2>Drift per feature over batches: Jensen–Shannon distance (categorical features)</h2>
{drift_chart(view.js, "chart-js", "JS distance")}
<h2>Champion history <span class="muted">(every move of models:/{_e(view.model_name)}@champion)</span></h2>
{_history_table(view, links)}
<h2>Registered versions</h2>
{_versions_table(view, links)}
</section>"""


def document(title: str, body: str) -> str:
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>{body}<script>{SCRIPT}</script></body></html>"""


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
    shown = {v.name for v in views}
    nav = " ".join(
        f'<a class="{"on" if n in shown else ""}" href="{_e(links.page(n))}">{_e(n)}</a>' for n in names
    )  # fmt: skip
    sections = "".join(render_pipeline(v, links, can_rollback=can_rollback.get(v.name, False)) for v in views)
    if not names:
        sections = '<p class="empty">No pipeline you may read.</p>'
    footer = f'<p class="muted">Signed in as {_e(user)}.' if user else '<p class="muted">'
    if seconds is not None:
        footer += f" Rendered in {seconds * 1000:.0f} ms."
    return document("Models", f'<div class="nav">Pipelines: {nav}</div>{sections}{footer}</p>')


def render_run(details: dict[str, Any], pipeline: str, links: Links) -> str:
    def table(items: dict[str, Any]) -> str:
        rows = "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_e(v)}</td></tr>" for k, v in items.items())
        return f"<table>{rows}</table>" if rows else '<p class="empty">none</p>'

    info = {k: details[k] for k in ("run_id", "run_name", "status", "started", "ended", "experiment", "artifact_uri")}
    return document(
        f"MLflow run {details['run_id']}",
        f"""<p><a href="{_e(links.page(pipeline))}">&larr; Models</a></p><h1>MLflow run {_e(details["run_id"])}</h1>
{table(info)}<h2>Tags</h2>{table(details["tags"])}<h2>Metrics</h2>{table(details["metrics"])}
<h2>Params</h2>{table(details["params"])}""",
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
