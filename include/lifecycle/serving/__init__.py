"""Online prediction: every pipeline's champion behind one HTTP service (`python -m lifecycle serve`).

One job per module: `settings` (the environment), `schema` (a request's rows against the model's signature),
`rollout` (which arm an entity gets), `follower` (loads and follows each pipeline's champion and challenger),
`predict` (one request: arms, scores, answers and log rows), `log_writer` (the batched `online_predictions`
log) and `app` (the FastAPI routes and their lifecycle). docs/serving.md describes the endpoints.
"""
