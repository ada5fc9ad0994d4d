"""K2's reproducible benchmarks; `make bench` runs them and rewrites BENCHMARKS.md."""
