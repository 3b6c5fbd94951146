"""One router per resource, assembled in app.py."""
