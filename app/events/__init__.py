"""The change feed over HTTP (GET /store/events): app/events/controller.py."""
