"""Each pipeline's champion (and the rollout's challenger), loaded and followed as the aliases move.

A background thread reads the aliases every `poll_seconds`. When one points at a version that is not loaded,
the thread loads it (with `model_trust.load`, off the request path) and then swaps the pipeline's `Served`
in one reference assignment: a request reads that reference once and scores with the models it holds, so
no request waits for or fails during a swap, and a request's champion and challenger are always a pair that
was served together. A version that fails to load leaves the old model serving; the error is logged and
shown by /ready and /pipelines, and the load is tried again after `retry_seconds`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.serving.schema import Column, columns_of

log = logging.getLogger(__name__)


def settle_heap() -> None:
    """Move what is loaded now (Airflow's and MLflow's modules, the models) out of the collector's reach.

    A full collection over the ~500k objects of the imports takes ~0.3 s and otherwise lands on a request
    every few hundred requests (benchmarks/serving.py); frozen objects are never scanned again.
    """
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class LoadedModel:
    version: str
    uri: str  # models:/<name>/<version>
    source: str  # the URI it was loaded from: the logged model (models:/m-...) behind the version
    model: Any  # the fitted scikit-learn pipeline
    columns: tuple[Column, ...]  # its signature's inputs
    loaded_at: dt.datetime

    def describe(self) -> dict[str, Any]:
        loaded_at = self.loaded_at.isoformat(timespec="seconds")
        return {"version": self.version, "uri": self.uri, "source": self.source, "loaded_at": loaded_at}


@dataclass(frozen=True)
class Served:
    """What answers a pipeline's requests: replaced whole, never changed in place."""

    champion: LoadedModel | None = None
    challenger: LoadedModel | None = None


@dataclass(frozen=True)
class Seen:
    """What the registry said at the last poll."""

    polled_at: dt.datetime | None = None
    champion: str | None = None  # the version behind the champion alias
    challenger: str | None = None  # the version the rollout's challenger names
    errors: tuple[str, ...] = ()


def load_version(model_name: str, version: str) -> LoadedModel:
    """A registered version, loaded only as it was logged (digests, trust list) with its signature.

    Loaded by its logged model's URI (the version's source, models:/m-...): MLflow's SQL registry store
    leaves a version's `model_id` empty, so by models:/<name>/<version> `model_trust` would find no recorded
    digests and load the files unchecked.
    """
    import mlflow

    from lifecycle.registry import model_trust
    from lifecycle.registry.tracking import mlflow_client

    uri = f"models:/{model_name}/{version}"
    source = mlflow_client().get_model_version(model_name, version).source or ""
    if not re.fullmatch(r"models:/m-[0-9a-f]+", source):
        source = uri  # registered from elsewhere (runs:/...): loaded by name and version
    columns = columns_of(mlflow.models.get_model_info(source).signature.inputs, uri)
    model = model_trust.load(source)
    return LoadedModel(version, uri, source, model, columns, dt.datetime.now(dt.UTC))


def resolve_versions(config: PipelineConfig) -> tuple[str | None, str | None]:
    """(champion version, challenger version) as the registry has them now; None where there is none."""
    from mlflow.exceptions import MlflowException

    from lifecycle.registry import tracking

    name = config.registered_model_name
    champion = tracking.champion(name)
    rollout = config.serving.rollout
    if rollout.mode == "none" or rollout.challenger is None:
        return (str(champion.version) if champion else None), None
    client = tracking.mlflow_client()
    try:
        if isinstance(rollout.challenger, int):
            challenger = client.get_model_version(name, str(rollout.challenger))
        else:
            challenger = client.get_model_version_by_alias(name, rollout.challenger)
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" not in str(err.error_code) and "not found" not in str(err).lower():
            raise
        challenger = None
    return (str(champion.version) if champion else None), (str(challenger.version) if challenger else None)


