"""The code every logged model carries with it (MLflow `code_paths`), so it loads without this repository.

Models name these functions in their serialised form (`lifecycle_runtime.v1.prepare_raw`), so a module
here is a promise to every model version ever logged, rollback targets included: never rename or change
`v1`; a change of behaviour goes into a new `v2` beside it. Only numpy and pandas may be imported.
"""
