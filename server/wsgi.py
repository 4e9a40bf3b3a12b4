"""The WSGI entry point gunicorn loads: ``server.wsgi:application``."""

from server.app import create_app
from server.config import current_settings

application = create_app(current_settings())
