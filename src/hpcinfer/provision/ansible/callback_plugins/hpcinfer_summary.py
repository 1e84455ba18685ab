"""Ansible callback: one JSON summary of a playbook run, for `hpcinfer cluster`.

Enabled by the runner (ANSIBLE_CALLBACKS_ENABLED), it writes to $HPCINFER_ANSIBLE_SUMMARY:
per host its ok/changed/unreachable/failed/skipped counts, and each failed or unreachable
task's host, task name and message. It prints nothing: the default callback still shows the
run. Loaded by Ansible, not by hpcinfer: it imports only Ansible and the standard library.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: hpcinfer_summary
type: aggregate
short_description: per-host counts and failed tasks as JSON, for hpcinfer cluster
description:
  - Writes the file named by $HPCINFER_ANSIBLE_SUMMARY at the end of the run.
requirements:
  - enabled in callbacks_enabled
"""

SUMMARY_ENV = "HPCINFER_ANSIBLE_SUMMARY"
MESSAGE_CHARS = 2000


def _message(result: dict[str, Any]) -> str:
    """What the task said went wrong: msg, else stderr, else the return code."""
    parts = []
    for key in ("msg", "stderr", "module_stderr", "reason"):
        value = result.get(key)
        if value and str(value).strip() not in parts:
            parts.append(str(value).strip())
    if not parts and "rc" in result:
        parts.append(f"exit code {result['rc']}")
    return "\n".join(parts)[:MESSAGE_CHARS] or "failed"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "hpcinfer_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[dict[str, Any]] = []

    def _record(self, result: Any, unreachable: bool) -> None:
        self.failures.append(
            {
                "host": result._host.get_name(),
                "task": result._task.get_name(),
                "message": _message(result._result),
                "unreachable": unreachable,
            }
        )

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        if not ignore_errors:
            self._record(result, unreachable=False)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        path = os.environ.get(SUMMARY_ENV)
        if not path:
            return
        hosts = []
        for host in sorted(stats.processed):
            tally = stats.summarize(host)
            hosts.append(
                {
                    "host": host,
                    "ok": tally["ok"],
                    "changed": tally["changed"],
                    "unreachable": tally["unreachable"],
                    "failed": tally["failures"],
                    "skipped": tally["skipped"],
                    "rescued": tally["rescued"],
                    "ignored": tally["ignored"],
                }
            )
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=folder, prefix=".summary-")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump({"hosts": hosts, "failures": self.failures}, out, indent=1)
        os.replace(temp, path)
