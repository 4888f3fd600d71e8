"""Development tools: the CLI, a local Airflow for tests and demos, pre-flight checks, demo data."""
