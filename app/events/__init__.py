"""The change feed over HTTP (GET /events): app/events/controller.py."""
