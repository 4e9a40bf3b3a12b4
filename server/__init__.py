"""The hardened MLflow tracking server: configuration, auth middleware, WSGI app, gunicorn set-up."""
