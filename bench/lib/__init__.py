"""The benchmarks' shared code: the command harness, the package sets and rival layering
algorithms the layering benchmark compares, and the probes run inside measured processes."""
