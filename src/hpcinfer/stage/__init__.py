"""`hpcinfer stage`: copy a model once from the shared file system to every node's disk.

Modules, one concept each: `layout` (where a copy lives and what `hpcinfer run` must be
given to read it), `scan` (rank 0's listing of the source, symlinks included), `manifest`
(entries, the manifest that marks a copy verified, the journal of a stage in progress),
`verify` (reading a copy back), `plan` (what a copy can keep), `target` (the folder a rank
writes), `wire` and `broadcast` (chunks from rank 0 to the writers), `comm` (MPI or one
process; agreement on failure), `stage` (the whole sequence), `report` (the summary).

Only `layout` is imported here: job-script generators call `staged_location` without
pulling in the rest. mpi4py is imported only when a launcher started several ranks.
"""

from hpcinfer.stage.layout import staged_location

__all__ = ["staged_location"]
