"""One typed model per pipeline YAML, validated once, with errors that name the file and the field."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

PIPELINES_DIR = Path(__file__).resolve().parents[2] / "pipelines"

TaskType = Literal["binary", "multiclass", "regression"]

# Metric name -> (tasks it applies to, True when higher is better).
METRICS: dict[str, tuple[frozenset[str], bool]] = {
    "roc_auc": (frozenset({"binary", "multiclass"}), True),
    "pr_auc": (frozenset({"binary"}), True),
    "log_loss": (frozenset({"binary", "multiclass"}), False),
    "f1": (frozenset({"binary", "multiclass"}), True),
    "precision": (frozenset({"binary"}), True),
    "recall": (frozenset({"binary"}), True),
    "accuracy": (frozenset({"binary", "multiclass"}), True),
    "rmse": (frozenset({"regression"}), False),
    "mae": (frozenset({"regression"}), False),
    "r2": (frozenset({"regression"}), True),
    # Calibration (issue 11): expected calibration error and Brier score of the probabilities.
    "ece": (frozenset({"binary", "multiclass"}), False),
    "brier": (frozenset({"binary", "multiclass"}), False),
}

# Where each metric's values lie (a floor outside can never be met, or always is); unlisted: [0, inf).
METRIC_RANGES: dict[str, tuple[float, float]] = {
    **{m: (0.0, 1.0) for m in ("roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy", "ece", "brier")},
    "r2": (-math.inf, 1.0),
}

# Secondary metrics the gate guards by default (the primary must improve, these must not get worse by more
# than their tolerance): a challenger that keeps the ranking but destroys the probabilities is refused.
DEFAULT_SECONDARY: dict[str, dict[str, float]] = {
    "binary": {"log_loss": 0.01},
    "multiclass": {"log_loss": 0.01},
    "regression": {},
}

_NAME = r"^[a-z][a-z0-9_]*$"

# LightGBM's scikit-learn parameters that a grid may tune (kept here so parsing needs no lightgbm).
LGBM_PARAMS = frozenset(
    "boosting_type num_leaves max_depth learning_rate n_estimators subsample_for_bin min_split_gain "
    "min_child_weight min_child_samples subsample subsample_freq colsample_bytree reg_alpha reg_lambda "
    "class_weight max_bin min_data_per_group cat_smooth".split()
)


class ConfigError(ValueError):
    """A pipeline file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Join(_Strict):
    keys: list[str] = Field(min_length=1)
    how: Literal["left", "inner"] = "left"


class Source(_Strict):
    """A local path or s3:// URI (CSV or Parquet; single file, glob or date partitions) or a SQL query."""

    name: Annotated[str, Field(pattern=_NAME)]
    uri: str | None = None
    format: Literal["parquet", "csv"] = "parquet"
    layout: Literal["file", "glob", "date_partitioned"] = "file"
    sql: str | None = None
    conn_id: str | None = None
    join: Join | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        _check_kind(self)
        return self


def _check_kind(source: Source | Labels) -> None:
    """A file source or a SQL one, never both, with what each needs."""
    if (source.uri is None) == (source.sql is None):
        raise ValueError("give exactly one of 'uri' or 'sql'")
    if source.sql is not None and not source.conn_id:
        raise ValueError("a 'sql' source needs 'conn_id' (an Airflow connection id)")
    if source.layout == "date_partitioned" and source.uri and "{date}" not in source.uri:
        raise ValueError("a date_partitioned uri needs a '{date}' placeholder, e.g. .../date={date}/")


# The functions pandas.eval (numexpr) knows; anything else in a derived expression fails at run time.
EVAL_FUNCTIONS = frozenset(
    "sin cos tan exp log expm1 log1p log10 sqrt sinh cosh tanh arcsin arccos arctan arccosh arcsinh arctanh "
    "abs arctan2".split()
)
_EVAL_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Name, ast.Load, ast.Constant, ast.Call,
    ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)  # fmt: skip


