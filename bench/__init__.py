"""Performance benchmarks: `python -m bench` measures and rewrites `docs/BENCHMARKS.md`.

One module per benchmark (`render`, `inference`, `cycle`, `scrape`, `websocket`, `training`,
`gpu`); each has `run(ctx) -> dict` returning figures (each with its goal, measured value,
whether it is met and the machine load at the time) plus the raw numbers its plots need.
`bench.report` turns the results into Markdown, JSON and PNG plots. Ratios between our path
and a reference path are measured in the same process, one right after the other; the tests
(`tests/unit/test_bench.py`) check structure and numerical agreement, never wall-clock times.

Nothing imports `bench`; `bench` may import every project package.
"""
