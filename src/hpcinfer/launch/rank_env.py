"""hpcinfer's own rank variables: what its ssh launcher sets, what a rank reads back.

Under mpiexec and srun a rank learns its place from the launcher's variables (see
`hpcinfer.cluster.allocation.read_rank`); hpcinfer's ssh fan-out has no launcher, so it sets
these itself, plus a launch id that tells ranks of one launch from those of the next.
"""

from __future__ import annotations

RANK_ENV = ("HPCINFER_RANK", "HPCINFER_LOCAL_RANK", "HPCINFER_WORLD_SIZE", "HPCINFER_LOCAL_SIZE")
LAUNCH_ID_ENV = "HPCINFER_LAUNCH_ID"
