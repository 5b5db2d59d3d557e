"""The side-by-side proxy benchmark behind bench/bench.py (issue #13), one concern per module:
procs (processes, pinning, /proc readings), setups (what is started), load (the load
generators), cases (what is measured), stats and report (what is written)."""
