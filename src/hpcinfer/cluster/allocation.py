"""What the scheduler gave this job, and which rank this process is (PBS, Slurm, MPI).

Everything here reads the environment (and at most one file, or one scheduler query for
the remaining walltime), so a batch script, a launcher and a rank all agree on the same
facts without calling ``scontrol``. Three things:

- the allocation: hosts and slots per host, from an explicit hostfile, ``$PBS_NODEFILE``
  (one line per slot), Slurm's hostlist syntax (``nid[001-004,010]``), or this host;
- the rank contract: global rank, local rank and sizes from whichever launcher started us
  (Open MPI, MPICH/Hydra, PMIx/PALS, srun), looked up in one table;
- the walltime left, so a run can drain before the scheduler kills it.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcinfer.cluster.probe import (
    Runner,
    run_probe,
)
from hpcinfer.core.durations import scheduler_duration
from hpcinfer.errors import HardwareError

# A typo such as nid[0-99999999] must fail, not exhaust memory; the largest machines
# have about 10^4 nodes.
_MAX_HOSTS = 1_000_000
_DIGITS = re.compile(r"[0-9]+")
_GROUP = re.compile(r"\[([^\[\]]*)\]")
_LAST_NUMBER = re.compile(r"(.*?)([0-9]+)([^0-9]*)")  # prefix, last run of digits, suffix


# --- Slurm hostlist syntax ------------------------------------------------------------


def _hostlist_error(expr: str, bad: str, why: str) -> HardwareError:
    return HardwareError(
        f"cannot expand hostlist {expr!r}: {why} in {bad!r}; write hosts as "
        "'name[001-004,010]' (ranges low-high, digits only, brackets balanced)"
    )


def _split_items(expr: str) -> list[str]:
    """Top-level items: commas and whitespace outside brackets separate hosts."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in expr:
        if char == "[":
            depth += 1
            if depth > 1:
                raise _hostlist_error(expr, expr, "nested '['")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise _hostlist_error(expr, "".join([*current, char]), "']' without '['")
        if depth == 0 and (char == "," or char.isspace()):
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise _hostlist_error(expr, "".join(current), "'[' without ']'")
    items.append("".join(current))
    return [item for item in items if item]


def _expand_group(expr: str, body: str) -> list[str]:
    """'001-004,010' -> 001..004, 010; the width of a range's first bound is kept."""
    values: list[str] = []
    for raw in body.split(","):
        part = raw.strip()
        low, dash, high = (s.strip() for s in part.partition("-"))
        if not _DIGITS.fullmatch(low) or (dash and not _DIGITS.fullmatch(high)):
            raise _hostlist_error(expr, f"[{body}]", f"non-digit range {part!r}")
        if not dash:
            values.append(low)
            continue
        first, last = int(low), int(high)
        if last < first:
            raise _hostlist_error(expr, f"[{body}]", f"descending range {part!r}")
        if last - first >= _MAX_HOSTS:
            raise _hostlist_error(expr, f"[{body}]", f"more than {_MAX_HOSTS} hosts")
        values.extend(f"{i:0{len(low)}d}" for i in range(first, last + 1))
    return values


def _expand_item(expr: str, item: str) -> list[str]:
    """One name with any number of bracket groups: their cartesian product, in order."""
    pieces = _GROUP.split(item)  # literal, group, literal, group, ..., literal
    choices = [
        [piece] if i % 2 == 0 else _expand_group(expr, piece) for i, piece in enumerate(pieces)
    ]
    total = 1
    for options in choices:
        total *= len(options)
    if total > _MAX_HOSTS:
        raise _hostlist_error(expr, item, f"more than {_MAX_HOSTS} hosts")
    return ["".join(combo) for combo in itertools.product(*choices)]


def expand_hostlist(expr: str) -> list[str]:
    """Expand Slurm hostlist syntax in pure Python (no ``scontrol``, which ranks may lack).

    ``"nid[001-004,010]"`` -> nid001..nid004, nid010; ``"rack[1-2]-node[01-02]"`` -> the
    product in order; top-level commas or whitespace separate items. Duplicates are kept.
    """
    hosts: list[str] = []
    for item in _split_items(expr):
        hosts.extend(_expand_item(expr, item))
    return hosts


