"""Kineto trace analysis: stream every rank's trace in bounded memory and say where the time
goes (compute, communication, memory copies, idle), per rank and per step, which collectives
ran, and which rank held the others back.

    analysis = analyze_traces("experiments/E1.2/", "experiments/E1.2/")  # TraceAnalysis

A library: it imports only the standard library, ijson, numpy, pydantic and hpcinfer's
errors, so it can be called on any trace folder.
"""

from hpcinfer.traces.analyze import analyze_traces
from hpcinfer.traces.models import FileQuality, RankAnalysis, TopOp, TraceAnalysis

__all__ = ["FileQuality", "RankAnalysis", "TopOp", "TraceAnalysis", "analyze_traces"]
