"""What a cluster file may say where the value can reach a shell, an inventory or a path.

The inventory's values end up in ssh command lines, Ansible templates and systemd units, so
each is checked against a narrow pattern here, once, rather than trusted to be quoted at each
use (the roles quote them too). Each checker returns the value or raises ValueError saying what
is allowed, which pydantic turns into a message naming the field.
"""

from __future__ import annotations

import ipaddress
import re

_HOST_NAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}))*"
)
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_PATH = re.compile(r"/[A-Za-z0-9_.+/-]*")
_INTERFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_VERSION = re.compile(r"\d+(?:\.\d+){0,3}(?:(?:a|b|rc|\.post|\.dev)\d+)?")
_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62})")
_GIT_URL = re.compile(r"https://[A-Za-z0-9.-]+(?::\d{1,5})?/[A-Za-z0-9._~/-]+")
_GIT_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")


def _matching(pattern: re.Pattern[str], value: str, refusal: str) -> str:
    """`value` where `pattern` matches all of it; else a ValueError "'value' is not REFUSAL"."""
    if not pattern.fullmatch(value):
        raise ValueError(f"{value!r} is not {refusal}")
    return value


def host_name(value: str) -> str:
    """An inventory host name (also the node's host name): letters, digits, '-', '_', '.'."""
    if len(value) > 253 or not _HOST_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a host name: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit (e.g. compute0)"
        )
    return value


def address(value: str) -> str:
    """An IPv4/IPv6 address or a DNS name the control node resolves."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{value!r} is not an IP address or DNS name (e.g. 192.168.1.10 or compute0.lan)"
        )
    return value


def user(value: str) -> str:
    """A POSIX login name (lower case, digits, '_' and '-'; at most 32 characters)."""
    return _matching(
        _USER,
        value,
        "a login name: lower-case letters, digits, '_' and '-', "
        "starting with a letter or '_', at most 32 characters (e.g. compute)",
    )


def mac(value: str) -> str:
    """A MAC address, six ':'-separated hex pairs, written lower case."""
    lowered = value.lower().replace("-", ":")
    if not _MAC.fullmatch(lowered):
        raise ValueError(f"{value!r} is not a MAC address (six hex pairs, e.g. 8c:ae:4c:f4:4e:21)")
    return lowered


def absolute_path(value: str) -> str:
    """An absolute path of plain characters (letters, digits, '_', '.', '+', '-', '/')."""
    if not _PATH.fullmatch(value) or "/../" in f"{value}/" or "//" in value:
        raise ValueError(
            f"{value!r} is not a plain absolute path: start with '/', use letters, digits, "
            "'_', '.', '+', '-' and '/', no '..' (e.g. /opt/venvs/cluster)"
        )
    return value.rstrip("/") or "/"


def workdir(value: str) -> str:
    """An absolute path `sync` may mirror into with --delete: deep enough that it cannot be
    the root, a top-level folder or a home folder itself (everything else there would go)."""
    value = absolute_path(value)
    parts = [part for part in value.split("/") if part]
    if len(parts) < 2 or (parts[0] in ("home", "Users") and len(parts) == 2):
        raise ValueError(
            f"{value!r} is the root, a top-level folder or a home folder; sync mirrors the "
            "project into it, deleting what the project lacks, so give a folder of its own "
            "(e.g. /home/compute/hpcinfer), or leave it out for hpcinfer under the login's home"
        )
    return value


def interface(value: str) -> str:
    """A network interface name as Linux allows it (at most 15 characters)."""
    return _matching(
        _INTERFACE,
        value,
        "a network interface name: at most 15 letters, digits, '_', '.' or '-' (e.g. enp5s0)",
    )


def version(value: str) -> str:
    """A release version to pin (e.g. 2.60.0, 0.11.1rc1)."""
    return _matching(_VERSION, value, "a release version (e.g. 2.60.0)")


def slug(value: str) -> str:
    """A cluster name: lower-case letters, digits and '-' (it names files and addresses)."""
    return _matching(
        _SLUG, value, "a cluster name: lower-case letters, digits and '-' (e.g. a770-cluster)"
    )


def git_url(value: str) -> str:
    """An https URL of a git repository."""
    return _matching(
        _GIT_URL, value, "an https git URL (e.g. https://github.com/vllm-project/vllm.git)"
    )


def git_ref(value: str) -> str:
    """A branch, tag or commit id."""
    if not _GIT_REF.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a git branch, tag or commit (e.g. v0.11.1 or a commit id)"
        )
    return value


_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def model(value: str) -> str:
    """A Hugging Face model id (ORG/NAME) or a plain absolute path to a model folder."""
    if value.startswith("/"):
        try:
            return absolute_path(value)
        except ValueError:
            pass
    elif _MODEL_ID.fullmatch(value) and ".." not in value:
        return value
    raise ValueError(
        f"{value!r} is not a model: write a Hugging Face id ORG/NAME of letters, digits, '_', "
        "'.' and '-' (e.g. shuyuej/gemma-2b-it-GPTQ) or a plain absolute path to its folder"
    )


def prompt(value: str) -> str:
    """One line of printable text: passed as one quoted argument, so no control characters,
    and no template markers ({{, {%, {#), which Ansible would evaluate in a variable."""
    templated = any(mark in value for mark in ("{{", "{%", "{#"))
    if not value.strip() or len(value) > 1000 or not value.isprintable() or templated:
        raise ValueError(
            f"{value!r} is not a prompt: write one line of printable text, at most 1000 "
            "characters, no tabs, newlines or '{{', '{%', '{#' (e.g. The capital of France is)"
        )
    return value
