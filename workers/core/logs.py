"""Logging for the command-line entry points: ours at the chosen level, libraries quiet."""

import logging
import sys
import warnings

OUR_LOGGERS = ("producer", "workers", "migrations")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # The in-process Milvus Lite server logs unimplemented RPCs that pymilvus probes as errors.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    # pgserver asks platformdirs for a runtime dir that containers rarely have; it falls back fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
