#!/usr/bin/env python3
"""Mount every image of the shared corpus and write the summary to docs/CORPUS.md.

    sudo .venv/bin/python scripts/corpus_report.py            # all images (~6 min)
    sudo .venv/bin/python scripts/corpus_report.py --only e2fsprogs/f_badroot.img.gz

Each image goes through tests/support/corpus.py: mounted with pyfsmount, walked and read
through the kernel with deadlines, its driver checked (alive, RSS budget, no bug logged),
and, where Linux mounts it, compared with the kernel's mount entry by entry.  Needs root,
the corpus at ../shared/corpus (or $PYFSMOUNT_CORPUS), and the project's .venv.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from tests.support.corpus import (  # noqa: E402
    CORPUS,
    RSS_BUDGET_MIB,
    Result,
    corpus_images,
    examine_all,
    explain,
)

OUTCOMES = ("identical", "differs", "served", "refused", "skipped", "failure")
FAMILIES = {"ext2": "ext2/3/4", "ext3": "ext2/3/4", "ext4": "ext2/3/4", "ext": "ext2/3/4"}


def family(result: Result) -> str:
    return FAMILIES.get(result.image.fstype, result.image.fstype)


def shorten(line: str, limit: int = 160) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


def summary_table(results: list[Result]) -> list[str]:
    counts: Counter[tuple[str, str]] = Counter((family(r), r.outcome) for r in results)
    families = sorted({family(r) for r in results})
    lines = [
        "| file system | images | identical to the kernel | served, documented differences "
        "| served (no kernel oracle) | refused with a reason | skipped | failures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in [*families, "all"]:
        chosen = families if name == "all" else [name]
        per = [sum(counts[(f, o)] for f in chosen) for o in OUTCOMES]
        lines.append(f"| {name} | {sum(per)} | " + " | ".join(str(n) for n in per) + " |")
    return lines


def report(results: list[Result]) -> str:
    served = [r for r in results if r.outcome in ("identical", "differs", "served")]
    peak = max((r.peak_rss_mib for r in served), default=0.0)
    slowest = max(results, key=lambda r: r.seconds)
    out = [
        "# The corpus of real corrupt images",
        "",
        f"Every image of `{CORPUS.name}/` (see `../shared/corpus/SOURCES.md`) mounted with",
        "pyfsmount, walked, read and checked by `tests/support/corpus.py`. Regenerate with",
        "`sudo .venv/bin/python scripts/corpus_report.py`; `tests/test_corpus.py` runs the same",
        "checks in CI (skipped when the corpus is absent).",
        "",
        *summary_table(results),
        "",
        f"Peak driver RSS over all served images: {peak:.1f} MiB (budget {RSS_BUDGET_MIB} MiB).",
        f"Slowest image: `{slowest.image.path}`, {slowest.seconds:.1f} s (decompress, mount, "
        "walk, kernel comparison).",
        f"EIO answers met while walking: {sum(r.eio for r in results)} entries "
        f"in {sum(1 for r in results if r.eio)} images (the damaged parts; the rest was served).",
        "",
        "## Differences from the kernel, by cause",
        "",
    ]
    by_cause: dict[str, list[Result]] = {}
    for result in results:
        if result.differences:
            cause = explain(result)[0][1] or "UNEXPLAINED"
            by_cause.setdefault(cause, []).append(result)
    for cause, differing in sorted(by_cause.items(), key=lambda item: -len(item[1])):
        out += [f"### {len(differing)} image(s): {cause}", ""]
        for result in differing[:8]:
            shown = "; ".join(shorten(line) for line in result.differences[:2])
            more = len(result.differences) - 2
            out.append(
                f"- `{result.image.path}`: {shown}" + (f" (and {more} more)" if more > 0 else "")
            )
        if len(differing) > 8:
            out.append(f"- ... and {len(differing) - 8} more images")
        out.append("")
    errno_only = [r for r in results if r.errno_only]
    out += [
        f"Not counted as differences: in {len(errno_only)} images Linux answers EUCLEAN",
        "(EFSCORRUPTED) or EBADMSG (EFSBADCRC) where pyfsmount answers EIO, on the same",
        "entries and operations: pyfsmount's errno for any corrupt structure of any format.",
        "",
    ]
    out += ["## Refusals, by reason", ""]
    reasons = Counter(r.detail for r in results if r.outcome == "refused")
    out += [f"- {n} x {reason}" for reason, n in reasons.most_common()]
    failures = [r for r in results if r.outcome == "failure"]
    out += ["", "## Failures", ""]
    out += [f"- `{r.image.path}`: {r.detail}" for r in failures] or ["None."]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="image path (repeatable)")
    parser.add_argument(
        "--output", type=Path, default=PROJECT / "docs" / "CORPUS.md", help="where to write"
    )
    args = parser.parse_args()
    if not (CORPUS / "index.tsv").exists():
        print(f"corpus_report: no corpus at {CORPUS}", file=sys.stderr)
        return 1
    images = [i for i in corpus_images() if not args.only or i.path in args.only]

    def progress(result: Result) -> None:
        print(f"{result.outcome:9} {result.image.path} {result.detail}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="corpus-") as work:
        results = examine_all(images, Path(work), progress)
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text(report(results))
    print(f"corpus_report: wrote {args.output}", file=sys.stderr)
    return 1 if any(r.outcome == "failure" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
