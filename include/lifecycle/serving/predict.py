"""One prediction request: check its rows, give each its arm, score each arm's rows, answer and log.

Scores and labels are `scoring.predict`'s, on the DataFrame batch prediction would have read, so online and
batch predictions of the same row are the same numbers. The request reads the pipeline's `Served` once:
every row of it is scored by the champion and challenger that were served together at that moment.

The answer is rendered here, in the worker thread, by msgspec: for 100 rows FastAPI's JSONResponse (json.dumps
on the event loop) costs 10x as much, and the numbers parse back to the same floats.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.serving import schema
from lifecycle.serving.follower import Follower, LoadedModel
from lifecycle.serving.log_writer import PredictionLog
from lifecycle.serving.rollout import CHALLENGER, CHAMPION, SPLITTING, assign_arms, entity_key, sticky_column
from lifecycle.serving.schema import RequestError

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Answer:
    body: bytes  # the JSON answer
    request_id: str
    shadow: Callable[[], None] | None  # scores the shadow rows once the answer has been sent


class Predictor:
    def __init__(
        self,
        configs: list[PipelineConfig],
        follower: Follower,
        logs: dict[str, PredictionLog | str],  # by pipeline: its log, or why it has none
        max_rows: int,
    ) -> None:
        self.configs = {c.name: c for c in configs}
        self.follower, self.logs, self.max_rows = follower, logs, max_rows
        self.shadow_dropped = dict.fromkeys(self.configs, 0)  # by pipeline: the challenger failed or the log was full
        self._lock = threading.Lock()

    def predict(self, pipeline: str, body: bytes) -> Answer:
        config = self.configs.get(pipeline)
        if config is None:
            raise RequestError(404, f"no pipeline {pipeline!r} is served; served: {sorted(self.configs)}")
        served = self.follower.served(pipeline)  # read once: the models of this whole request
        champion, challenger = served.champion, served.challenger
        if champion is None:
            raise RequestError(503, f"pipeline {pipeline!r} has no champion loaded (yet): see GET /ready")
        prediction_log = self.logs.get(pipeline)
        if not isinstance(prediction_log, PredictionLog):
            raise RequestError(503, f"pipeline {pipeline!r} cannot log predictions: {prediction_log}")
        rows, single = schema.parse_rows(body, self.max_rows)
        rollout = config.serving.rollout
        keys = {config.id_column: "the id column"}
        splitting = rollout.mode in SPLITTING and challenger is not None
        if splitting:
            keys.setdefault(sticky_column(config), "serving.rollout.sticky_by")
        problems = schema.check_rows(rows, champion.columns, keys)
        schema.raise_for(problems)
        arms = [CHAMPION] * len(rows)
        routed: list[int] = []
        if splitting:
            arms = assign_arms(config.name, (row[sticky_column(config)] for row in rows), rollout)
            routed = [i for i, arm in enumerate(arms) if arm == CHALLENGER]
            if challenger.columns != champion.columns:  # the rows it scores must fit its own signature too
                schema.raise_for(schema.check_rows(rows, challenger.columns, {}, routed))

        request_id, now = uuid.uuid4().hex, dt.datetime.now(dt.UTC)
        entities = [entity_key(row[config.id_column]) for row in rows]
        scores: list[Any]
        labels: list[Any]
        versions = [champion.version] * len(rows)
        if not routed:  # every row is the champion's: one scoring, no per-row bookkeeping
            scores, labels = _score(config, champion, rows)
        else:
            scores, labels = [None] * len(rows), [None] * len(rows)
            for arm, model in ((CHAMPION, champion), (CHALLENGER, challenger)):
                indices = [i for i, chosen in enumerate(arms) if chosen == arm]
                if not indices or model is None:
                    continue
                score, label = _score(config, model, [rows[i] for i in indices] if len(indices) < len(rows) else rows)
                for position, i in enumerate(indices):
                    scores[i], labels[i], versions[i] = score[position], label[position], model.version
        bad = [i for i, score in enumerate(scores) if not math.isfinite(score)]
        if bad:  # JSON has no NaN: a 500, and nothing logged
            raise ValueError(f"{pipeline}: version {versions[bad[0]]} returned a non-finite score for row {bad[0]}")
        pipeline_name, model_name = config.name, config.registered_model_name
        answered = list(zip(scores, labels, versions, arms, strict=True))
        logged = [
            (pipeline_name, request_id, i, entity, arm, model_name, version, score, label, now, False)
            for i, (entity, (score, label, version, arm)) in enumerate(zip(entities, answered, strict=True))
        ]
        if not prediction_log.offer(logged):
            raise RequestError(
                503,
                f"the prediction log of {pipeline!r} is full ({prediction_log.queued} rows waiting for "
                f"{prediction_log.name}): predictions that cannot be logged are not returned",
            )
        answers = [
            {"score": score, "label": label, "model_version": version, "arm": arm, "request_id": request_id}
            for score, label, version, arm in answered
        ]  # fmt: skip
        shadow = None
        if rollout.mode == "shadow" and challenger is not None:
            shadow = functools.partial(
                self._shadow, config, challenger, rows, entities, request_id, now, prediction_log
            )
        return Answer(_encode(answers[0] if single else {"predictions": answers}), request_id, shadow)

    def _shadow(
        self,
        config: PipelineConfig,
        challenger: LoadedModel,
        rows: list[dict[str, Any]],
        entities: list[str],
        request_id: str,
        now: dt.datetime,
        prediction_log: PredictionLog,
    ) -> None:
        """The challenger's scores of the same rows, logged with the shadow flag and never returned."""
        try:
            schema.raise_for(schema.check_rows(rows, challenger.columns, {}))
            score, label = _score(config, challenger, rows)
        except Exception as err:  # the answer has gone out; a challenger's failure is only logged
            self._dropped(config.name, len(rows))
            log.warning("%s: shadow scoring with version %s failed: %s", config.name, challenger.version, err)
            return
        name = config.registered_model_name
        logged = [
            (config.name, request_id, i, entities[i], CHALLENGER, name, challenger.version, score[i], label[i], now, True)
            for i in range(len(rows))
        ]  # fmt: skip
        if not prediction_log.offer(logged):
            self._dropped(config.name, len(rows))
            log.warning("%s: prediction log full, %d shadow rows dropped", config.name, len(rows))

    def _dropped(self, pipeline: str, rows: int) -> None:
        with self._lock:
            self.shadow_dropped[pipeline] += rows


def _score(config: PipelineConfig, model: LoadedModel, rows: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    from lifecycle.ml.scoring import predict

    score, label = predict(config, model.model, schema.to_frame(rows, model.columns), config.prediction.threshold)
    return np.asarray(score, dtype=float).tolist(), [None if v is None else str(v) for v in label]
