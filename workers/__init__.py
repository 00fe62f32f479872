"""Embedding workers and the shared core: settings, stores, encoders, the Celery app.

Nothing here imports torch at import time: the producer uses this package too.
"""
