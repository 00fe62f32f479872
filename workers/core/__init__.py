"""The shared core: what every process of the fleet uses — the producer, `migrate`, the query
service and the workers — and nothing of the worker runtime.

settings.py (FLEET_*), errors.py and failures.py (the one failure classifier), access.py (the
four levels), contracts.py (what crosses the queue), constants.py, stores/ (Postgres, Milvus,
the catalog of index versions, progress, the outbox), schema/ (the Postgres schema), sending.py
and broker.py (a Celery app that only sends), entrypoint.py and logs.py (command lines).
"""
