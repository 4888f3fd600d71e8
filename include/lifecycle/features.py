"""Kept for models logged before 2026-12-03: their pickles name `lifecycle.features.prepare_raw` and
`lifecycle.features._prepared_names`, which live in lifecycle.ml.features now. Nothing new imports this."""

from lifecycle.ml.features import _prepared_names, prepare_raw  # noqa: F401
