"""Benchmarks for tidings (docs/design.md §5): ``python -m bench SCENARIO [options]``.

Scenarios: ``fanout``, ``broadcast``, ``publish``, ``idle``, ``peers`` (see
``bench/README.md``).  Every run starts a fresh server pinned to one core and
drives it from another; results go to ``bench/results/<date>/``.
"""
