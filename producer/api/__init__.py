"""`producer serve`: the query service for applications (FastAPI on uvicorn).

app.py (the factory), routes.py and models.py (the HTTP surface), service.py (the parts wired),
auth.py (API keys), live.py (following the live index), batching.py and embedder.py (micro-batched
forward passes, the query cache), stores.py (Postgres pool, Milvus), metrics.py, server.py.
"""

from producer.api.app import create_app

__all__ = ["create_app"]
