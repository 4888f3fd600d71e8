"""The MLflow registry: runs, champion aliases under compare-and-set, their history, trusted loading."""
