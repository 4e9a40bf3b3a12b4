"""What we take from MLflow and change or reuse: the list of internals, MLflow's environment, migrations and our own tables, the FastAPI-only routes, streaming artifacts, faster paths."""