def expression_columns(expression: str) -> list[str]:
    """The columns a derived expression reads; a ValueError says what pandas.eval would refuse."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"expression {expression!r} is not valid: {err.msg} at character {err.offset}") from None
    names = []
    for node in ast.walk(tree):
        if not isinstance(node, _EVAL_NODES):
            raise ValueError(
                f"expression {expression!r}: {type(node).__name__} is not allowed (arithmetic, comparisons, "
                f"and the functions {sorted(EVAL_FUNCTIONS)})"
            )
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in EVAL_FUNCTIONS or node.keywords:
                called = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                raise ValueError(f"expression {expression!r}: {called}() is not one of {sorted(EVAL_FUNCTIONS)}")
        elif isinstance(node, ast.Name):
            names.append((node.col_offset, node.id))
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return list(dict.fromkeys(n for _, n in sorted(names) if n not in called))


class DerivedFeature(_Strict):
    name: Annotated[str, Field(pattern=_NAME)]
    expression: str  # evaluated with pandas.DataFrame.eval on the raw columns

    @field_validator("expression")
    @classmethod
    def _parses(cls, expression: str) -> str:
        if not expression.strip():
            raise ValueError("the expression is empty")
        if not expression_columns(expression):
            raise ValueError(f"expression {expression!r} reads no column")
        return expression


class Features(_Strict):
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    derived: list[DerivedFeature] = Field(default_factory=list)
    infer: bool = False  # take every other column, typed from the data

    @model_validator(mode="after")
    def _something(self) -> Features:
        if not (self.numeric or self.categorical or self.infer):
            raise ValueError("list 'numeric' and/or 'categorical' features, or set 'infer: true'")
        overlap = set(self.numeric) & set(self.categorical)
        if overlap:
            raise ValueError(f"columns listed as both numeric and categorical: {sorted(overlap)}")
        return self


class Training(_Strict):
    window_days: int = Field(60, ge=7, le=3650)
    validation_days: int = Field(7, ge=1)
    holdout_days: int = Field(7, ge=1)
    cv_folds: int = Field(3, ge=2, le=10)
    search: Literal["halving", "grid"] = "halving"
    grid: dict[str, list[Any]] = Field(min_length=1)
    primary_metric: str = "roc_auc"
    random_state: int = 42
    # Classification: the chosen model's probabilities are calibrated on the validation split (isotonic,
    # sigmoid (Platt), or auto: isotonic with enough validation rows of each class, else sigmoid; none: off).
    calibration: Literal["auto", "isotonic", "sigmoid", "none"] = "auto"

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if key not in LGBM_PARAMS:
                raise ValueError(f"unknown LightGBM parameter {key!r}; known: {sorted(LGBM_PARAMS)}")
            if not values:
                raise ValueError(f"grid entry {key!r} has no values")
        return grid


class Bootstrap(_Strict):
    resamples: int = Field(200, ge=20, le=10000)  # fewer cannot give a 90% interval worth the name
    confidence: float = Field(0.9, gt=0.5, lt=1.0)


class Gate(_Strict):
    # enforce: promote what passes; approve: what passes waits for a person in the Airflow UI;
    # dry_run: decide and record, promote nothing; off: promote every challenger; canary: what passes
    # becomes the `challenger` alias that serving.rollout routes a share of live traffic to (the first
    # model, with no champion to compare against, is promoted at once).
    mode: Literal["enforce", "approve", "dry_run", "off", "canary"] = "enforce"
    approval_timeout_hours: float = Field(72, gt=0)  # unanswered, the request is rejected and the champion stays
    floors: dict[str, float] = Field(default_factory=dict)
    min_improvement: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    bootstrap: Bootstrap = Bootstrap()
    # Metric -> the most it may get worse than the champion's (absolute) while the primary improves. Empty
    # or absent: DEFAULT_SECONDARY for the task (classification: log_loss 0.01); {} explicitly turns it off.
    secondary: dict[str, float] | None = None

    @field_validator("secondary")
    @classmethod
    def _tolerances(cls, secondary: dict[str, float] | None) -> dict[str, float] | None:
        for name, tolerance in (secondary or {}).items():
            if not tolerance >= 0 or tolerance == float("inf"):
                raise ValueError(f"tolerance for {name!r} must be a finite number >= 0, got {tolerance}")
        return secondary


class Schedules(_Strict):
    retrain: str | None = "0 2 * * *"
    batch_predict: str | None = "0 6 * * *"

    @field_validator("retrain", "batch_predict")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5 and not value.startswith("@"):
            raise ValueError(f"{value!r} is not a 5-field cron expression or @preset")
        return value


class Prediction(_Strict):
    table: Annotated[str, Field(pattern=_NAME)] = "predictions"
    conn_id: str = "predictions_db"
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    chunk_size: int = Field(50_000, ge=100)
    # Where the `input_uri` of a batch-prediction run may point (whole path segments). Empty: the folder
    # of the first source's uri; a SQL source then allows none.
    input_prefixes: list[str] = Field(default_factory=list)


Severity = Literal["fail", "warn", "ignore"]


class Contract(_Strict):
    """The data contract: rules the champion's training reference sets for every later training window and
    scoring batch (lifecycle.ml.contract records it at training time and checks it, with Great Expectations).

    `fail` stops the run before any model work or any row is written, `warn` is reported (and counted in the
    drift report), `ignore` skips the rule. The share limits fail a `warn` rule when too many rows break it.
    """

    type_change: Severity = "fail"  # a column's kind changed (integer to float, number to text, ...)
    partition_nulls: Severity = "fail"  # one daily partition's null share over validation.max_null_fraction
    timestamps: Severity = "fail"  # rows outside their partition's (or batch's) day, or in the future
    empty_partitions: Severity = "fail"  # a daily partition that exists but holds no rows
    unseen_categories: Severity = "warn"  # a categorical value the reference never had
    out_of_range: Severity = "warn"  # a numeric value far outside the reference's range
    unknown_labels: Severity = "fail"  # a target value the reference never had (a batch's, or a window's)
    unseen_share_limit: float = Field(0.05, ge=0.0, le=1.0)  # a larger share of rows with unseen values fails
    out_of_range_share_limit: float = Field(0.01, ge=0.0, le=1.0)  # a larger share of far-out values fails
    # "Far outside": beyond the reference's [q01, q99] widened on each side by this many times its width.
    range_margin: float = Field(1.0, ge=0.0, allow_inf_nan=False)


class Validation(_Strict):
    min_rows: int = Field(100, ge=1)
    max_null_fraction: float = Field(0.3, ge=0.0, le=1.0)
    # Daily partitions of a date_partitioned source that may be absent from a training window before the
    # snapshot fails; the absent days are listed in the snapshot's metadata either way.
    max_missing_partitions: int = Field(0, ge=0)
    contract: Contract = Contract()
    # Extra Great Expectations expectations: {type: expect_..., kwargs: {...}}, checked against GX's registry.
    expectations: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("expectations")
    @classmethod
    def _known(cls, expectations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from lifecycle.config.gx_registry import problems

        found = [f"[{i}] {p}" for i, e in enumerate(expectations) for p in problems(e)]
        if found:
            raise ValueError("; ".join(found))
        return expectations


class RetrainPolicy(_Strict):
    """Drift in `min_drifted` of the last `window` batches requests a retrain, at most once per cool-down."""

    enabled: bool = True
    window: int = Field(3, ge=1, le=90)
    min_drifted: int = Field(2, ge=1)
    cooldown_days: int = Field(7, ge=0)

    @model_validator(mode="after")
    def _fits(self) -> RetrainPolicy:
        if self.min_drifted > self.window:
            raise ValueError(f"min_drifted ({self.min_drifted}) cannot exceed window ({self.window})")
        return self


class Drift(_Strict):
    psi_threshold: float = Field(0.2, gt=0)
    js_threshold: float = Field(0.1, gt=0, le=1)
    prediction_psi_threshold: float = Field(0.2, gt=0)
    dataset_share: float = Field(0.3, gt=0, le=1)  # share of drifted features that is dataset drift
    # When labels arrive: the largest fall of the primary metric below the holdout's (for RMSE and MAE, whose
    # scale is the target's, a relative rise: 0.05 is 5 %).
    max_performance_drop: float = Field(0.05, ge=0)
    # Columns that move by design (calendar, seasonal): reported, never counted toward dataset drift.
    expected_to_move: list[str] = Field(default_factory=list)
    # A feature drifts only when its statistic is also beyond this quantile of the statistic's sampling
    # distribution under the reference at the batch's size (so small batches and many levels do not cry wolf).
    noise_quantile: float = Field(0.99, gt=0.5, lt=1.0)
    metrics_table: Annotated[str, Field(pattern=_NAME)] = "drift_metrics"
    policy: RetrainPolicy = RetrainPolicy()


class Labels(_Strict):
    """Where the outcomes arrive, later than the predictions: a file source or a SQL query, as in `sources`.

    Each row is one entity's label for the prediction made at its timestamp (the batch day, or the time of an
    online request). A `date_partitioned` uri is partitioned by the day the labels arrived; a SQL query gets
    :start and :end (the label timestamps wanted, end exclusive).
    """

    uri: str | None = None
    format: Literal["parquet", "csv"] = "parquet"
    layout: Literal["file", "glob", "date_partitioned"] = "file"
    sql: str | None = None
    conn_id: str | None = None
    id_column: str | None = None  # default: the pipeline's id_column
    timestamp_column: str | None = None  # default: the pipeline's timestamp_column
    label_column: str | None = None  # default: the pipeline's target
    delay_days: int = Field(1, ge=0, le=3650)  # how long labels usually take to arrive

    @model_validator(mode="after")
    def _one_kind(self) -> Labels:
        _check_kind(self)
        return self

    @property
    def name(self) -> str:
        return "labels"

    @property
    def join(self) -> None:
        return None


class PerformancePolicy(_Strict):
    """Retrain when the primary metric falls more than `max_drop` below the holdout's, realised or estimated."""

    enabled: bool = True
    # The metric it watches (default: training.primary_metric). A ranking metric (ROC AUC) can hold while the
    # decisions at the threshold get worse: accuracy, F1 or log loss see that, estimated and realised.
    metric: str | None = None
    signals: list[Literal["realised", "estimated"]] = Field(default_factory=lambda: ["realised", "estimated"])
    max_drop: float | None = Field(None, ge=0)  # default: drift.max_performance_drop
    min_batches: int = Field(2, ge=1, le=90)  # consecutive batches past the drop before it fires


