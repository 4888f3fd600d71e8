"""The rollout's verdict on a canary, A/B or shadow test: logged online predictions joined with their labels.

Pure functions first (the join, each arm's metric with a percentile-bootstrap interval, the oriented difference,
the policy), then the two task functions of `<pipeline>__rollout`: `decide` (read, compute, record the day's
decision) and `apply` (promote, abort or extend, by compare-and-set on the registry's aliases).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from lifecycle.config.pipeline import METRICS, PipelineConfig, RolloutDecision
from lifecycle.ml import metrics
from lifecycle.ml.ingestion import SourceError

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
PROMOTE, EXTEND, ABORT = "promote", "extend", "abort"
MOVED_BY = "the rollout"
HOW = "rollout"
LABEL_BASED = ("accuracy", "f1")  # what a multiclass log can measure: it keeps the class, not every probability


def online_metric(task: str, primary: str) -> str:
    """The metric the online log can measure: the primary one, or accuracy where the log lacks what it needs.

    A multiclass row is logged with its class and the top class's probability only, so ROC AUC and log loss
    (which need every class's probability) are measured as accuracy; a binary or regression metric that
    `metrics` cannot compute from one score per row likewise falls back to the task's first one.
    """
    if task == "multiclass":
        return primary if primary in LABEL_BASED else "accuracy"
    probe = metrics.compute(task, [0.0, 1.0], np.array([0.2, 0.8]), 0.5)
    return primary if primary in probe else ("roc_auc" if task == "binary" else "rmse")


def _utc_day(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True).dt.tz_convert("UTC").dt.date


def _text(value: Any) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def join_labels(predictions: pd.DataFrame, labels: pd.DataFrame, keys: tuple[str, ...] = ("arm",)) -> pd.DataFrame:
    """Each prediction with its entity's label of the same day (UTC), one row per entity, day and `keys`.

    The labels feed labels an entity's state at a timestamp (its day, as for a batch), and an online request
    asks about the entity's state when it is made: a label of another day is the outcome of another state, so
    the join is on the entity and the day, both in UTC (the log stores UTC; label timestamps are naive UTC),
    so a request at 23:30 in New York meets the label of the next UTC day. An entity asked about twice that
    day is one outcome and counts once per arm: its latest prediction is kept, so a client that retries or
    refreshes does not weigh its entity twice. More than one label that day: the latest timestamp's wins.
    Predictions without a label yet are left out (they may be labelled later).
    """
    out_columns = [*predictions.columns, "day", "actual"]
    if predictions.empty or labels.empty:
        return pd.DataFrame(columns=out_columns)
    frame = predictions.copy()
    frame["entity_id"] = frame["entity_id"].astype(str)
    frame["day"] = _utc_day(frame["predicted_at"])
    daily = labels.sort_values("labelled_at").drop_duplicates(["entity_id", "batch_key"], keep="last")
    daily = daily.rename(columns={"batch_key": "day", "label": "actual"})[["entity_id", "day", "actual"]]
    daily["entity_id"] = daily["entity_id"].astype(str)
    joined = frame.merge(daily, on=["entity_id", "day"], how="inner")
    order = [c for c in ("predicted_at", "request_id", "row_index") if c in joined.columns]
    joined = joined.sort_values(order, kind="stable").drop_duplicates(["entity_id", "day", *keys], keep="last")
    return joined.reset_index(drop=True)[out_columns]


def pair_shadow(predictions: pd.DataFrame) -> pd.DataFrame:
    """Shadow mode: each answered row beside the challenger's shadow score of the same request and row.

    Columns: the champion row's, plus `challenger_score` and `challenger_label`; rows whose shadow score is
    missing (dropped when the log was full, or the challenger failed) are left out, so both arms are always
    measured on exactly the same requests.
    """
    champion = predictions[(predictions["arm"] == CHAMPION) & ~predictions["shadow"].astype(bool)]
    shadow = predictions[(predictions["arm"] == CHALLENGER) & predictions["shadow"].astype(bool)]
    shadow = shadow[["request_id", "row_index", "score", "label"]].rename(
        columns={"score": "challenger_score", "label": "challenger_label"}
    )
    return champion.merge(shadow, on=["request_id", "row_index"], how="inner")


def _positive_class(predicted: pd.Series, scores: pd.Series, actual: pd.Series, threshold: float) -> str:
    """The binary class the scores are the probability of: the label logged for a score at the threshold or above."""
    above = predicted[scores >= threshold].dropna()
    if len(above):
        return str(above.iloc[0])
    below = set(predicted[scores < threshold].dropna().astype(str))
    values = sorted(set(actual.map(_text)) | below, key=lambda v: (0, float(v), v) if _is_number(v) else (1, 0.0, v))
    others = [v for v in values if v not in below]
    return others[-1] if others else values[-1]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def prepare(task: str, actual: pd.Series, score: pd.Series, predicted: pd.Series, positive: str | None, classes: list):
    """(y, what `metrics.metric` takes for this task) for one arm's labelled rows."""
    if task == "binary":
        return (actual.map(_text) == positive).astype(int).to_numpy(), score.astype(float).to_numpy()
    if task == "regression":
        return pd.to_numeric(actual, errors="raise").astype(float).to_numpy(), score.astype(float).to_numpy()
    position = {c: k for k, c in enumerate(classes)}
    onehot = np.zeros((len(predicted), len(classes)))
    onehot[np.arange(len(predicted)), [position[str(v)] for v in predicted]] = 1.0
    return actual.map(_text).to_numpy(), onehot


def _interval(values: list[float], confidence: float) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def compare(
    task: str,
    name: str,
    higher_is_better: bool,
    champion: tuple[np.ndarray, np.ndarray],
    challenger: tuple[np.ndarray, np.ndarray],
    *,
    paired: bool,
    resamples: int,
    confidence: float,
    threshold: float = 0.5,
    classes: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Each arm's metric with a percentile-bootstrap interval, and challenger minus champion (> 0 is better).

    Paired (both arms scored the same rows, in the same order: shadow mode): each resample draws rows once
    and scores both arms on them, so what the rows have in common cancels out of the difference. Unpaired
    (canary, A/B: each arm its own entities): each arm is resampled on its own, and the difference of two
    independent draws is the difference's distribution. A resample where the metric is undefined (one class
    only, for ROC AUC) is skipped; the seed is fixed, so a rerun on the same rows gives the same numbers.
    """
    (y_a, s_a), (y_b, s_b) = champion, challenger
    if paired and len(y_a) != len(y_b):
        raise ValueError(f"paired arms need the same rows: {len(y_a)} champion rows, {len(y_b)} challenger rows")
    sign = 1.0 if higher_is_better else -1.0

    def value(y: np.ndarray, s: np.ndarray) -> float:
        if len(y) == 0:
            return float("nan")
        return metrics.metric(task, name, y, s, threshold, classes)

    point_a, point_b = value(y_a, s_a), value(y_b, s_b)
    rng = np.random.default_rng(seed)
    values_a, values_b, diffs = [], [], []
    if len(y_a) and len(y_b):
        for _ in range(resamples):
            idx_a = rng.integers(0, len(y_a), len(y_a))
            idx_b = idx_a if paired else rng.integers(0, len(y_b), len(y_b))
            a, b = value(y_a[idx_a], s_a[idx_a]), value(y_b[idx_b], s_b[idx_b])
            if math.isfinite(a) and math.isfinite(b):
                values_a.append(a)
                values_b.append(b)
                diffs.append(sign * (b - a))
    difference = sign * (point_b - point_a)
    (a_low, a_high), (b_low, b_high) = _interval(values_a, confidence), _interval(values_b, confidence)
    d_low, d_high = _interval(diffs, confidence)
    return {
        "champion_value": _finite(point_a), "champion_ci_low": a_low, "champion_ci_high": a_high,
        "challenger_value": _finite(point_b), "challenger_ci_low": b_low, "challenger_ci_high": b_high,
        "difference": _finite(difference), "difference_ci_low": d_low, "difference_ci_high": d_high,
        "resamples": len(diffs), "paired": paired,
    }  # fmt: skip


def policy(
    rule: RolloutDecision,
    metric: str,
    champion_rows: int,
    challenger_rows: int,
    result: dict[str, Any],
    days_running: int,
) -> tuple[str, str]:
    """(promote | extend | abort, why in words with the numbers), by `serving.decision` (RolloutDecision).

    promote: at least `min_labelled` labelled rows per arm and the difference's interval low end above
    -tolerance; abort: its high end below -tolerance; otherwise extend, until `max_days` after the test began,
    when an undecided test is aborted: the champion stays.
    """
    floor = f"{0.0 - rule.tolerance + 0.0:+.4f}"  # -tolerance, never printed as -0.0000
    low, high, difference = result.get("difference_ci_low"), result.get("difference_ci_high"), result.get("difference")
    counts = f"{champion_rows} champion and {challenger_rows} challenger labelled rows"
    if difference is None or low is None or high is None:
        verdict, why = EXTEND, f"{metric} cannot be measured yet ({counts})"
    else:
        numbers = (
            f"{metric} challenger {result['challenger_value']:.4f} vs champion {result['champion_value']:.4f}: "
            f"difference {difference:+.4f} (oriented, > 0 is better), {rule.confidence:.0%} interval "
            f"[{low:+.4f}, {high:+.4f}]{' paired' if result.get('paired') else ''}, on {counts}"
        )
        enough = min(champion_rows, challenger_rows) >= rule.min_labelled
        if high < -rule.tolerance:
            verdict, why = ABORT, f"the challenger is worse: {numbers}; high end below -tolerance {floor}"
        elif low > -rule.tolerance and enough:
            verdict, why = (
                PROMOTE,
                f"the challenger is not worse: {numbers}; low end above -tolerance {floor}",
            )
        elif not enough:
            verdict, why = EXTEND, f"too few labelled rows (min_labelled {rule.min_labelled} per arm): {numbers}"
        else:
            verdict, why = EXTEND, f"undecided: {numbers}; the interval spans -tolerance {floor}"
    if verdict == EXTEND and days_running >= rule.max_days:
        return ABORT, f"undecided after {days_running} days (max_days {rule.max_days}), the champion stays: {why}"
    if verdict == EXTEND:
        why = f"{why}; day {days_running} of max_days {rule.max_days}"
    return verdict, why


def evaluate(
    config: PipelineConfig,
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    versions: tuple[str, str],
    days_running: int,
) -> dict[str, Any]:
    """The decision from logged predictions (online_predictions' columns) and labels (`labels.read_labels`)."""
    champion_version, challenger_version = versions
    mode = config.serving.rollout.mode
    paired = mode == "shadow"
    task, rule = config.task, config.serving.decision
    name = online_metric(task, config.training.primary_metric)
    higher_is_better = METRICS[name][1]
    threshold = config.prediction.threshold
    if paired:
        wanted = predictions[
            ((predictions["arm"] == CHAMPION) & (predictions["model_version"] == champion_version))
            | ((predictions["arm"] == CHALLENGER) & (predictions["model_version"] == challenger_version))
        ]
        rows = join_labels(pair_shadow(wanted), labels, keys=())
        arm_a = rows.assign(score=rows["score"], predicted=rows["label"])
        arm_b = rows.assign(score=rows["challenger_score"], predicted=rows["challenger_label"])
    else:
        versions_of = {CHAMPION: champion_version, CHALLENGER: challenger_version}
        answered = predictions[~predictions["shadow"].astype(bool)]
        answered = answered[answered["model_version"].astype(str) == answered["arm"].map(versions_of)]
        rows = join_labels(answered, labels)
        arm_a = rows[rows["arm"] == CHAMPION].assign(predicted=lambda f: f["label"])
        arm_b = rows[rows["arm"] == CHALLENGER].assign(predicted=lambda f: f["label"])
    both = pd.concat([arm_a, arm_b])
    positive, classes = None, None
    try:
        if task == "binary" and len(both):
            positive = _positive_class(both["predicted"], both["score"].astype(float), both["actual"], threshold)
        if task == "multiclass":
            classes = sorted(set(both["actual"].map(_text)) | set(both["predicted"].dropna().astype(str)))
        prepared = [prepare(task, arm["actual"], arm["score"], arm["predicted"], positive, classes or [])
                    for arm in (arm_a, arm_b)]  # fmt: skip
    except (ValueError, TypeError) as err:
        column = config.label_columns[2]
        sample = sorted(map(str, set(both["actual"])))[:5]
        raise SourceError(
            f"pipeline {config.name!r}, labels source column {column!r}: labels that do not fit a {task} task "
            f"({err}); values like {sample}"
        ) from err
    result = compare(
        task, name, higher_is_better, prepared[0], prepared[1], paired=paired, resamples=rule.resamples,
        confidence=rule.confidence, threshold=threshold, classes=classes,
    )  # fmt: skip
    decision, reason = policy(rule, name, len(arm_a), len(arm_b), result, days_running)
    if name != config.training.primary_metric:
        reason = f"{reason} ({config.training.primary_metric} needs more than the online log keeps: measured {name})"
    return {
        **result,
        "mode": mode,
        "metric": name,
        "champion_rows": len(arm_a),
        "challenger_rows": len(arm_b),
        "decision": decision,
        "reason": reason,
    }


# ---- reading what the service logged, and the task functions ------------------------------------------------------


def _as_day(day: dt.date | str) -> dt.date:
    return day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day)[:10])


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def read_online_predictions(
    engine: Any, pipeline: str, champion_version: str, challenger_version: str, start: dt.date, end: dt.date
) -> pd.DataFrame:
    """The logged predictions of both arms' versions made on days start..end (UTC), [] before the log exists."""
    import sqlalchemy as sa

    from lifecycle.serving.log_writer import TABLE, online_predictions_table

    columns = "request_id row_index entity_id arm model_version score label predicted_at shadow".split()
    if not sa.inspect(engine).has_table(TABLE):
        return pd.DataFrame(columns=columns)
    table = online_predictions_table(sa.MetaData())
    query = sa.select(*(table.c[c] for c in columns)).where(
        table.c.pipeline == pipeline,
        table.c.predicted_at >= _midnight(start),
        table.c.predicted_at < _midnight(end + dt.timedelta(days=1)),
        sa.or_(
            (table.c.arm == CHAMPION) & (table.c.model_version == champion_version),
            (table.c.arm == CHALLENGER) & (table.c.model_version == challenger_version),
        ),
    )
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query).all(), columns=columns)
    frame["predicted_at"] = pd.to_datetime(frame["predicted_at"], utc=True)
    frame["shadow"] = frame["shadow"].astype(bool)
    return frame


