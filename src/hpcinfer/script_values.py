"""What may go into a job script: scheduler directive values, variable names, no secrets.

Two different readers see a job script. The shell reads the body, where every value is
quoted with ``shlex.quote`` and so can hold anything but NUL. The scheduler reads the
``#PBS``/``#SBATCH`` lines with its own parser, whose quoting rules differ between PBS and
Slurm (and are not documented for PBS), and a newline there would start a shell line. So
directive values are checked against a conservative alphabet instead of being quoted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from hpcinfer.errors import SpecError

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Scheduler names (accounts, queues, partitions, QOS); PBS queues may name a server: q@srv.
DIRECTIVE_WORD = re.compile(r"[A-Za-z0-9_.+@-]+")
# Slurm feature expressions: gpu&hbm80g, [rack1|rack2], a*2, !bigmem.
CONSTRAINT = re.compile(r"[A-Za-z0-9_.&|,:*\[\]()!+-]+")
JOB_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,62}")
FILESYSTEM = re.compile(r"[A-Za-z0-9_]+")
# A path both schedulers read the same way in a directive (no ':' PBS reads as host:path,
# no '%' Slurm expands, no spaces or quotes either parser treats specially).
DIRECTIVE_PATH = re.compile(r"/[\w./+-]*")
# A network interface name as Linux allows it (IFNAMSIZ: at most 15 characters).
INTERFACE = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
# NAME=value or --option=value in a setup line; a value starting with '$' is read at run time.
_ASSIGNMENT = re.compile(r"(?:^|[\s;&|('\"])-*([A-Za-z_][\w-]*)=(?![\"']?\$)")


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def check_word(value: str, what: str, pattern: re.Pattern[str] = DIRECTIVE_WORD) -> str:
    """A value for a directive line, or a SpecError naming the characters allowed."""
    if not pattern.fullmatch(value):
        raise SpecError(
            f"{what} {value!r} cannot go into a scheduler directive; use letters, digits and "
            f"the characters allowed by {pattern.pattern!r}"
        )
    return value


def check_directive_path(path: str, what: str) -> str:
    if not DIRECTIVE_PATH.fullmatch(path):
        raise SpecError(
            f"{what} {path!r} cannot go into #PBS/#SBATCH lines (PBS and Slurm parse spaces, "
            "quotes, ':' and '%' there in their own ways); choose an output.dir whose path "
            "has only letters, digits and . _ + - /"
        )
    return path


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in _SECRET_WORDS)


def _secret_error(name: str, where: str) -> SpecError:
    return SpecError(
        f"{where} sets {name}, which looks like a secret; hpcinfer never writes secrets into "
        f"job scripts (they are readable files kept with the results). Export {name} in your "
        "shell before `hpcinfer submit` instead: Slurm passes your environment on, and PBS "
        f"passes the names listed in job.pass_env (add {name} there)"
    )


def check_no_secrets(
    env: Mapping[str, str], setup: Iterable[str], where: str, lines_field: str = "setup"
) -> None:
    """Refuse variables named like secrets, and shell lines (``where.lines_field``: setup,
    steps) that assign one a literal.

    The messages name the variable, never its value, so the secret is not echoed either.
    """
    for name in env:
        if is_secret_name(name):
            raise _secret_error(name, f"{where}.env")
    for number, entry in enumerate(setup, 1):
        for line in entry.splitlines():
            for match in _ASSIGNMENT.finditer(line):
                if is_secret_name(match.group(1)):
                    raise _secret_error(match.group(1), f"{where}.{lines_field} entry {number}")
