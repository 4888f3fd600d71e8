"""The serving settings from the environment, with typed defaults; read on call, never at import."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ServingSettings:
    poll_seconds: float = 5.0  # how often the champion (and challenger) aliases are read
    api_key: str | None = None  # when set, every route but /health needs `Authorization: Bearer <key>`
    max_rows: int = 10_000  # rows per request
    log_queue_rows: int = 100_000  # prediction-log rows held in memory while the database is slow or down
    log_batch_rows: int = 2_000  # rows per insert
    log_flush_seconds: float = 0.5  # the longest a row waits in the queue while the database is up
    shutdown_flush_seconds: float = 30.0  # how long a clean shutdown keeps trying to write what is queued


def serving_settings(env: dict[str, str] | None = None) -> ServingSettings:
    env = os.environ if env is None else env
    defaults = ServingSettings()

    def number(name: str, default: float, kind: type = float) -> float:
        raw = env.get(f"LIFECYCLE_SERVING_{name}", "").strip()
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"LIFECYCLE_SERVING_{name}={raw!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise ValueError(f"LIFECYCLE_SERVING_{name} must be positive, got {raw!r}")
        return value

    return ServingSettings(
        poll_seconds=number("POLL_SECONDS", defaults.poll_seconds),
        api_key=env.get("LIFECYCLE_SERVING_API_KEY") or None,
        max_rows=int(number("MAX_ROWS", defaults.max_rows, int)),
        log_queue_rows=int(number("LOG_QUEUE_ROWS", defaults.log_queue_rows, int)),
        log_batch_rows=int(number("LOG_BATCH_ROWS", defaults.log_batch_rows, int)),
        log_flush_seconds=number("LOG_FLUSH_SECONDS", defaults.log_flush_seconds),
        shutdown_flush_seconds=number("SHUTDOWN_FLUSH_SECONDS", defaults.shutdown_flush_seconds),
    )
