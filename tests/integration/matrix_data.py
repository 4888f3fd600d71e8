"""Data and pipeline files for the matrix: task × base-source layout × storage.

Per task a realistic frame: an entity id, a timestamp spread over each day, numeric and categorical
features (one with many levels), missing values and a non-linear signal a tree model learns better than
the linear baseline; multiclass has five classes, one of them rare (under 2 % of rows); regression has a
continuous target. A lookup table of stores is joined on `store`.

Writers put a frame in one of the layouts a pipeline YAML allows, locally or on s3:// (through
lifecycle.persistence.storage): one file, several monthly files matched by a glob, one partition per day, or a SQL table
read with `WHERE event_ts >= :start AND event_ts < :end`. `pipeline_dict` gives the YAML-equivalent config.

Tests load this file by path (tests/ is not a package).
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TASKS = ("binary", "multiclass", "regression")
LAYOUTS = ("file", "glob", "date_partitioned", "sql")

START = dt.date(2026, 3, 1)
DAYS = 40  # 2026-03-01 .. 2026-04-09
ID, TS = "entity_id", "event_ts"
TARGETS = {"binary": "converted", "multiclass": "tier", "regression": "spend_next_30d"}
CLASSES = ["basic", "standard", "premium", "business"]
RARE = "vip"  # the fifth class, under 2 % of rows
N_STORES = 150  # the many-levels feature
N_ENTITIES = 20_000
CHANNELS = ["web", "app", "store", "partner"]
DEVICES = ["ios", "android", "desktop"]
REGIONS = ["north", "south", "east", "west", "central"]
NUMERIC = ["amount", "visits", "tenure_months", "engagement", "store_size"]
CATEGORICAL = ["channel", "device", "store", "store_region"]
SQL = "SELECT * FROM {table} WHERE event_ts >= :start AND event_ts < :end"


def stores(seed: int = 11) -> pd.DataFrame:
    """The lookup source: one row per store (the join key), with a region and a size."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "store": [f"s{i:03d}" for i in range(N_STORES)],
            "store_region": rng.choice(REGIONS, N_STORES),
            "store_size": rng.gamma(3.0, 100.0, N_STORES).round(1),
        }
    )