def began_on(engine: Any, config: PipelineConfig, challenger_version: str) -> dt.date | None:
    """The day the test of this challenger began: when its alias moved to it, else its first logged prediction."""
    import sqlalchemy as sa

    from lifecycle.registry import registry_history
    from lifecycle.serving.log_writer import TABLE, online_predictions_table

    alias = config.serving.rollout.challenger
    if isinstance(alias, str):
        moves = registry_history.periods(engine, config.registered_model_name, alias, limit=1)
        if moves and str(moves[0]["version"]) == challenger_version:
            return _utc_day(pd.Series([moves[0]["moved_at"]])).iloc[0]
    if not sa.inspect(engine).has_table(TABLE):
        return None
    table = online_predictions_table(sa.MetaData())
    query = sa.select(sa.func.min(table.c.predicted_at)).where(
        table.c.pipeline == config.name, table.c.arm == CHALLENGER, table.c.model_version == challenger_version
    )
    with engine.connect() as conn:
        first = conn.execute(query).scalar()
    return None if first is None else _utc_day(pd.Series([first])).iloc[0]


def _skip(config: PipelineConfig, day: dt.date, reason: str) -> dict[str, Any]:
    log.info("%s: nothing to decide on %s: %s", config.name, day, reason)
    return {"skipped": True, "pipeline": config.name, "day": day.isoformat(), "reason": reason}