class Performance(_Strict):
    """The `<pipeline>__performance` DAG: realised metrics as labels arrive, label-free estimates before."""

    metrics_table: Annotated[str, Field(pattern=_NAME)] = "performance_metrics"
    schedule: str | None = "0 7 * * *"  # also runs on every labels and predictions Asset event
    lookback_days: int = Field(30, ge=1, le=3650)  # batches this old are revisited as their labels trickle in
    min_labelled: int = Field(50, ge=1)  # labelled rows a batch needs before its realised metric is recorded
    policy: PerformancePolicy = PerformancePolicy()

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return Schedules._cron(value)


# The roles the FAB auth manager creates itself: their permissions are global, not one pipeline's to grant.
BUILTIN_ROLES = frozenset({"Admin", "Op", "User", "Viewer", "Public"})


class Access(_Strict):
    """Airflow (FAB) roles that may act on this pipeline (lifecycle.ui.access turns them into permissions).

    Empty: nothing per pipeline, Airflow's global roles decide. docs/permissions.md has the details.
    """

    approvers: list[str] = Field(default_factory=list)  # answer the approval request of `gate.mode: approve`
    rollbackers: list[str] = Field(default_factory=list)  # roll the champion back on the Models page
    viewers: list[str] = Field(default_factory=list)  # read the pipeline's DAGs and its Models page

    @field_validator("approvers", "rollbackers", "viewers")
    @classmethod
    def _roles(cls, roles: list[str]) -> list[str]:
        for role in roles:
            if not role.strip() or role != role.strip():
                raise ValueError(f"a role name must be non-empty, without leading or trailing spaces: {role!r}")
            if len(role) > 64:
                raise ValueError(f"role name {role!r} is longer than 64 characters (Airflow's limit)")
            if role in BUILTIN_ROLES:
                raise ValueError(
                    f"{role!r} is one of Airflow's built-in roles, whose permissions are global; name a role of "
                    "the pipeline's own (Admin may always act)"
                )
        duplicated = sorted({role for role in roles if roles.count(role) > 1})
        if duplicated:
            raise ValueError(f"roles listed more than once: {duplicated}")
        return roles


