"""CLI command `hpcinfer profile grid`: a grid file or preset -> one experiment config each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hpcinfer.cli import flags
from hpcinfer.core.terminal import wide_console
from hpcinfer.errors import SpecError

err = wide_console(stderr=True)

GRID_EPILOG = (
    "Examples: hpcinfer profile grid --preset tp-scaling-llama-8b -o experiments; "
    "hpcinfer profile grid grid.yaml -o experiments (grid.yaml: models: [meta-llama/"
    "Llama-3.1-8B], tp: [1, 2, 4], filter: 'tp * pp <= devices'). Then: hpcinfer profile "
    "run experiments/E1.1_llama8b_tp1.yaml, or hpcinfer profile submit experiments/*.yaml. "
    "Exit codes: 0 written; 2 bad grid (file, field and fix named) or no experiment left."
)


@flags.takes(
    "out",
    "profile",
    *flags.OUTPUT_MODE,
    helps={
        "out": "Folder for the <experiment_id>.yaml configs, created if missing "
        "(default: experiments)."
    },
)
def grid(
    grid_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="GRID.yaml", help="The grid file (or give --preset).", show_default=False
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="A built-in grid: tp-scaling-llama-8b (E1.1-E1.3) or cpu-tiny."),
    ] = None,
    *,
    flags: flags.Flags,
) -> None:
    """Expand an experiment grid (models x tp x pp x dp x ep x batch x lengths, filtered)
    into OUT/<experiment_id>.yaml, one validated config per experiment (default OUT:
    experiments). Points vLLM cannot run are refused with the reason."""
    from hpcinfer.cluster import resolve_profile
    from hpcinfer.profile.grid import expand_grid, load_grid, write_experiments
    from hpcinfer.profile.presets import preset_grid

    if (grid_file is None) == (preset is None):
        raise SpecError("give a grid file or --preset NAME (one of the two)")
    if grid_file is not None:
        spec, source = load_grid(grid_file), str(grid_file)
    else:
        spec, source = preset_grid(str(preset)), f"preset {preset}"
    hardware = resolve_profile(flags["profile"] or spec.profile)
    expansion = expand_grid(spec, source, hardware.devices_per_node)
    if not expansion.experiments:
        left_out = [f"{p}: filter {f!r}" for p, f in expansion.filtered]
        left_out += [f"{i}: {'; '.join(r)}" for i, r in expansion.refused]
        raise SpecError(
            f"{source}: no experiment left to write ({len(left_out)} point(s) left out):\n  "
            + "\n  ".join(left_out[:20])
            + "\nwiden the filter or the axes, or fix the refused plans"
        )
    out = Path(flags["out"] or "experiments")
    written = write_experiments(expansion, out)
    if flags.json_out:
        document = {
            "source": source,
            "profile": hardware.name,
            "devices": expansion.devices,
            "written": [str(p) for p in written],
            "vllm": {e.config.experiment_id: e.vllm.engine_args for e in expansion.experiments},
            "filtered": [{"point": p, "filter": f} for p, f in expansion.filtered],
            "refused": [{"experiment_id": i, "reasons": r} for i, r in expansion.refused],
        }
        print(json.dumps(document, indent=1))
        return
    for path in written:
        print(path)
    if flags.quiet:
        return
    err.print(
        f"{len(written)} experiment(s) from {escape(source)} for {escape(hardware.name)} "
        f"({expansion.devices} devices)",
        highlight=False,
    )
    for point, text in expansion.filtered:
        err.print(f"left out by the filter {escape(text)!r}: {escape(point)}", highlight=False)
    for experiment_id, reasons in expansion.refused:
        err.print(
            f"refused {escape(experiment_id)}: vLLM cannot run it: {escape('; '.join(reasons))}",
            highlight=False,
        )


def register(group: typer.Typer) -> None:
    """Add `grid` to the `hpcinfer profile` group."""
    group.command(epilog=GRID_EPILOG)(grid)
