"""When each benchmark request is sent: deterministic, seeded arrival schedules.

A schedule is computed whole before the run (as vLLM's `get_request` precomputes its
delays), so sending never waits on a random number generator and the same seed gives the
same load on every machine. The load shapes are those of `vllm bench serve`:

- all at once: every request at time 0 (vLLM's `--request-rate inf`);
- a request rate with gamma inter-arrival times, shape = burstiness and mean 1/rate:
  burstiness 1 is a Poisson process, below 1 burstier, above 1 more regular, infinite is
  evenly spaced. As in vLLM, the cumulative delays are then rescaled so the last request
  goes out at exactly `n / rate` seconds (vLLM does this so the achieved rate, and hence
  throughput, does not drift by 1-2% between seeds); the first request waits one sampled
  gap, as in vLLM, and is not sent at 0;
- a concurrency limit (`max_concurrency`) that travels with either: at most that many
  requests in flight, the rest wait for a slot (vLLM's `--max-concurrency`).

The samples come from Python's `random.Random(seed).gammavariate`, not numpy's global
generator that vLLM uses, so the distribution is vLLM's but the individual draws are not
(vLLM's draws also depend on how much of numpy's stream its dataset sampling consumed).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

DEFAULT_SEED = 0


@dataclass(frozen=True)
class Schedule:
    """Send offsets (seconds after the run starts, non-decreasing) and how they were made.

    `max_concurrency` bounds the requests in flight. With a finite rate the run stays
    open-loop: a request's latency counts from its scheduled time, so time spent waiting for a
    slot is counted, as a user would feel it. With all-at-once and a limit the run is a closed
    loop (`closed_loop`): a request is due only when a slot frees, so the load generator
    should record the time it got its slot as its scheduled time; counting from 0 would charge
    the last request with the whole run.
    """

    offsets_s: tuple[float, ...]
    rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be 1 or more, not {self.max_concurrency}")

    def __len__(self) -> int:
        return len(self.offsets_s)

    @property
    def closed_loop(self) -> bool:
        """True when requests are paced only by free slots (all at once plus a limit)."""
        return self.max_concurrency is not None and math.isinf(self.rate)

    def send_times(self, start_s: float) -> tuple[float, ...]:
        """The scheduled send times on the load generator's clock, for a run starting at
        `start_s`."""
        return tuple(start_s + offset for offset in self.offsets_s)

    def describe(self) -> str:
        """One line for reports: '100 requests at 2 req/s, Poisson arrivals, at most 8 in
        flight'."""
        count = f"{len(self)} request{'s' if len(self) != 1 else ''}"
        if math.isinf(self.rate):
            text = f"{count}, all at once"
        else:
            text = f"{count} at {self.rate:g} req/s, {shape(self.burstiness)}, seed {self.seed}"
        if self.max_concurrency is not None:
            text += f", at most {self.max_concurrency} in flight"
        return text


def shape(burstiness: float) -> str:
    """How arrivals of this burstiness are called: 'Poisson arrivals', 'evenly spaced'."""
    if burstiness == 1.0:
        return "Poisson arrivals"
    if math.isinf(burstiness):
        return "evenly spaced"
    return f"gamma arrivals (burstiness {burstiness:g})"


def _check_count(n: int) -> None:
    if n < 1:
        raise ValueError(f"a schedule needs at least one request, not {n}")


def all_at_once(n: int, max_concurrency: int | None = None) -> Schedule:
    """Every request due at time 0 (vLLM's request rate inf)."""
    _check_count(n)
    return Schedule(offsets_s=(0.0,) * n, max_concurrency=max_concurrency)


def fixed_concurrency(n: int, max_concurrency: int) -> Schedule:
    """A closed loop: `max_concurrency` requests in flight, the next sent as one finishes."""
    return all_at_once(n, max_concurrency=max_concurrency)


def fixed_rate(
    n: int,
    rate: float,
    burstiness: float = 1.0,
    seed: int = DEFAULT_SEED,
    max_concurrency: int | None = None,
) -> Schedule:
    """`n` requests at `rate` req/s with gamma(shape=burstiness, mean 1/rate) gaps, as vLLM's
    `get_request` makes them, including its rescaling of the last send to `n / rate`.

    A rate of inf is all at once; a burstiness of inf spaces the requests exactly 1/rate
    apart. The same arguments always give the same schedule.
    """
    _check_count(n)
    if math.isnan(rate) or rate <= 0:
        raise ValueError(
            f"the request rate must be above 0 req/s (inf for all at once), not {rate}"
        )
    if math.isnan(burstiness) or burstiness <= 0:
        raise ValueError(
            f"burstiness must be above 0 (1 = Poisson, < 1 burstier, > 1 more regular), "
            f"not {burstiness}"
        )
    if math.isinf(rate):
        return Schedule(
            offsets_s=(0.0,) * n,
            burstiness=burstiness,
            max_concurrency=max_concurrency,
            seed=seed,
        )
    rng = random.Random(seed)
    if math.isinf(burstiness):
        gaps = [1.0 / rate] * n
    else:
        scale = 1.0 / (rate * burstiness)
        gaps = [rng.gammavariate(burstiness, scale) for _ in range(n)]
    offsets: list[float] = []
    elapsed = 0.0
    for gap in gaps:
        elapsed += gap
        offsets.append(elapsed)
    if offsets[-1] != 0:
        factor = (n / rate) / offsets[-1]
        offsets = [offset * factor for offset in offsets]
    return Schedule(
        offsets_s=tuple(offsets),
        rate=rate,
        burstiness=burstiness,
        max_concurrency=max_concurrency,
        seed=seed,
    )


def parse_rates(text: str) -> list[float]:
    """'1,2,inf' -> [1.0, 2.0, inf]: the request rates of a sweep, in the order given."""
    parts = [part for part in text.replace(",", " ").split() if part]
    if not parts:
        raise ValueError("no request rates: give e.g. 1,2,inf (req/s; inf = all at once)")
    rates: list[float] = []
    for part in parts:
        try:
            rate = float(part)
        except ValueError:
            raise ValueError(
                f"request rate {part!r} is not a number (req/s, or inf for all at once)"
            ) from None
        if math.isnan(rate) or rate <= 0:
            raise ValueError(f"request rate {part!r} must be above 0 (or inf for all at once)")
        rates.append(rate)
    return rates


def parse_concurrencies(text: str) -> list[int]:
    """'1,4,16' -> [1, 4, 16]: the concurrency limits of a sweep, in the order given."""
    parts = [part for part in text.replace(",", " ").split() if part]
    if not parts:
        raise ValueError("no concurrencies: give e.g. 1,4,16")
    levels: list[int] = []
    for part in parts:
        try:
            level = int(part)
        except ValueError:
            raise ValueError(f"concurrency {part!r} is not a whole number") from None
        if level < 1:
            raise ValueError(f"concurrency {part!r} must be 1 or more")
        levels.append(level)
    return levels