def _check_host(host: str) -> None:
    """A name hostlist syntax can carry: brackets, commas and whitespace are its syntax."""
    bad = next((c for c in host if c in "[]," or c.isspace()), None)
    if not host or bad is not None:
        why = "an empty name" if not host else f"{bad!r} in the name"
        raise HardwareError(
            f"cannot write host {host!r} in hostlist syntax: {why}; host names must be "
            "non-empty, without brackets, commas or whitespace"
        )


def _host_groups(hosts: list[str]) -> Iterator[tuple[str, list[str], str]]:
    """Runs of consecutive hosts that differ only in their last number, as (prefix, numbers,
    suffix); a host without digits is a group of its own with no numbers."""
    current: tuple[str, list[str], str] | None = None
    for host in hosts:
        _check_host(host)
        match = _LAST_NUMBER.fullmatch(host)
        if match is None:
            if current:
                yield current
            current = None
            yield host, [], ""
            continue
        prefix, number, suffix = match.groups()
        if current and current[0::2] == (prefix, suffix) and len(current[1]) < _MAX_HOSTS:
            current[1].append(number)
            continue
        if current:
            yield current
        current = (prefix, [number], suffix)
    if current:
        yield current


def _compress_numbers(numbers: list[str]) -> str:
    """'001','002','003','010' -> '001-003,010'. A range continues while the next number is
    the next integer written as `_expand_group` writes it (the range's first width), so mixed
    widths and duplicates stay as separate parts and expand back exactly."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(numbers) + 1):
        width = len(numbers[start])
        if i < len(numbers) and numbers[i] == f"{int(numbers[i - 1]) + 1:0{width}d}":
            continue
        low, high = numbers[start], numbers[i - 1]
        parts.append(low if start == i - 1 else f"{low}-{high}")
        start = i
    return ",".join(parts)


def compress_hostlist(hosts: list[str]) -> str:
    """The inverse of `expand_hostlist`: ``nid001..nid004, nid010`` -> ``"nid[001-004,010]"``.

    Order is kept exactly (duplicates too): consecutive hosts that differ only in their last
    number share one bracket group, ascending runs of that number become ranges, anything
    else is listed. ``expand_hostlist(compress_hostlist(hosts)) == hosts`` always holds;
    a name the syntax cannot carry (empty, brackets, commas, whitespace) raises.
    """
    items: list[str] = []
    for prefix, numbers, suffix in _host_groups(hosts):
        if len(numbers) < 2:
            items.append(prefix + "".join(numbers) + suffix)
        else:
            items.append(f"{prefix}[{_compress_numbers(numbers)}]{suffix}")
    return ",".join(items)


def short_hostname(name: str) -> str:
    """Text before the first dot: PBS writes FQDNs, ``socket.gethostname()`` may not."""
    return name.split(".", 1)[0]


# --- The allocation -------------------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    """The hosts of this job, in allocation order, and the slots (ranks) granted on each."""

    hosts: tuple[str, ...]
    slots: dict[str, int]
    source: str  # "pbs", "slurm", "hostfile", "local"
    job_id: str | None

    @property
    def total_slots(self) -> int:
        return sum(self.slots.values())


def _allocation(pairs: Iterable[tuple[str, int]], source: str, job_id: str | None) -> Allocation:
    """Repeated hosts add up (PBS writes one line per slot); first appearance sets order."""
    slots: dict[str, int] = {}
    for host, count in pairs:
        slots[host] = slots.get(host, 0) + count
    return Allocation(hosts=tuple(slots), slots=slots, source=source, job_id=job_id)


def _env(env: Mapping[str, str], *names: str) -> str | None:
    """The first of ``names`` set to a non-blank value (``export X=`` counts as unset)."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HardwareError(
            f"cannot read {what} {str(path)!r}: {exc}; run inside the job that owns it, "
            "or point to a readable file"
        ) from exc


