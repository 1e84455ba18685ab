"""The environment block of a job script: modules, Python, proxies, variables, setup lines.

The hardware profile's site defaults (``job_env``) come first and the spec's `job:` section
adds to them or overrides them, so a user on Aurora writes only what is theirs. Every value
is quoted; the setup lines are the one thing written as given, since they are the user's
own shell. A failed step stops the job at once with a message naming it, rather than
letting hpcinfer start in the wrong environment.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from hpcinfer import script_values as checks
from hpcinfer.cluster.hardware import HardwareProfile, JobEnvironment
from hpcinfer.job_script_spec import JobScriptSpec

PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
NO_PROXY_VARS = ("no_proxy", "NO_PROXY")


@dataclass(frozen=True)
class Environment:
    """The merged site and user settings, in the order the script applies them."""

    modules: list[str] = field(default_factory=list)
    venv: str | None = None
    conda_env: str | None = None
    proxy: str | None = None
    no_proxy: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)

    @property
    def activates(self) -> bool:
        """True when the script activates a Python environment, whose hpcinfer it then uses."""
        return bool(self.venv or self.conda_env)


def merge_environment(job: JobScriptSpec, profile: HardwareProfile) -> Environment:
    """Profile defaults, then the spec: modules and setup lines add up, values override."""
    site = profile.job_env or JobEnvironment()
    checks.check_no_secrets(site.env, site.setup, f"hardware profile {profile.name!r} job_env")
    return Environment(
        modules=list(dict.fromkeys([*site.modules, *job.modules])),
        venv=job.venv,
        conda_env=job.conda_env,
        proxy=job.proxy or site.proxy,
        no_proxy=job.no_proxy or site.no_proxy,
        env={**site.env, **job.env},
        setup=[*site.setup, *job.setup],
    )


def _fail(message: str) -> str:
    """`|| hpcinfer_fail '<message>'`, the message quoted as one word."""
    return f"|| hpcinfer_fail {shlex.quote(message)}"


def _modules(modules: list[str]) -> list[str]:
    if not modules:
        return []
    lines = [
        "command -v module >/dev/null 2>&1 "
        + _fail(
            "the module command is not defined in this shell; load its init script in "
            "job.setup or drop job.modules"
        ),
    ]
    for module in modules:
        lines.append(f"module load {shlex.quote(module)} {_fail(f'module load {module} failed')}")
    return lines


def _python(env: Environment) -> list[str]:
    if env.venv:
        activate = f"{env.venv.rstrip('/')}/bin/activate"
        return [
            f"[ -r {shlex.quote(activate)} ] {_fail(f'no virtual environment at {env.venv}')}",
            f". {shlex.quote(activate)} {_fail(f'activating {env.venv} failed')}",
            *_has_hpcinfer(env.venv),
        ]
    if env.conda_env:
        return [
            "command -v conda >/dev/null 2>&1 "
            + _fail("conda is not on PATH; load its module first (job.modules)"),
            'eval "$(conda shell.bash hook)" ' + _fail("conda shell.bash hook failed"),
            f"conda activate {shlex.quote(env.conda_env)} "
            + _fail(f"conda activate {env.conda_env} failed"),
            *_has_hpcinfer(env.conda_env),
        ]
    return []


def _has_hpcinfer(where: str) -> list[str]:
    return [
        "command -v hpcinfer >/dev/null 2>&1 "
        + _fail(f"hpcinfer is not installed in {where}; pip install hpcinfer there"),
    ]


def _export(name: str, value: str) -> str:
    return f"export {name}={shlex.quote(value)}"


def environment_lines(env: Environment) -> list[str]:
    """The block's shell lines, safe to paste into a bash script as they are."""
    lines = [*_modules(env.modules), *_python(env)]
    if env.proxy:
        lines += [_export(name, env.proxy) for name in PROXY_VARS]
    if env.no_proxy:
        lines += [_export(name, env.no_proxy) for name in NO_PROXY_VARS]
    lines += [_export(name, value) for name, value in env.env.items()]
    if env.setup:
        lines.append("# job.setup, as written:")
        lines += env.setup
    return lines
