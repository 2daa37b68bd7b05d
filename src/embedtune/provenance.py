"""Where a result came from: embedtune's version, the git commit of the code, the machine and the date.

Every results file (STS, retrieval, benchmarks) records these, so a number can be traced to the code and
hardware that produced it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from ._version import __version__


@functools.cache
def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: this package), with ``-dirty`` when the
    tracked files differ from it; None outside a checkout or without git. Cached: the first call (the CLI
    makes it at start-up) fixes the commit of the code this process runs, even if HEAD moves meanwhile."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    """What the timings depend on: CPU, core count, Python and torch versions, accelerator."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    return info


def environment_meta() -> dict[str, Any]:
    """The meta fields every payload carries: embedtune version, git commit, machine and date (UTC)."""
    return {
        "embedtune_version": __version__,
        "git_commit": git_commit(),
        "machine": machine_info(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
