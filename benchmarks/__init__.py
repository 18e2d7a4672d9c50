"""pytest-benchmark suites: per stage, end to end, against a transcode floor.

Not part of the default test run (``testpaths = ["tests"]``); run them with
``python -m pytest benchmarks --benchmark-json=results.json`` and summarise with
``python -m benchmarks.summary results.json -o summary.md``.
"""
