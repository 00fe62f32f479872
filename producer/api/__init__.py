"""`producer serve`: the query service for applications (FastAPI on uvicorn).

app.py (the factory), routes.py and models.py (the HTTP surface), errors.py (every error as JSON,
the body limit), openapi.py (the limits in the schema), service.py (the parts wired), auth.py (API
keys), budget.py (tokens per request and per key), live.py (following the live index), batching.py
and embedder.py (micro-batched forward passes in two lanes, the query cache), stores.py (Postgres
pool, Milvus), metrics.py, server.py and protocol.py (uvicorn, with bounded request headers).
"""

from producer.api.app import create_app

__all__ = ["create_app"]
