"""The log configuration `artifacts serve` hands to uvicorn: uvicorn's own, plus a handler for
this service's loggers (`artifacts` and its children, so start-up warnings, errors, GC and import
lines are printed with their level like uvicorn's), and link signatures redacted on every handler
(a filter on a handler sees the records of every logger that reaches it; one on a logger would
miss its children's)."""

from __future__ import annotations

import copy
from typing import Any

import uvicorn.config


def log_config(level: str) -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"redact_signatures": {"()": "app.signing.RedactSignatures"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact_signatures"]
    config["loggers"]["artifacts"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config