def day_frame(task: str, day: dt.date, rows: int, seed: int = 3) -> pd.DataFrame:
    """One day's rows for a task: deterministic for (task, day, rows, seed), ids unique within the day."""
    rng = np.random.default_rng([seed, TASKS.index(task), day.toordinal()])
    lookup = stores().set_index("store")
    ids = rng.choice(N_ENTITIES, size=rows, replace=False) + 1
    seconds = np.sort(rng.integers(0, 86_400, rows))
    popularity = 1.0 / np.arange(1, N_STORES + 1) ** 0.7  # a long tail of rarely seen stores
    store = rng.choice(lookup.index.to_numpy(), rows, p=popularity / popularity.sum())
    region = lookup.loc[store, "store_region"].to_numpy()
    size = lookup.loc[store, "store_size"].to_numpy()
    store_effect = (np.array([int(s[1:]) for s in store]) % 7 == 0).astype(float)  # some stores just differ
    channel = rng.choice(CHANNELS, rows, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    device = rng.choice(DEVICES, rows, p=[0.35, 0.4, 0.25]).astype(object)
    amount = rng.lognormal(3.5, 0.8, rows)
    visits = rng.poisson(6, rows)
    tenure = rng.gamma(2.0, 12.0, rows).round(1)
    engagement = rng.normal(0.0, 1.0, rows)

    web = channel == "web"
    high_amount = amount > 60
    wave = np.sin(2.5 * engagement)
    frame = pd.DataFrame(
        {
            ID: ids.astype("int64"),
            TS: pd.Timestamp(day) + pd.to_timedelta(seconds, unit="s"),
            "amount": amount.round(2),
            "visits": visits.astype("int64"),
            "tenure_months": tenure,
            "engagement": engagement.round(4),
            "channel": channel,
            "device": device,
            "store": store.astype(object),
        }
    )
    if task == "binary":
        logit = (
            -1.6
            + 2.2 * high_amount * web
            + 1.6 * wave
            + 1.4 * store_effect
            - 1.5 * (visits < 3)
            + 0.9 * (region == "east")
            + 0.8 * ((tenure > 24) & (device == "ios"))
            + rng.normal(0, 0.3, rows)
        )
        frame[TARGETS[task]] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype("int64")
    elif task == "multiclass":
        logits = np.column_stack(
            [
                1.0 - 1.2 * high_amount + 0.8 * (visits < 4),
                0.6 + 1.8 * wave * (device != "desktop"),
                -0.2 + 1.6 * high_amount * web + 1.2 * store_effect,
                -0.8 + 0.06 * tenure * (region != "south") + 0.8 * (channel == "partner"),
            ]
        )
        logits = 1.6 * logits + rng.normal(0, 0.3, logits.shape)
        proba = np.exp(logits - logits.max(axis=1, keepdims=True))
        proba /= proba.sum(axis=1, keepdims=True)
        chosen = (rng.random(rows)[:, None] > proba.cumsum(axis=1)).sum(axis=1).clip(0, 3)
        tier = np.asarray(CLASSES, dtype=object)[chosen]
        rare = (amount > 110) & (engagement > 0.7) & (rng.random(rows) < 0.9)  # about 1.5 % of rows
        tier[rare] = RARE
        frame[TARGETS[task]] = tier
    elif task == "regression":
        value = (
            40.0
            + 35.0 * high_amount * web
            + 18.0 * wave
            + 0.9 * np.minimum(tenure, 30)
            + 25.0 * store_effect
            + 0.04 * size * (device == "desktop")
            - 15.0 * (visits < 3)
            + rng.normal(0, 6.0, rows)
        )
        frame[TARGETS[task]] = value.round(2)
    else:
        raise ValueError(f"unknown task {task!r}")
    for column, rate in (("amount", 0.05), ("tenure_months", 0.03)):
        frame.loc[rng.random(rows) < rate, column] = np.nan
    frame.loc[rng.random(rows) < 0.03, "channel"] = None
    return frame


def rows_on(day: dt.date, base: int) -> int:
    """A few hundred rows per day, not the same every day (so a count proves which day was read)."""
    return base + (day.toordinal() * 37) % (base // 3 + 1)


def frame(task: str, start: dt.date = START, days: int = DAYS, rows_per_day: int = 300) -> pd.DataFrame:
    return pd.concat(
        [day_frame(task, d, rows_on(d, rows_per_day)) for d in (start + dt.timedelta(days=i) for i in range(days))],
        ignore_index=True,
    )


def day_rows(data: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """The rows stamped with `day`."""
    stamps = pd.to_datetime(data[TS])
    return data[(stamps >= pd.Timestamp(day)) & (stamps < pd.Timestamp(day + dt.timedelta(days=1)))]


# -- writers -------------------------------------------------------------------------------------------------------


def _encode(data: pd.DataFrame, fmt: str) -> bytes:
    """Parquet, CSV or gzip-compressed CSV ("csv.gz")."""
    buffer = io.BytesIO()
    if fmt == "parquet":
        data.to_parquet(buffer, index=False)
    else:
        data.to_csv(buffer, index=False, compression="gzip" if fmt == "csv.gz" else None)
    return buffer.getvalue()


def _put(uri: str, data: pd.DataFrame, fmt: str) -> str:
    from lifecycle.persistence import storage

    return storage.write_bytes(uri, _encode(data, fmt))


def write_base(
    data: pd.DataFrame,
    layout: str,
    root: str,
    fmt: str = "parquet",
    sql_url: str | None = None,
    table: str = "events",
    conn_id: str = "warehouse",
) -> dict[str, Any]:
    """Write the base rows in `layout` under `root` (a local path or s3://bucket/prefix); return the Source dict.

    `fmt` is parquet, csv or csv.gz (the file's extension; the source's format is then csv).
    """
    root = root.rstrip("/")
    stamps = pd.to_datetime(data[TS])
    kind = fmt.split(".")[0]
    if layout == "file":
        uri = _put(f"{root}/events.{fmt}", data, fmt)
        return {"name": "events", "uri": uri, "format": kind, "layout": "file"}
    if layout == "glob":
        for month, part in data.groupby(stamps.dt.strftime("%Y-%m"), sort=True):
            _put(f"{root}/monthly/events-{month}.{fmt}", part, fmt)
        return {"name": "events", "uri": f"{root}/monthly/events-*.{fmt}", "format": kind, "layout": "glob"}
    if layout == "date_partitioned":
        for day, part in data.groupby(stamps.dt.date, sort=True):
            _put(f"{root}/daily/date={day.isoformat()}/part.{fmt}", part, fmt)
        uri = f"{root}/daily/date={{date}}/part.{fmt}"
        return {"name": "events", "uri": uri, "format": kind, "layout": "date_partitioned"}
    if layout == "sql":
        if sql_url is None:
            raise ValueError("a sql layout needs sql_url")
        write_table(sql_url, table, data)
        return {"name": "events", "sql": SQL.format(table=table), "conn_id": conn_id}
    raise ValueError(f"unknown layout {layout!r}")


def write_lookup(root: str | None = None, sql_url: str | None = None, conn_id: str = "warehouse") -> dict[str, Any]:
    """The stores lookup as a CSV file under `root`, or as a SQL table; return the Source dict."""
    join = {"keys": ["store"], "how": "left"}
    if sql_url is not None:
        write_table(sql_url, "stores", stores())
        return {"name": "stores", "sql": "SELECT store, store_region, store_size FROM stores", "conn_id": conn_id,
                "join": join}  # fmt: skip
    uri = _put(f"{root.rstrip('/')}/stores.csv", stores(), "csv")
    return {"name": "stores", "uri": uri, "format": "csv", "join": join}


def write_table(url: str, table: str, data: pd.DataFrame) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            data.to_sql(table, conn, if_exists="replace", index=False, chunksize=5000)
    finally:
        engine.dispose()


# -- pipeline configs ----------------------------------------------------------------------------------------------

METRIC = {"binary": "roc_auc", "multiclass": "roc_auc", "regression": "rmse"}
FLOORS = {"binary": {"roc_auc": 0.7}, "multiclass": {"roc_auc": 0.7}, "regression": {"r2": 0.5}}
GRID = {"num_leaves": [15], "learning_rate": [0.1], "n_estimators": [120], "min_child_samples": [20]}


def pipeline_dict(name: str, task: str, sources: list[dict[str, Any]], **sections: Any) -> dict[str, Any]:
    """The YAML-equivalent PipelineConfig of one matrix cell: a tiny grid so each retrain is quick."""
    data: dict[str, Any] = {
        "name": name,
        "description": f"matrix cell: {task} on a {sources[0].get('layout', 'file') if 'uri' in sources[0] else 'sql'} source",
        "owner": "matrix-tests",
        "tags": ["matrix", task],
        "task": task,
        "target": TARGETS[task],
        "id_column": ID,
        "timestamp_column": TS,
        "sources": sources,
        "features": {
            "numeric": NUMERIC,
            "categorical": CATEGORICAL,
            "derived": [{"name": "amount_per_visit", "expression": "amount / (visits + 1)"}],
        },
        "training": {
            "window_days": 30,
            "validation_days": 4,
            "holdout_days": 5,
            "cv_folds": 2,
            "search": "grid",
            "primary_metric": METRIC[task],
            "grid": GRID,
        },
        "gate": {
            "mode": "enforce",
            "floors": FLOORS[task],
            "min_improvement": 0.0,
            "bootstrap": {"resamples": 50, "confidence": 0.9},
        },
        "validation": {"min_rows": 200, "max_null_fraction": 0.2},
        "schedules": {"retrain": None, "batch_predict": None},
        "prediction": {"table": "predictions", "conn_id": "predictions_db", "threshold": 0.5, "chunk_size": 200},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def write_pipeline(directory: Path, config: dict[str, Any]) -> Path:
    """The config as a pipeline YAML file in `directory` (a PIPELINES_DIR)."""
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
