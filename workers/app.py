"""Entry point of `celery -A workers.app worker`: settings are read here, once.

A setting that cannot work (a bad value, a model that is not there) stops the worker before it
takes any task, with one line that says what to fix.
"""

import sys

from pydantic import ValidationError

from workers.celery_app import create_app
from workers.core.entrypoint import describe_invalid_settings
from workers.core.errors import ConfigError
from workers.core.settings import FleetSettings
from workers.embedding import resolve_model

try:
    settings = FleetSettings()
    resolve_model(settings.model)
    app = create_app(settings)
except ValidationError as err:
    sys.exit(f"worker: error: invalid setting ({describe_invalid_settings(err)})")
except ConfigError as err:
    sys.exit(f"worker: error: {err}")
