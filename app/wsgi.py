"""WSGI entry point for running under any WSGI server: `gunicorn app.wsgi:application`.

The config comes from $IMAGING_FACADE_CONFIG or ./config.yaml, as for the CLI.
"""

from app.config import load_config
from app.web import create_app

application = create_app(load_config())
