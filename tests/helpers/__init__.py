"""What the tests and the benchmarks share: real registries, emulators, clients, fakes."""
