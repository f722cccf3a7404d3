"""Tests of the side-by-side benchmark suite (benchmarks/)."""
