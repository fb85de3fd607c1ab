"""Shared test helpers and fixtures (no test module imports another: they all import from here)."""
