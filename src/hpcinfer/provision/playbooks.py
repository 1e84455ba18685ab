"""Where the Ansible content shipped with hpcinfer lives, and what it holds.

It is package data (provision/ansible/), so a plain pip install has it; a wheel installs it
as real files, which ansible-playbook needs (it reads roles and templates from disk).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CONFIGURE = ("configure.yml", "configure_compute.yml", "configure_control.yml")
VERIFY = ("verify.yml", "verify_vllm.yml", "verify_ray.yml", "verify_server.yml")
ROLES = ("hosts", "python_env", "vllm", "ray", "vllm_server")


def ansible_dir() -> Path:
    """The folder of the playbooks, roles/ and ansible.cfg (ANSIBLE_CONFIG points at it)."""
    return Path(str(resources.files("hpcinfer.provision").joinpath("ansible")))


def playbook(name: str) -> Path:
    """A shipped playbook by file name (configure.yml, verify_ray.yml, ...)."""
    if name not in CONFIGURE + VERIFY:
        raise ValueError(f"no shipped playbook {name!r}; shipped: {', '.join(CONFIGURE + VERIFY)}")
    return ansible_dir() / name
