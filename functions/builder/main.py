"""Cloud Run entry point: the builder service that runs build tasks from Cloud Tasks.

Run as ``gunicorn --bind :$PORT --threads 4 --timeout 0 main:app``.
"""

from nixery import logs
from nixery.gcp.builder_app import builder_app

logs.setup()
app = builder_app()
