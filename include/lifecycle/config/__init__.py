"""Configuration: the typed pipeline model (one per YAML), the environment's settings, GX's registry."""
