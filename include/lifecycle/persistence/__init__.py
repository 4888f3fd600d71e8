"""Where state lives: the artifact store (fsspec) and the SQL tables of predictions and monitoring."""
