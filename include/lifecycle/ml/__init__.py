"""The ML phases as pure functions: ingestion, validation, features, training, gate, scoring, drift, metrics."""
