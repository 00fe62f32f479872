"""The embed engine (engine.py) and its stages: claim.py, tokenize.py, forward.py, sink.py; the
thread plumbing between them (pipeline.py), what passes between them (messages.py), which task
waits for which chunk (ledger.py), and what they share (resources.py)."""

from workers.engine.engine import EmbedEngine

__all__ = ["EmbedEngine"]
