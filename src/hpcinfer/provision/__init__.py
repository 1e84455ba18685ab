"""Provisioning a cluster of one's own: a versioned cluster file (the one source of truth for
its nodes, users, versions and paths), what is rendered from it (the Ansible inventory and
group variables, a description), and the Ansible content shipped with hpcinfer (ansible/:
playbooks and roles that configure and verify the nodes; `playbooks` finds it; `answer` is
the reproducible vLLM answer verify asks each node for).

A command package: it stands on the cluster adapter (hardware profiles), outputs and errors.
"""
