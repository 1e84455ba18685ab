"""Parallelism profiling: experiment grids, profiled runs that capture every rank, workload
cards and scaling reports. Trace analysis itself lives in `hpcinfer.traces`."""
