"""Running the public tools that build and inspect test images."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping


def run(
    *args: str | os.PathLike[str],
    stdin: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run a tool and return its output; a failure is an AssertionError with its stderr.

    ``env`` is the whole environment (None: this process's), as for subprocess.
    """
    command = [os.fspath(arg) for arg in args]
    data = stdin.encode() if isinstance(stdin, str) else stdin
    result = subprocess.run(command, input=data, capture_output=True, env=env, check=False)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace")
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {stderr}")
    return result.stdout.decode(errors="replace")