_ALIAS = r"^[A-Za-z_][A-Za-z0-9_-]*$"
ROLLOUT_SHARES = {"canary": 0.1, "ab": 0.5}  # the share of entities a challenger gets when `share` is not given


CANARY_ALIAS = "challenger"  # the alias gate mode `canary` moves; serving routes a share of traffic to it


class Rollout(_Strict):
    """How online serving (lifecycle.serving) splits entities between the champion and a challenger.

    shadow: the challenger scores every row beside the champion, only the champion answers. canary and ab
    route `share` of the entities (a stable hash of `sticky_by`) to the challenger: the same mechanism, a
    small cautious share by default for canary, an even split for ab. docs/serving.md has the details.
    """

    mode: Literal["none", "shadow", "canary", "ab"] = "none"
    challenger: int | str | None = None  # a version number of the registered model, or an alias name
    share: float | None = Field(None, ge=0.0, le=1.0)  # canary: 0.1, ab: 0.5 when not given
    sticky_by: str | None = None  # the column whose value picks the arm; default the pipeline's id_column

    @field_validator("challenger", mode="before")
    @classmethod
    def _challenger(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"give a version number or an alias name, got {value!r}")
        text = str(value).strip()
        if text.isdigit():
            if int(text) < 1:
                raise ValueError(f"version numbers start at 1, got {value!r}")
            return int(text)
        if not re.match(_ALIAS, text):
            raise ValueError(f"{value!r} is neither a version number nor an alias name (letters, digits, _ and -)")
        if text == "champion":
            raise ValueError("the challenger cannot be the champion alias itself")
        return text

    @model_validator(mode="after")
    def _needs(self) -> Rollout:
        if self.mode != "none" and self.challenger is None:
            raise ValueError(f"mode {self.mode!r} needs 'challenger' (a version number or an alias name)")
        if self.mode == "shadow" and self.share is not None:
            raise ValueError("'share' applies to canary and ab; shadow scores every row with the challenger")
        if self.sticky_by is not None and not self.sticky_by.strip():
            raise ValueError("'sticky_by' must name a column")
        return self

    @property
    def challenger_share(self) -> float:
        """The share of entities routed to the challenger (0 for none and shadow)."""
        if self.mode not in ROLLOUT_SHARES:
            return 0.0
        return self.share if self.share is not None else ROLLOUT_SHARES[self.mode]


