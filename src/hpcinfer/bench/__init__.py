"""Benchmark building blocks: serving metrics, arrival schedules and the FOM (pure, no engine)."""
