"""Entry point for the web process (gunicorn wsgi:app, or `flask --app wsgi`)."""
from webapp import create_app

app = create_app()
