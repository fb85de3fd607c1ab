"""Adapters: HTTP (FastAPI), settings and the `artifacts` command over the storage core."""