def decide(
    config: PipelineConfig,
    run_id: str,
    day: dt.date | str,
    database_url: str,
    connection_urls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Decide the test on `day` from predictions logged since it began and labels arrived by the end of `day`.

    Records the day's decision (a rerun replaces it) and returns it as a small dict for `apply`. With rollout
    mode none, no champion, or a challenger that names no version (its alias removed by an earlier promote or
    abort), nothing is recorded and the answer says why (`skipped`).
    """
    from lifecycle.ml import labels as labels_module
    from lifecycle.persistence import rollout_store
    from lifecycle.persistence.predictions_db import engine_for
    from lifecycle.registry import tracking

    day = _as_day(day)
    rollout = config.serving.rollout
    if rollout.mode == "none":
        return _skip(config, day, "serving.rollout.mode is none: no test is running")
    if config.labels is None:
        raise labels_module.NoLabelsSourceError(
            f"pipeline {config.name!r}: serving.rollout.mode is {rollout.mode!r} but the YAML has no 'labels' "
            "source: the rollout decides from the outcomes of online predictions"
        )
    name = config.registered_model_name
    current = tracking.champion(name)
    if current is None:
        return _skip(config, day, f"models:/{name}@champion is not set: there is no champion to test against")
    champion_version = str(current.version)
    challenger_version = tracking.rollout_challenger(name, rollout.challenger)
    named = f"alias {rollout.challenger!r}" if isinstance(rollout.challenger, str) else f"version {rollout.challenger}"
    if challenger_version is None:
        return _skip(config, day, f"serving.rollout.challenger ({named}) names no version of {name!r}: the test "
                                  "has ended (promoted or aborted) or has not started")  # fmt: skip
    if challenger_version == champion_version:
        return _skip(config, day, f"the challenger ({named}) is the champion, version {champion_version}: "
                                  "nothing to compare")  # fmt: skip
    engine = engine_for(database_url)
    try:
        started = began_on(engine, config, challenger_version) or day
        if started > day:
            return _skip(config, day, f"the test of version {challenger_version} began on {started}, after {day}")
        predictions = read_online_predictions(engine, config.name, champion_version, challenger_version, started, day)
        labels = labels_module.read_labels(config, started, day + dt.timedelta(days=1), day, connection_urls)
        result = evaluate(config, predictions, labels, (champion_version, challenger_version), (day - started).days)
        row = {
            key: result[key]
            for key in rollout_store.COLUMNS
            if key in result and key not in ("pipeline", "decided_on", "airflow_run_id", "decided_at")
        }
        row |= {
            "pipeline": config.name, "decided_on": day, "champion_version": champion_version,
            "challenger_version": challenger_version, "airflow_run_id": run_id,
        }  # fmt: skip
        rollout_store.replace_decision(engine, row)
    finally:
        engine.dispose()
    print(f"{config.name} {day}: {result['decision']}: {result['reason']}")
    return {
        "skipped": False,
        "pipeline": config.name,
        "day": day.isoformat(),
        "started": started.isoformat(),
        "logged_predictions": len(predictions),
        "labels": len(labels),
        "challenger_alias": rollout.challenger if isinstance(rollout.challenger, str) else None,
        **{k: row[k] for k in ("mode", "metric", "champion_version", "challenger_version", "champion_rows",
                               "challenger_rows", "difference", "difference_ci_low", "difference_ci_high",
                               "paired", "decision", "reason")},
    }  # fmt: skip


def apply(config: PipelineConfig, run_id: str, decision: dict[str, Any], database_url: str) -> dict[str, Any]:
    """Act on the decision: promote (champion to the challenger, its alias removed), abort (alias removed), extend.

    Promotion is a compare-and-set: the champion must still be the version the decision compared against
    (else ChampionMovedError, nothing moved). Every step finds before it changes, so a retry, or a run of the
    same decision again, leaves the same state: one champion move and one alias removal in the history.
    """
    from lifecycle.persistence.predictions_db import engine_for
    from lifecycle.registry import tracking

    if decision.get("skipped"):
        return {"action": "none", "champion_moved": False, "reason": decision["reason"]}
    name, verdict, reason = config.registered_model_name, decision["decision"], decision["reason"]
    version, alias = str(decision["challenger_version"]), decision.get("challenger_alias")
    client = tracking.mlflow_client()
    for key, value in (("rollout.decision", verdict), ("rollout.reason", reason[:5000]),
                       ("rollout.decided_on", decision["day"])):  # fmt: skip
        client.set_model_version_tag(name, version, key, value)
    answer: dict[str, Any] = {"action": verdict, "champion_moved": False, "challenger_version": version}
    if verdict == EXTEND:
        return answer | {"reason": f"the test goes on: {reason}"}
    engine = engine_for(database_url)
    try:
        if verdict == PROMOTE:
            moved = tracking.promote_version(
                name, version, decision["champion_version"], engine=engine, moved_by=MOVED_BY, how=HOW,
                reason=f"rollout {decision['day']}: {reason}", airflow_run_id=run_id,
            )  # fmt: skip
            answer |= {"champion_moved": True, "moved_now": moved, "previous_champion": decision["champion_version"]}
        if alias:
            why = "promoted to champion" if verdict == PROMOTE else "the test was aborted"
            answer["alias_removed"] = tracking.remove_alias(
                name, alias, version, engine=engine, moved_by=MOVED_BY, how=HOW,
                reason=f"rollout {decision['day']}: {why}: {reason}", airflow_run_id=run_id,
            )  # fmt: skip
        elif verdict == ABORT:
            answer["note"] = (
                f"serving.rollout.challenger names version {version} by number: there is no alias to remove, so "
                "serving keeps routing to it until the YAML's serving.rollout.mode is set to none"
            )
            log.warning("%s: %s", config.name, answer["note"])
    finally:
        engine.dispose()
    return answer | {"reason": reason}
