"""`hpcinfer ray up | status | down`: a Ray cluster over the allocation, verified before use.

A command package beside run, serve and bench. The pure parts (ports, layout, labels, the
`ray start` command line, the readiness verdict) are separate from what touches processes
(node start/stop) and from the launchers that run a node command on every host (up, down).
Later commands (serve --backend ray, run --launcher ray) find the cluster through
`cluster_file` and read it live through `gcs`.
"""
