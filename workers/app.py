"""Entry point of `celery -A workers.app worker`: settings are read here, once."""

from workers.celery_app import create_app
from workers.settings import FleetSettings

app = create_app(FleetSettings())