class RolloutDecision(_Strict):
    """How `<pipeline>__rollout` ends a canary or A/B test from the labelled online predictions.

    promote: the challenger's primary metric minus the champion's has its confidence interval's low end above
    `-tolerance` and at least `min_labelled` labelled rows per arm; abort: the interval's high end is below
    `-tolerance`; otherwise extend, until `max_days` after the test began, when an undecided test is aborted.
    """

    min_labelled: int = Field(200, ge=10)
    tolerance: float = Field(0.0, ge=0.0)
    max_days: int = Field(14, ge=1, le=365)
    confidence: float = Field(0.9, gt=0.5, lt=1.0)
    resamples: int = Field(500, ge=50, le=10000)
    schedule: str | None = "0 8 * * *"

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return Schedules._cron(value)


class Segments(_Strict):
    """One model per value of a column: each segment is trained, gated and promoted on its own rows.

    Each segment is its own registered model, `<model_name>__<segment>`: versions, the champion alias, the
    alias lock, the registry history and rollbacks are all per registered model in MLflow, so a segment's
    promotion can never race or overwrite another's, and a rollback of one segment leaves the rest alone.
    """

    column: str
    # The segments to train. Absent: every value of the column with at least `min_rows` rows in the window.
    values: list[str] | None = Field(None, min_length=1)
    min_rows: int = Field(200, ge=20)
    # Rows of a segment without a model of its own (too few rows to train, new, or missing): `pooled` trains
    # the pipeline's own model on every row as well (registered as <model_name>) and scores them with it;
    # `none` refuses a batch holding such rows, naming the segments, before anything is written.
    fallback: Literal["pooled", "none"] = "pooled"

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: list[str] | None) -> list[str] | None:
        if values is not None:
            values = [str(v) for v in values]
            slugs = Counter(segment_slug(v) for v in values)
            clash = sorted(v for v in values if slugs[segment_slug(v)] > 1)
            if clash:
                raise ValueError(f"segment values {clash} share a model name: make them differ in letters or digits")
        return values


_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def segment_slug(value: Any) -> str:
    """A segment value as it appears in its registered model's name (`<model_name>__<slug>`)."""
    slug = _SLUG.sub("-", str(value)).strip("-.")
    if not slug:
        raise ConfigError(f"segment value {value!r} has no letters or digits to name its model with")
    return slug[:80]


class Serving(_Strict):
    rollout: Rollout = Rollout()
    decision: RolloutDecision = RolloutDecision()


