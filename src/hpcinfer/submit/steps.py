"""The job's own commands (`job.steps`) and what the script does when it exits.

Most jobs run one `hpcinfer run` line. A job that serves a model and benchmarks it runs
several commands, some in the background (`hpcinfer serve ... &`), and must not leave them
running, nor a Ray cluster up, when it ends: after the last step, after a failed one, or on
qdel/scancel or the walltime's SIGTERM. So the steps run in one shell function that stops
at the first failure, and one exit handler stops what is left: first the steps still in the
background (they may be using the Ray cluster), then whatever the job brought up (the Ray
cluster, ``submit.ray_bracket``).

The steps are the user's own shell and go into the script as written (like `job.setup`);
everything around them is ours and quoted.
"""

from __future__ import annotations

import shlex

STOP_WAIT_S = 60
"""How long background steps get to stop after SIGTERM (a server stopping its engines)
before SIGKILL; the scheduler's own kill delay may end the job sooner."""

EXIT_SIGNALS = {"TERM": 143, "INT": 130, "HUP": 129}
"""Signals that end the script through its exit handler, with the shell's exit code for
each (128 + signal number); bash runs no EXIT trap when an untrapped signal kills it."""


def hpcinfer_function(hpcinfer: list[str]) -> list[str]:
    """Steps call `hpcinfer` by name: where the script activates no environment, that name
    means the installation `submit` ran with, as on the run line."""
    if hpcinfer == ["hpcinfer"]:
        return []
    return [
        "# `hpcinfer` in the steps is the installation `hpcinfer submit` ran with:",
        f'hpcinfer() {{ {shlex.join(hpcinfer)} "$@"; }}',
        "export -f hpcinfer",
    ]


def step_lines(steps: list[str]) -> list[str]:
    """`hpcinfer_steps`, a function running each step in order (this shell, so background
    steps stay its jobs), returning the first non-zero exit code; then its call."""
    count = len(steps)
    lines = [
        "# job.steps, as written, in order; the first that fails ends them with its exit code.",
        "hpcinfer_steps() {",
        "    local step_status",
    ]
    for number, step in enumerate(steps, 1):
        lines.append(step.rstrip("\n"))
        lines.append(
            '    step_status=$?; [ "$step_status" -eq 0 ] || { echo "hpcinfer job: step '
            f'{number} of {count} exited $step_status; the steps after it do not run" >&2; '
            'return "$step_status"; }'
        )
    lines += ["}", "hpcinfer_steps"]
    return lines


def stop_background_lines() -> list[str]:
    """Stop the steps still running in the background: SIGTERM, a bounded wait, SIGKILL."""
    return [
        "    local pids",
        "    pids=$(jobs -p)",
        '    if [ -n "$pids" ]; then',
        '        echo "hpcinfer job: stopping the steps still running (pids" $pids")" >&2',
        "        kill -TERM $pids 2>/dev/null",
        f"        for ((waited = 0; waited < {STOP_WAIT_S}; waited++)); do",
        "            kill -0 $pids 2>/dev/null || break",
        "            sleep 1",
        "        done",
        "        kill -KILL $pids 2>/dev/null",
        "    fi",
    ]


def exit_handler(cleanup: list[str]) -> list[str]:
    """`hpcinfer_on_exit`, run once whichever way the script ends, with ``cleanup`` (body
    lines, in order); the job's exit code is kept. Empty when there is nothing to clean."""
    if not cleanup:
        return []
    signal_traps = [f"trap 'exit {code}' {name}" for name, code in EXIT_SIGNALS.items()]
    return [
        "hpcinfer_on_exit() {",
        "    trap ':' " + " ".join(EXIT_SIGNALS) + "  # a second signal must not cut this short",
        *cleanup,
        "}",
        "trap hpcinfer_on_exit EXIT",
        *signal_traps,
    ]
