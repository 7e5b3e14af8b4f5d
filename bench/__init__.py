"""Benchmarks: each module here is a command, run from the repository root as
`python -m bench.NAME` (`--smoke` checks it in seconds); their shared code is in bench.lib.
The figures and how to read them: docs/benchmarks.md."""
