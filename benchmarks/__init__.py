"""Benchmarks of connector-resilience beside the peer libraries, in one run.

``python -m benchmarks`` (or ``nox -s bench``) measures every case and writes
``docs/benchmarks/results.md``, ``results.json`` and PNG plots. The machines we
run on are shared and noisy, so every figure is a ratio taken inside one run:
subjects are measured in interleaved rounds (A B C, B C A, ...), each round
pairs a subject with the plain call measured in the same round, and a figure is
the median over rounds with the min..max beside it. Nothing here is a test:
timings are never asserted (``tests/test_benchmarks_smoke.py`` only checks that
the harness still runs).
"""
