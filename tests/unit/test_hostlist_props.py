"""compress_hostlist is the exact inverse of expand_hostlist (Slurm hostlist syntax)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcinfer.cluster import allocation
from hpcinfer.cluster.allocation import compress_hostlist, expand_hostlist
from hpcinfer.errors import HardwareError

# Names within the syntax expand_hostlist accepts: no brackets, commas or whitespace.
_LETTERS = "abnxyz"
prefixes = st.text(alphabet=_LETTERS + "-_.0123456789", max_size=6)
suffixes = st.sampled_from(["", "-ib", ".hsn", "-hsn0", "b0n0", "_x", "-"])
bare_names = st.text(alphabet=_LETTERS + "-_.", min_size=1, max_size=6)


@st.composite
def numbered(draw: st.DrawFn, clean: bool = False) -> list[str]:
    """A run of consecutive numbers (often zero padded, sometimes crossing a width) under one
    prefix and suffix; runs of length 1 are single hosts. Unless `clean`, the prefix may end
    in digits and the suffix hold some, so the run is not always in the last number."""
    prefix = draw(prefixes.map(lambda p: p.rstrip("0123456789")) if clean else prefixes)
    suffix = draw(suffixes.filter(lambda s: not any(c.isdigit() for c in s)) if clean else suffixes)
    width = draw(st.integers(1, 5))
    start = draw(st.integers(0, 10**width + 5))
    length = draw(st.integers(1, 12))
    return [f"{prefix}{n:0{width}d}{suffix}" for n in range(start, start + length)]


@st.composite
def host_lists(draw: st.DrawFn) -> list[str]:
    """Runs, bare names and repeats of earlier hosts, in any order."""
    chunks = draw(st.lists(st.one_of(numbered(), bare_names.map(lambda n: [n])), max_size=8))
    hosts = [host for chunk in chunks for host in chunk]
    repeat: bool = draw(st.booleans())
    if repeat and hosts:
        repeats = draw(st.lists(st.sampled_from(hosts), max_size=6))
        where = draw(st.lists(st.integers(0, len(hosts)), min_size=len(repeats)))
        for host, at in zip(repeats, where, strict=False):
            hosts.insert(at, host)
    if draw(st.booleans()):
        hosts = draw(st.permutations(hosts))
    return hosts


@settings(max_examples=300, deadline=None)
@given(host_lists())
def test_expand_inverts_compress(hosts: list[str]) -> None:
    assert expand_hostlist(compress_hostlist(hosts)) == hosts


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["n1", "n2", "n3", "n01", "n02", "n9", "n10", "m2", "x"])))
def test_round_trip_from_a_small_pool(hosts: list[str]) -> None:
    """Few distinct names: many duplicates, mixed widths and broken runs."""
    assert expand_hostlist(compress_hostlist(hosts)) == hosts


@settings(max_examples=100, deadline=None)
@given(numbered(clean=True))
def test_a_run_is_one_range(hosts: list[str]) -> None:
    compressed = compress_hostlist(hosts)
    assert compressed.count("[") == (len(hosts) > 1)
    assert "," not in compressed


@pytest.mark.parametrize(
    ("hosts", "expr"),
    [
        (["nid001", "nid002", "nid003", "nid004", "nid010"], "nid[001-004,010]"),
        (["n8", "n9", "n10"], "n[8-10]"),
        (["n9", "n010"], "n[9,010]"),
        (["n099", "n100", "n101"], "n[099-101]"),
        (["n1", "n1", "n2"], "n[1,1-2]"),
        (["n3", "n2", "n1"], "n[3,2,1]"),
        (["login", "nid001-ib", "nid002-ib", "login"], "login,nid[001-002]-ib,login"),
        (["a1", "b2", "a3"], "a1,b2,a3"),
        (["x4000c0s0b0n0", "x4000c0s0b0n1"], "x4000c0s0b0n[0-1]"),
        (["rack1-node05", "rack2-node05"], "rack1-node05,rack2-node05"),
        (["node7"], "node7"),
        ([], ""),
    ],
)
def test_compress_hostlist_examples(hosts: list[str], expr: str) -> None:
    assert compress_hostlist(hosts) == expr
    assert expand_hostlist(expr) == hosts


@pytest.mark.parametrize("host", ["", "a,b", "a b", "nid[1]", "a]", "tab\there"])
def test_names_the_syntax_cannot_carry_raise(host: str) -> None:
    with pytest.raises(HardwareError, match="hostlist syntax"):
        compress_hostlist(["n1", host])


def test_groups_stay_within_the_expansion_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocation, "_MAX_HOSTS", 3)
    hosts = [f"n{i}" for i in range(7)]
    assert compress_hostlist(hosts) == "n[0-2],n[3-5],n6"
    assert expand_hostlist(compress_hostlist(hosts)) == hosts
