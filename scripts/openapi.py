#!/usr/bin/env python3
"""Write openapi/openapi.json from the app (or, with --check, fail when it differs).

Run through the project's environment: `.venv/bin/python scripts/openapi.py [--check]`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.asgi import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402

TARGET = ROOT / "openapi" / "openapi.json"


def generate() -> str:
    app = create_app(Settings(data_dir=Path("/nonexistent")))
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    text = generate()
    if "--check" in sys.argv[1:]:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run scripts/openapi.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
