"""The embedding workers, on top of the shared core.

core/       what every process shares: settings, errors and the failure classifier, access
            levels, contracts, stores, schema, sending (see core/__init__.py)
embedding/  the encoders: Qwen3 packed, sentence-transformers, fake, simulated
engine/     the embed engine: claim, tokenize, forward and sink stages on threads
app.py, celery_app.py   the Celery worker (`celery -A workers.app worker`) and its task
reconciler.py, heartbeat.py, holdings.py, metrics.py, batching.py, check.py   the rest of the runtime

Nothing here imports torch at import time: the producer uses this package too.
"""