class PipelineConfig(_Strict):
    name: Annotated[str, Field(pattern=_NAME)]
    description: str = ""
    owner: str = "ml-platform"
    tags: list[str] = Field(default_factory=list)
    task: TaskType
    target: str
    id_column: str
    timestamp_column: str
    sources: list[Source] = Field(min_length=1)
    features: Features
    training: Training
    gate: Gate = Gate()
    validation: Validation = Validation()
    schedules: Schedules = Schedules()
    prediction: Prediction = Prediction()
    drift: Drift = Drift()
    access: Access = Access()
    serving: Serving = Serving()
    labels: Labels | None = None
    performance: Performance = Performance()
    # The registered model's name in MLflow (default: the pipeline's name).
    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")] | None = None
    # One model per value of a column (segment models), each its own registered model.
    segments: Segments | None = None
    _segment: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        metric = self.training.primary_metric
        self._check_metric(metric, "training.primary_metric")
        for floor, value in self.gate.floors.items():
            self._check_metric(floor, f"gate.floors.{floor}")
            low, high = METRIC_RANGES.get(floor, (0.0, math.inf))
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"gate.floors.{floor}: {value} is outside the metric's range [{low}, {high}]")
        window = self.training.window_days
        needed = self.training.validation_days + self.training.holdout_days + 1
        if window < needed:
            raise ValueError(
                f"training.window_days ({window}) leaves no training days: it must be at least validation_days "
                f"({self.training.validation_days}) + holdout_days ({self.training.holdout_days}) + 1"
            )
        for name in self.gate.secondary or {}:
            self._check_metric(name, f"gate.secondary.{name}")
        if self.performance.policy.metric is not None:
            self._check_metric(self.performance.policy.metric, "performance.policy.metric")
        if self.task == "regression" and self.training.calibration not in ("auto", "none"):
            raise ValueError("training.calibration: a regression's predictions are values, not probabilities")
        for source in self.sources[1:]:
            if source.join is None:
                raise ValueError(f"source {source.name!r} needs 'join' (keys to join it on)")
        if self.sources[0].join is not None:
            raise ValueError("the first source is the base table; 'join' belongs on the later ones")
        reserved = {self.target, self.id_column, self.timestamp_column}
        clash = reserved & (set(self.features.numeric) | set(self.features.categorical))
        if clash:
            raise ValueError(f"features must not include the target, id or timestamp column: {sorted(clash)}")
        rollout = self.serving.rollout
        if self.gate.mode == "canary" and (rollout.mode == "none" or rollout.challenger != CANARY_ALIAS):
            raise ValueError(
                f"gate.mode 'canary' moves the '{CANARY_ALIAS}' alias: set serving.rollout.mode (shadow, canary or "
                f"ab) and serving.rollout.challenger: {CANARY_ALIAS}"
            )
        if self.serving.rollout.sticky_by == self.target:
            raise ValueError("serving.rollout.sticky_by: the target is not known when a prediction is asked for")
        if self.segments is not None:
            self._check_segments(self.segments)
        return self

    def _check_segments(self, segments: Segments) -> None:
        if segments.column in (self.target, self.id_column, self.timestamp_column):
            raise ValueError(f"segments.column: {segments.column!r} is the target, id or timestamp column")
        if self.gate.mode in ("approve", "canary"):
            raise ValueError(
                f"segments: gate.mode {self.gate.mode!r} is not available for segment models (one approval or "
                "canary per segment); use enforce, dry_run or off"
            )
        if self.serving.rollout.mode != "none":
            raise ValueError("segments: serving.rollout is not available for segment models")
        if len(self.registered_model_name) > 110:
            raise ValueError("segments: model_name must be at most 110 characters (segment names are appended)")

    def for_segment(self, value: Any) -> PipelineConfig:
        """This pipeline restricted to one segment: its own artifacts, experiment and registered model."""
        if self.segments is None:
            raise ConfigError(f"pipeline {self.name!r} has no segments")
        slug = segment_slug(value)
        copy = self.model_copy(
            update={"name": f"{self.name}__{slug}", "model_name": f"{self.registered_model_name}__{slug}"}
        )
        copy._segment = str(value)
        return copy

    @property
    def segment(self) -> str | None:
        """The segment value this config is restricted to (for_segment), else None."""
        return self._segment

    def _check_metric(self, metric: str, where: str) -> None:
        if metric not in METRICS:
            raise ValueError(f"{where}: unknown metric {metric!r}; known: {sorted(METRICS)}")
        if self.task not in METRICS[metric][0]:
            raise ValueError(f"{where}: metric {metric!r} does not apply to task {self.task!r}")

    @property
    def registered_model_name(self) -> str:
        return self.model_name or self.name

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.training.primary_metric][1]

    @property
    def secondary_metrics(self) -> dict[str, float]:
        """The gate's secondary metrics and tolerances (the YAML's, else the task's default)."""
        secondary = self.gate.secondary
        return dict(DEFAULT_SECONDARY[self.task] if secondary is None else secondary)

    @property
    def label_columns(self) -> tuple[str, str, str]:
        """The labels source's id, timestamp and label columns, defaults filled in."""
        labels = self.labels or Labels(uri="-")
        return (
            labels.id_column or self.id_column,
            labels.timestamp_column or self.timestamp_column,
            labels.label_column or self.target,
        )

    @property
    def feature_columns(self) -> list[str]:
        return [*self.features.numeric, *self.features.categorical]