def _parse_slot_count(text: str, where: str) -> int:
    if not _DIGITS.fullmatch(text) or int(text) < 1:
        raise HardwareError(f"{where}: slot count {text!r} is not a positive integer")
    return int(text)


def _hostfile_line(line: str, where: str) -> tuple[str, int]:
    """'host', 'host slots=N' (Open MPI; other key=value pairs ignored) or 'host:N' (MPICH)."""
    host, *options = line.split()
    slots = 1
    if ":" in host:
        host, count = host.rsplit(":", 1)
        slots = _parse_slot_count(count, where)
    for option in options:
        key, eq, value = option.partition("=")
        if not eq:
            raise HardwareError(
                f"{where}: cannot read {option!r}; write 'host', 'host slots=N' or 'host:N'"
            )
        if key == "slots":
            slots = _parse_slot_count(value, where)
    if not host:
        raise HardwareError(f"{where}: no host name before ':'")
    return host, slots


def read_hostfile(path: Path) -> list[tuple[str, int]]:
    """(host, slots) per line of an Open MPI or MPICH hostfile; '#' starts a comment."""
    pairs: list[tuple[str, int]] = []
    for number, raw in enumerate(_read_text(path, "hostfile").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            pairs.append(_hostfile_line(line, f"{path}:{number}"))
    if not pairs:
        raise HardwareError(f"hostfile {str(path)!r} lists no hosts; write one host per line")
    return pairs


def _from_pbs(env: Mapping[str, str]) -> Allocation | None:
    nodefile = _env(env, "PBS_NODEFILE")
    if nodefile is None:
        return None
    text = _read_text(Path(nodefile), "$PBS_NODEFILE")
    hosts = [line.strip() for line in text.splitlines() if line.strip()]
    if not hosts:
        raise HardwareError(f"$PBS_NODEFILE {nodefile!r} is empty; is this the job's node file?")
    return _allocation(((host, 1) for host in hosts), "pbs", _env(env, "PBS_JOBID"))


def parse_tasks_per_node(value: str, name: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """Slurm's compressed counts, one per node: '2(x3),1' -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for raw in value.split(","):
        match = re.fullmatch(r"\s*([0-9]+)\s*(?:\(x([0-9]+)\))?\s*", raw)
        if match is None:
            raise HardwareError(
                f"${name}={value!r}: cannot read {raw!r}; expected counts like '2(x3),1'"
            )
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def _from_slurm(env: Mapping[str, str]) -> Allocation | None:
    nodelist = _env(env, "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    if nodelist is None:
        return None
    hosts = expand_hostlist(nodelist)
    if not hosts:
        raise HardwareError(f"the Slurm node list {nodelist!r} names no hosts")
    tasks = _env(env, "SLURM_TASKS_PER_NODE")
    counts = parse_tasks_per_node(tasks) if tasks else [1] * len(hosts)
    if len(counts) != len(hosts):
        raise HardwareError(
            f"$SLURM_TASKS_PER_NODE={tasks!r} gives {len(counts)} node(s) but the node list "
            f"{nodelist!r} has {len(hosts)}; unset one of them or fix the job script"
        )
    return _allocation(zip(hosts, counts, strict=True), "slurm", _env(env, "SLURM_JOB_ID"))


# Tried in order after an explicit hostfile; the first that finds an allocation wins.
_SOURCES: tuple[Callable[[Mapping[str, str]], Allocation | None], ...] = (
    _from_pbs,
    _from_slurm,
)


def read_allocation(
    env: Mapping[str, str] | None = None, hostfile: Path | None = None
) -> Allocation:
    """This job's hosts: explicit hostfile > $PBS_NODEFILE > Slurm node list > this host."""
    env = os.environ if env is None else env
    if hostfile is not None:
        job_id = _env(env, "PBS_JOBID", "SLURM_JOB_ID")
        return _allocation(read_hostfile(hostfile), "hostfile", job_id)
    for source in _SOURCES:
        found = source(env)
        if found is not None:
            return found
    return _allocation([(socket.gethostname(), 1)], "local", None)


# --- The rank contract ----------------------------------------------------------------


@dataclass(frozen=True)
class RankInfo:
    """Who this process is: inputs are chosen by global rank, devices by local rank."""

    rank: int
    local_rank: int
    world_size: int
    local_size: int
    launcher: str


def _env_int(env: Mapping[str, str], name: str) -> int:
    value = env[name].strip()
    try:
        return int(value)
    except ValueError:
        raise HardwareError(
            f"${name}={value!r} is not an integer; the launcher or a wrapper script set it "
            "wrongly, unset it or launch with mpiexec/mpirun/srun"
        ) from None


def _first_set(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((name for name in names if env.get(name, "").strip()), None)


def _slurm_local_size(env: Mapping[str, str]) -> int | None:
    """The step's tasks on this node ($SLURM_NODEID's entry), else the job's per-node count.

    The step's list comes first: a job submitted with --ntasks-per-node=4 may run a step
    with fewer tasks, and then $SLURM_NTASKS_PER_NODE is stale.
    """
    node = _first_set(env, ("SLURM_NODEID",))
    node_id = _env_int(env, node) if node else 0
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        value = _env(env, name)
        if value is None:
            continue
        counts = parse_tasks_per_node(value, name)
        if len(counts) == 1:
            return counts[0]
        if node_id < len(counts):
            return counts[node_id]
    return None


@dataclass(frozen=True)
class _RankVars:
    """Where one launcher puts the rank contract; a tuple means 'first one set'."""

    launcher: str
    rank: str
    local_rank: tuple[str, ...]
    world_size: tuple[str, ...]
    local_size: tuple[str, ...]
    derive_local_size: Callable[[Mapping[str, str]], int | None] | None = None


# Order as measured on this project's machines: the first launcher whose rank variable is
# set wins. One exception: a row whose local rank is missing yields to a later row that
# has one (srun --mpi=pmi2 sets PMI_RANK without MPI_LOCALRANKID, PALS under Cray PMI sets
# PMI_RANK beside PALS_LOCAL_RANKID); all rows agree on the global rank anyway.
_RANK_TABLE: tuple[_RankVars, ...] = (
    _RankVars(
        "openmpi",
        "OMPI_COMM_WORLD_RANK",
        ("OMPI_COMM_WORLD_LOCAL_RANK",),
        ("OMPI_COMM_WORLD_SIZE",),
        ("OMPI_COMM_WORLD_LOCAL_SIZE",),
    ),
    _RankVars("mpich", "PMI_RANK", ("MPI_LOCALRANKID",), ("PMI_SIZE",), ("MPI_LOCALNRANKS",)),
    _RankVars(
        "pmix", "PMIX_RANK", ("PALS_LOCAL_RANKID",), ("PALS_SIZE", "PMI_SIZE"), ("PALS_LOCAL_SIZE",)
    ),
    _RankVars(
        "slurm",
        "SLURM_PROCID",
        ("SLURM_LOCALID",),
        ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"),
        (),
        _slurm_local_size,
    ),
    _RankVars(
        "pals",
        "PALS_RANKID",
        ("PALS_LOCAL_RANKID",),
        ("PALS_SIZE", "PMI_SIZE"),
        ("PALS_LOCAL_SIZE",),
    ),
)


def _missing(row: _RankVars, names: tuple[str, ...], what: str) -> HardwareError:
    wanted = " or ".join(f"${n}" for n in names) or "a per-node task count"
    return HardwareError(
        f"{row.launcher} launch: ${row.rank} is set but {wanted} ({what}) is not; hpcinfer "
        "needs it to bind devices. Launch with mpiexec/mpirun/srun directly, or export it "
        "in the wrapper script"
    )


def _local_size(row: _RankVars, env: Mapping[str, str]) -> int:
    name = _first_set(env, row.local_size)
    if name is not None:
        return _env_int(env, name)
    derived = row.derive_local_size(env) if row.derive_local_size else None
    if derived is None:
        raise _missing(row, row.local_size, "ranks on this node")
    return derived


def _rank_info(row: _RankVars, env: Mapping[str, str]) -> RankInfo:
    rank = _env_int(env, row.rank)
    size_name = _first_set(env, row.world_size)
    if size_name is None:
        raise _missing(row, row.world_size, "world size")
    world_size = _env_int(env, size_name)
    local_name = _first_set(env, row.local_rank)
    if local_name is not None:
        local_rank, local_size = _env_int(env, local_name), _local_size(row, env)
    elif world_size == 1:
        local_rank, local_size = 0, 1
    else:
        raise _missing(row, row.local_rank, "local rank")
    info = RankInfo(rank, local_rank, world_size, local_size, row.launcher)
    if not (0 <= rank < world_size and 0 <= local_rank < local_size <= world_size):
        raise HardwareError(
            f"{row.launcher} launch gives an impossible rank layout {info}; the launcher "
            "variables are stale (a nested launch?): unset them or relaunch"
        )
    return info


def read_rank(env: Mapping[str, str] | None = None) -> RankInfo | None:
    """This process's rank from its launcher's variables; None when no launcher started it."""
    env = os.environ if env is None else env
    launched = [row for row in _RANK_TABLE if _first_set(env, (row.rank,))]
    if not launched:
        return None
    complete = (row for row in launched if _first_set(env, row.local_rank))
    return _rank_info(next(complete, launched[0]), env)


# --- Walltime left --------------------------------------------------------------------


_run = run_probe


def _slurm_remaining(
    env: Mapping[str, str], runner: Runner, now: Callable[[], float]
) -> float | None:
    job_id = _env(env, "SLURM_JOB_ID", "SLURM_JOBID")
    out = runner(["squeue", "-h", "-j", job_id, "-o", "%L"]) if job_id else None
    lines = [line for line in (out or "").splitlines() if line.strip()]
    if lines:
        return scheduler_duration(lines[0])
    end = _env(env, "SLURM_JOB_END_TIME")
    if end is None or not _DIGITS.fullmatch(end):
        return None
    return max(0.0, float(end) - now())


def _qstat_field(out: str, key: str) -> str | None:
    match = re.search(rf"^\s*{re.escape(key)}\s*=\s*(\S+)", out, flags=re.MULTILINE)
    return match.group(1) if match else None


def _pbs_remaining(
    env: Mapping[str, str], runner: Runner, _now: Callable[[], float]
) -> float | None:
    """Torque prints Walltime.Remaining; PBS Pro only the limit and the use so far.

    PBS updates resources_used every few minutes (and not at all in the first minutes),
    so a missing figure counts as zero use: the answer errs by at most that interval.
    """
    job_id = _env(env, "PBS_JOBID")
    out = runner(["qstat", "-f", job_id]) if job_id else None
    if not out:
        return None
    remaining = _qstat_field(out, "Walltime.Remaining")
    if remaining is not None:
        seconds = scheduler_duration(remaining)
        return None if seconds is None else max(0.0, seconds)
    limit_text = _qstat_field(out, "Resource_List.walltime")
    limit = scheduler_duration(limit_text) if limit_text else None
    if limit is None:
        return None
    used = scheduler_duration(_qstat_field(out, "resources_used.walltime") or "0")
    return max(0.0, limit - (used or 0.0))


WalltimeQuery = Callable[[Mapping[str, str], Runner, Callable[[], float]], float | None]

# The scheduler whose job-id variable is set answers; PBS first, as in read_allocation.
_WALLTIME: tuple[tuple[tuple[str, ...], WalltimeQuery], ...] = (
    (("PBS_JOBID",), _pbs_remaining),
    (("SLURM_JOB_ID", "SLURM_JOBID"), _slurm_remaining),
)


def remaining_walltime_s(
    env: Mapping[str, str] | None = None,
    runner: Runner = _run,
    now: Callable[[], float] = time.time,
) -> float | None:
    """Seconds before the scheduler ends this job; None outside a job, unlimited, or unknown.

    Never raises: a run that cannot tell its deadline just does not drain early.
    """
    env = os.environ if env is None else env
    for names, query in _WALLTIME:
        if _env(env, *names) is not None:
            return query(env, runner, now)
    return None
