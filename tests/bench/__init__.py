"""Benchmarks (`make bench`): real processes, figures printed, never asserted in tests."""