def _env_defaults() -> dict[str, str]:
    from lifecycle.config.settings import get_settings

    return {"DATA_ROOT": str(get_settings().data_root)}


_ENV_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """Expand ${VAR} and ${VAR:-default}, failing on an unset variable without a default."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None:
            value = _env_defaults().get(name)
        if value is None or (value == "" and default is not None):
            value = default
        if value is None:
            raise ConfigError(f"environment variable {name} is not set and has no default")
        return value

    return _ENV_VAR.sub(replace, text)


# libyaml's loader when PyYAML was built with it: about 10x faster than the pure-Python one on pipeline files.
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_data(text: str) -> Any:
    """The document's data, read by libyaml when available. A document libyaml refuses is read again by the
    pure-Python loader, so a bad file's message (problem, line, column) is the one it always was; both loaders
    share the constructor, so a document both accept gives the same data."""
    if _FAST_LOADER is not yaml.SafeLoader:
        try:
            return yaml.load(text, Loader=_FAST_LOADER)  # CSafeLoader: the safe loader, in C
        except yaml.YAMLError:
            pass
    return yaml.safe_load(text)


def _expanded(path: Path) -> str:
    """The file's text with ${VAR} expanded (what is parsed, and what the parse cache is keyed by)."""
    try:
        return expand_env(path.read_text())
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def _parse(path: Path, text: str) -> Any:
    try:
        return _yaml_data(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {err}") from err


def _validated(path: Path, raw: Any) -> PipelineConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {_fields(err)}") from None


def load_pipeline(path: str | Path) -> PipelineConfig:
    path = Path(path)
    return _validated(path, _parse(path, _expanded(path)))


def _fields(err: ValidationError) -> str:
    return "; ".join(f"field '{'.'.join(str(p) for p in e['loc']) or '<root>'}': {e['msg']}" for e in err.errors())


def with_training_overrides(config: PipelineConfig, **overrides: Any) -> PipelineConfig:
    """The config with a run's trigger Params applied to `training`, validated like the file was."""
    data = config.model_dump()
    data["training"].update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"trigger params for {config.name}: {_fields(err)}") from None


# The parse cache (issue 12). Airflow's DAG processor parses each DAG file in a process of its own, and every DAG
# file reads every pipeline YAML; with hundreds of pipelines, parsing the YAML was most of each file's parse time.
# So the parsed data of each file that validated is kept, keyed by the SHA-256 of its expanded text, in one JSON
# file per pipelines folder: after a change, the first DAG file parses the changed YAMLs and the others read one
# JSON file. Pydantic validation still runs on every load (about 0.2 ms a pipeline, measured), so whatever the
# cache holds, a config the current code refuses is never admitted, and a bad file (never cached) fails with the
# message it always had. JSON, not pickle: reading the cache runs no code.
_CACHE_FORMAT = 1


@functools.cache
def _code_version() -> str | None:
    """What the cached data depends on besides the text: this module (the loader) and PyYAML's version.
    None (no cache) when this module's source cannot be read."""
    try:
        digest = hashlib.sha256(Path(__file__).read_bytes())
    except OSError:
        return None
    digest.update(f"{_CACHE_FORMAT}/{yaml.__version__}".encode())
    return digest.hexdigest()


