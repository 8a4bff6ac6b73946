"""Support code for ``benchmarks/run.py``: inits as PID 1 under identical workloads."""
