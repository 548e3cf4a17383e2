#!/usr/bin/env python3
"""Fuzz the drivers open-ended: ``make fuzz FORMAT=ext4 TIME=1h``.

Runs the property of tests/test_fuzz_library.py (a mutated seed image gets only the
driver's own errors out, within the time and memory limits) with fresh random
examples, seed after seed, until the time is up.  Hypothesis keeps what it learns in
``.hypothesis/fuzz/<seed>/``, so a failure found once is tried first next time.

Every distinct failure (by exception type and the innermost frame in ``drivers/``) is
written, shrunk, to ``fuzz-findings/<format>-<sha256[:12]>.img`` with a ``.txt``
beside it (seed, mutations, traceback); a failure already written is not reported
again in the same run, so the run moves on to find others; one that does not happen
again when its image is checked a second time (a "hang" while the machine was busy) is
counted as flaky and not written.  Reproduce a finding with::

    .venv/bin/python -c "from tests.support.fuzzing import check_image; \\
        check_image(open('fuzz-findings/X.img', 'rb').read())"

Needs root (the seeds hold device nodes and owners) and mke2fs, mksquashfs,
mkfs.fat and mcopy.  Exit status: 0 if nothing was found, 1 if something was.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.database import DirectoryBasedExampleDatabase  # noqa: E402

from tests.support.fuzzing import (  # noqa: E402
    FORMATS,
    Mutation,
    apply,
    check_image,
    mutations,
    seed,
    seed_names,
    seed_unavailable,
)

#: Examples per hypothesis run: short enough to share the time fairly between seeds
#: and to stop close to the deadline (an example takes milliseconds), long enough for
#: hypothesis to learn something within a run.
CHUNK = 300
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``30s``, ``10m``, ``1h``, ``2d`` or plain seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 30s, 10m, 1h)")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


@dataclass
class Findings:
    """Distinct failures of this run, written as they are shrunk."""

    out: Path
    written: dict[str, Path] = field(default_factory=dict)  # origin -> image written
    examples: int = 0
    flaky: int = 0  # failures that did not happen again (a hang while the machine was busy)

    @staticmethod
    def origin(exc: BaseException) -> str:
        """The exception type and the innermost frame in the drivers, looking through
        the causes too (a hang is an AssertionError caused where the alarm rang)."""
        cause: BaseException | None = exc
        frames: list[traceback.FrameSummary] = []
        while cause is not None and not frames:
            tb = traceback.extract_tb(cause.__traceback__)
            frames = [f for f in tb if "/drivers/" in f.filename]
            cause = cause.__cause__
        frames = frames or traceback.extract_tb(exc.__traceback__)[-1:]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        return f"{type(exc).__name__} at {where}"

    def record(self, seed_name: str, fmt: str, changes: list[Mutation], image: bytes,
               exc: BaseException) -> None:  # fmt: skip
        """Write (or overwrite: shrinking makes it smaller) the image of one failure."""
        origin = self.origin(exc)
        digest = hashlib.sha256(image).hexdigest()[:12]
        path = self.out / f"{fmt}-{digest}.img"
        previous = self.written.get(origin)
        if previous is not None and previous != path:
            previous.unlink(missing_ok=True)
            previous.with_suffix(".txt").unlink(missing_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image)
        report = [
            f"seed: {seed_name}",
            f"failure: {origin}",
            "mutations:",
            *(f"  {change!r}" for change in changes),
            "",
            "".join(traceback.format_exception(exc)),
        ]
        path.with_suffix(".txt").write_text("\n".join(report))
        self.written[origin] = path


def fuzz_seed(name: str, fmt: str, examples: int, database: Path, findings: Findings) -> None:
    """One hypothesis run of ``examples`` random examples on seed ``name``."""
    s = seed(name)
    known = set(findings.written)

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=False,
        database=DirectoryBasedExampleDatabase(str(database / name)),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=True,
    )
    @given(changes=mutations(s))
    def survives(changes: list[Mutation]) -> None:
        findings.examples += 1
        image = apply(s, changes)
        try:
            check_image(image, s.fs_type)
        except Exception as exc:
            if Findings.origin(exc) in known:
                return  # written in an earlier round: look for something else
            try:
                check_image(image, s.fs_type)
            except Exception:
                pass
            else:
                findings.flaky += 1
                return
            findings.record(name, fmt, changes, image, exc)
            raise

    try:
        survives()
    except Exception as exc:  # the shrunk failure(s), already written by record()
        print(f"  {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="make fuzz FORMAT=ext4 TIME=1h runs: scripts/fuzz.py --format ext4 --time 1h",
    )
    parser.add_argument("--format", choices=[*FORMATS, "all"], default="all")
    parser.add_argument("--time", type=duration, default=duration("10m"), help="30s, 10m, 1h")
    parser.add_argument(
        "--out", type=Path, default=PROJECT / "fuzz-findings", help="where failures go"
    )
    parser.add_argument(
        "--database",
        type=Path,
        default=PROJECT / ".hypothesis" / "fuzz",
        help="hypothesis's example database (one directory per seed)",
    )
    args = parser.parse_args(argv)

    logging.disable(logging.WARNING)  # the drivers log what they tolerate: noise here
    formats = FORMATS if args.format == "all" else (args.format,)
    for fmt in formats:
        reason = seed_unavailable(fmt)
        if reason:
            parser.error(f"cannot build {fmt} seeds: {reason}")
    names = [(name, fmt) for fmt in formats for name in seed_names(fmt)]
    findings = Findings(args.out)
    deadline = time.monotonic() + args.time
    rounds = 0
    print(f"fuzzing {', '.join(n for n, _ in names)} for {args.time:.0f} s")
    started = time.monotonic()
    while time.monotonic() < deadline:
        name, fmt = names[rounds % len(names)]
        fuzz_seed(name, fmt, CHUNK, args.database, findings)
        rounds += 1
        if rounds % len(names) == 0:
            elapsed = time.monotonic() - started
            print(f"{elapsed:.0f} s: {findings.examples} examples, {len(findings.written)} found")
    print(f"{findings.examples} examples in {rounds} runs ({findings.flaky} flaky failures)")
    for origin, path in findings.written.items():
        print(f"FOUND {origin}: {path} (and {path.with_suffix('.txt').name})")
    if not findings.written:
        print("nothing found")
    return 1 if findings.written else 0


if __name__ == "__main__":
    sys.exit(main())
