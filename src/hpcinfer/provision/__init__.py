"""Provisioning a cluster of one's own: a versioned cluster file (the one source of truth for
its nodes, users, versions and paths) and what is rendered from it (the Ansible inventory and
group variables, a description). The Ansible roles that use them come later.

A command package: it stands on the cluster adapter (hardware profiles), outputs and errors.
"""