class Follower:
    def __init__(
        self,
        configs: list[PipelineConfig],
        poll_seconds: float,
        *,
        loader: Callable[[str, str], LoadedModel] = load_version,
        resolver: Callable[[PipelineConfig], tuple[str | None, str | None]] = resolve_versions,
        retry_seconds: float = 30.0,
    ) -> None:
        self.configs = {c.name: c for c in configs}
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self._loader, self._resolver = loader, resolver
        self._served: dict[str, Served] = {name: Served() for name in self.configs}
        self._seen: dict[str, Seen] = {name: Seen() for name in self.configs}
        # (pipeline, version) -> when its load last failed, and why: every poll until the retry says why
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def served(self, pipeline: str) -> Served:
        return self._served[pipeline]

    def seen(self, pipeline: str) -> Seen:
        return self._seen[pipeline]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="champion-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.poll_seconds)

    def poll_once(self) -> None:
        for name, config in self.configs.items():
            if self._stop.is_set():
                return
            try:
                self._poll(name, config)
            except Exception:  # never let one pipeline's surprise stop the thread that follows all of them
                log.exception("following the champion of %s failed", name)

    def _poll(self, name: str, config: PipelineConfig) -> None:
        try:
            champion_version, challenger_version = self._resolver(config)
        except Exception as err:
            log.warning("reading the registry for %s failed (still serving what was loaded): %s", name, err)
            previous = self._seen[name]
            self._seen[name] = dataclasses.replace(previous, errors=(f"reading the registry failed: {err}",))
            return
        current = self._served[name]
        errors: list[str] = []
        champion = current.champion  # an unset alias leaves the last champion serving
        if champion_version is not None:
            champion = self._model(name, config, current, champion_version, current.champion, errors)
        challenger = None
        if challenger_version is not None:
            chosen = champion if champion and champion.version == challenger_version else None
            challenger = chosen or self._model(name, config, current, challenger_version, current.challenger, errors)
        if champion_version is None and current.champion is not None:
            errors.append(f"the champion alias is not set: still serving version {current.champion.version}")
        if challenger_version is not None and challenger_version == champion_version:
            errors.append(f"the challenger is the champion (version {champion_version}): both arms score alike")
        if champion is not current.champion or challenger is not current.challenger:
            self._served[name] = Served(champion, challenger)  # the swap: one reference assignment
            log.info(
                "%s: serving champion %s, challenger %s (%s)", name, champion and champion.version,
                challenger and challenger.version, config.serving.rollout.mode,
            )  # fmt: skip
            settle_heap()
        self._seen[name] = Seen(dt.datetime.now(dt.UTC), champion_version, challenger_version, tuple(errors))

    def _model(
        self,
        name: str,
        config: PipelineConfig,
        current: Served,
        version: str,
        keep: LoadedModel | None,
        errors: list[str],
    ) -> LoadedModel | None:
        """The loaded model for `version`: one already held, a fresh load, or (when that fails) `keep`."""
        for held in (current.champion, current.challenger):
            if held is not None and held.version == version:
                return held
        failed_at, why = self._failed.get((name, version), (None, ""))
        if failed_at is not None and time.monotonic() - failed_at < self.retry_seconds:
            errors.append(f"{why}; retrying in under {self.retry_seconds:.0f}s")
            return keep
        started = time.monotonic()
        try:
            loaded = self._loader(config.registered_model_name, version)
        except Exception as err:
            why = f"loading version {version} failed: {type(err).__name__}: {err}"
            self._failed[(name, version)] = (time.monotonic(), why)
            errors.append(why)
            log.error("%s: loading version %s failed, still serving %s: %s", name, version, keep and keep.version, err)
            return keep
        self._failed.pop((name, version), None)
        log.info("%s: loaded version %s in %.1fs", name, version, time.monotonic() - started)
        return loaded

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready when every pipeline has been polled and each one with a champion has a model loaded."""
        reasons = {}
        for name in self.configs:
            seen, served = self._seen[name], self._served[name]
            if seen.polled_at is None:
                reasons[name] = "the registry has not been read yet" + (f": {seen.errors[0]}" if seen.errors else "")
            elif seen.champion is not None and served.champion is None:
                reasons[name] = f"champion version {seen.champion} is not loaded yet" + (
                    f": {seen.errors[0]}" if seen.errors else ""
                )
        return not reasons, reasons