def parse_cache_file(directory: str | Path) -> Path | None:
    """Where the parse cache of a pipelines folder lives, or None when it is off.

    LIFECYCLE_PARSE_CACHE names the folder (empty: off); by default $AIRFLOW_HOME/cache/lifecycle, and off in
    a process without AIRFLOW_HOME (nothing written outside Airflow's home).
    """
    chosen = os.environ.get("LIFECYCLE_PARSE_CACHE")
    if chosen is None:
        home = os.environ.get("AIRFLOW_HOME")
        chosen = str(Path(home) / "cache" / "lifecycle") if home else ""
    if not chosen.strip() or _code_version() is None:
        return None
    folder_id = hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()[:16]
    return Path(chosen).expanduser() / f"pipelines-{folder_id}.json"


def _read_cache(file: Path | None) -> dict[str, Any]:
    """The cached data by text hash; {} when absent, unreadable, corrupt, from other code, or not ours alone."""
    if file is None:
        return {}
    try:
        with file.open("rb") as handle:
            stat = os.fstat(handle.fileno())
            if (hasattr(os, "getuid") and stat.st_uid != os.getuid()) or stat.st_mode & 0o022:
                return {}  # someone else could have written it
            data = json.loads(handle.read())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict) or data.get("code") != _code_version() or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _write_cache(file: Path, entries: dict[str, Any]) -> None:
    """Replace the cache file atomically (a parallel parse reads the old or the new one, never half of one).
    A folder that cannot be written only costs speed."""
    try:
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"code": _code_version(), "entries": entries}, handle, separators=(",", ":"))
        os.replace(tmp, file)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def _json_exact(raw: Any) -> bool:
    """True when the data comes back equal from JSON (no dates, no non-string keys, no NaN): only then cached."""
    try:
        return json.loads(json.dumps(raw)) == raw
    except (TypeError, ValueError, RecursionError):
        return False


def load_pipelines(directory: str | Path | None = None) -> tuple[list[PipelineConfig], list[str]]:
    """Every valid pipeline in the directory, and one message per bad file (naming it and the field).

    A bad file never hides the good ones: one team's typo must not stop every other pipeline.
    """
    directory = Path(directory or os.environ.get("PIPELINES_DIR", PIPELINES_DIR))
    cache_file = parse_cache_file(directory)
    cached = _read_cache(cache_file)
    kept: dict[str, Any] = {}
    added = False  # data parsed from a file and kept: the cache needs writing
    configs: list[tuple[Path, PipelineConfig]] = []
    errors: list[str] = []
    for path in sorted(directory.glob("*.y*ml")):
        try:
            text = _expanded(path)
            key = hashlib.sha256(text.encode()).hexdigest()
            config, raw = None, cached.get(key)
            if raw is not None:
                try:
                    config = _validated(path, raw)
                except ConfigError:  # the cache never decides a file is bad: the file itself does, below
                    raw = None
            if config is None:
                raw = _parse(path, text)
                config = _validated(path, raw)
                raw = raw if _json_exact(raw) else None
                added = added or raw is not None
        except ConfigError as err:
            errors.append(str(err))
            continue
        configs.append((path, config))
        if raw is not None:
            kept[key] = raw
    if cache_file is not None and (added or kept.keys() != cached.keys()):
        _write_cache(cache_file, kept)
    # Counted once (list.count per file was quadratic in the number of pipelines).
    names = Counter(c.name for _, c in configs)
    duplicated = {n for n, count in names.items() if count > 1}
    # Two pipelines on one registered model would fight over one champion alias.
    models = Counter(c.registered_model_name for _, c in configs)
    shared = {m for m, count in models.items() if count > 1}
    bad = set()
    for path, config in configs:
        if config.name in duplicated:
            errors.append(f"{path}: field 'name': pipeline name {config.name!r} is used by more than one file")
            bad.add(path)
        elif config.registered_model_name in shared:
            errors.append(
                f"{path}: field 'model_name': registered model {config.registered_model_name!r} is used by more "
                "than one pipeline (each pipeline needs its own champion alias)"
            )
            bad.add(path)
    return [c for path, c in configs if path not in bad], errors


def load_all(directory: str | Path | None = None) -> list[PipelineConfig]:
    """Every valid pipeline; bad files are left out here and reported by `dags/pipeline_errors.py`."""
    return load_pipelines(directory)[0]


def check_all(directory: str | Path | None = None) -> list[PipelineConfig]:
    """Every pipeline, or one error naming every bad file (for tools that must not skip any)."""
    configs, errors = load_pipelines(directory)
    if errors:
        raise ConfigError("invalid pipeline configuration:\n" + "\n".join(errors))
    return configs
