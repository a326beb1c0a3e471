"""WSGI entry point for running under any WSGI server: `gunicorn app.wsgi:application`.

The config comes from $IMAGING_FACADE_CONFIG or ./config.yaml, as for the CLI.
"""

from app.config import load_config
from app.logs import LogSettings, configure
from app.web import create_app

config = load_config()
if config.logging != LogSettings():  # else the WSGI server's own logging set-up stands
    configure(config.logging)
application = create_app(config)
