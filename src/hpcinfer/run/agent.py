"""A rank other than 0: start this rank's workers, pointed at the coordinator rank, and wait.

The agent does no scheduling and holds no results: its workers take units from rank 0 and
commit them to the shared output directory themselves. It ignores SIGINT/SIGTERM (rank 0
decides when the job drains); if it is killed, its workers die with it (PR_SET_PDEATHSIG)
and rank 0 hands their uncommitted units to the other ranks.
"""

from __future__ import annotations

import signal
import socket

from hpcinfer.cluster import resolve_profile
from hpcinfer.outputs.store import OutputStore
from hpcinfer.run.options import RunOptions, output_dir
from hpcinfer.run.policy import engine_vars_for, rank_placement
from hpcinfer.run.ranks import RankContext, make_rendezvous
from hpcinfer.run.spawn import spawn_remote_worker
from hpcinfer.spec import JobSpec


def serve_rank(spec: JobSpec, options: RunOptions, ctx: RankContext) -> int:
    """Run this rank's workers until the job is done; 0 unless they could not start."""
    out_dir = output_dir(spec, options.cwd)
    rendezvous = make_rendezvous(ctx, out_dir)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        address, key = rendezvous.share(None, None)
        profile = resolve_profile(spec.workers.profile)
        placement = rank_placement(spec, profile, ctx)
        slots = len(placement.placements)
        node_workers = slots * ctx.info.local_size
        engine_vars = engine_vars_for(spec, profile, node_workers)
        store = OutputStore(out_dir)
        procs = []
        for slot, entry in enumerate(placement.placements):
            hello = {
                "rank": ctx.info.rank,
                "slot": slot,
                "slots": slots,
                "host": socket.gethostname(),
                "node_workers": node_workers,
            }
            log = store.log_path(ctx.info.rank * slots + slot)
            procs.append(
                spawn_remote_worker(entry, engine_vars, log, address=address, key=key, hello=hello)
            )
        for proc in procs:
            proc.wait(None)
            proc.reap_group()  # whatever the worker left behind (an EngineCore)
        return 0
    finally:
        rendezvous.finish()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
