"""What each Airflow task calls: plain arguments in, small dicts (URIs, ids, metrics) out."""
