"""Every image of the shared corpus of real corrupt images, through a real mount.

Each image is mounted with pyfsmount, walked and read through the kernel with deadlines,
and its driver checked (tests/support/corpus.py).  What must hold for every one of them:
no daemon death, no hang, no budget overrun, no driver bug in the log, and either served
or refused with exit code 32 and one line saying why.  Where Linux mounts the image, any
difference from the kernel's tree must be one that ``tests/corpus_differences.tsv``
explains, and every image that file lists must still differ (so it stays true).

Skipped when the corpus (``../shared/corpus`` or ``$PYFSMOUNT_CORPUS``) is absent.
``scripts/corpus_report.py`` writes the same results up as docs/CORPUS.md.
"""

from __future__ import annotations

import pytest

from tests.support.corpus import (
    CORPUS,
    Result,
    cause_of,
    corpus_images,
    examine_all,
    known_differences,
)

pytestmark = pytest.mark.skipif(
    not (CORPUS / "index.tsv").exists(), reason=f"no corpus at {CORPUS}"
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[Result]:
    return examine_all(corpus_images(), tmp_path_factory.mktemp("corpus"))


def listing(results: list[Result]) -> str:
    return "\n".join(f"  {r.image.path}: {r.detail} {r.differences[:3]}" for r in results)


def test_no_daemon_dies_hangs_overruns_its_budget_or_logs_a_bug(results: list[Result]) -> None:
    failures = [r for r in results if r.outcome == "failure"]
    assert not failures, f"{len(failures)} failure(s):\n{listing(failures)}"


def test_every_image_is_served_or_refused_with_a_reason(results: list[Result]) -> None:
    assert {r.outcome for r in results} <= {"identical", "differs", "served", "refused", "skipped"}
    refused = [r for r in results if r.outcome == "refused"]
    assert all(r.detail and "\n" not in r.detail for r in refused), listing(refused)


def test_differences_from_the_kernel_are_the_documented_ones(results: list[Result]) -> None:
    known = known_differences()
    differing = {r.image.path for r in results if r.differences}
    unexplained = [r for r in results if r.differences and cause_of(r, known) is None]
    assert not unexplained, "differences with no cause in corpus_differences.tsv:\n" + listing(
        unexplained
    )
    stale = sorted(p for p in set(known) - differing if not p.startswith("refused:"))
    assert not stale, f"listed in corpus_differences.tsv but no longer different: {stale}"


def test_most_images_the_kernel_mounts_are_identical(results: list[Result]) -> None:
    """A guard against a comparison that silently stops comparing."""
    compared = [r for r in results if r.outcome in ("identical", "differs")]
    identical = [r for r in compared if r.outcome == "identical"]
    assert len(compared) > 200
    assert len(identical) > 0.8 * len(compared)
