"""Microbenchmarks: `python -m bench` prints and saves the report; `pytest bench/` runs the
same cases under pytest-benchmark."""
