"""The benchmark suite behind `scripts/bench` (see bench/cli.py and the README).

Every figure is reported beside a reference measured in the same run on the same machine, as a
ratio: these machines are noisy (../shared/design/MEASURED.md). This package imports nothing of
the project at import time, so its reference apps also run in the bench-only environment.
"""
