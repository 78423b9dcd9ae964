"""The tree jobs behind `dec warp` and `dec unwarp`.

`run_warp` walks SRC, warps every image with a warp that depends only on the
seed, the file's relative path and the copy index, writes the same relative
tree under DST (atomic writes, nothing overwritten without ``overwrite``) and
finishes with ``DST/manifest.jsonl``. Work is split per file, so results are
byte-identical whatever the number of worker processes and an interrupted job
resumes by skipping the outputs already in place. `run_unwarp` inverts every
warp a manifest records (`dec_cli.trees.treeformat` judges each record first).
Planning is `dec_cli.trees.warpplan`, the per-file work `dec_cli.trees.warpworkers`.
Nothing here prints; user errors raise `UsageError`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from dec_cli.trees.boxcheck import check_boxes_cover
from dec_cli.core.errors import UsageError
from dec_cli.core.files import remove_stale_temporaries, write_json
from dec_cli.trees.joblock import LOCK_FILE, job_lock
from dec_cli.trees.jobrecord import check_own_outputs, recorded_outputs
from dec_cli.core.limits import check_workers
from dec_cli.trees.objects import Box, load_boxes
from dec_cli.evaluation.reportpath import check_report_path
from dec_cli.trees.treeformat import MANIFEST_NAME, MASKS_DIR, Manifest, mask_name, read_manifest, write_manifest
from dec_cli.trees.warpplan import Plan, WarpSettings, check_tree_paths, plan_warp
from dec_cli.trees.warpworkers import JobContext, run_tasks, unwarp_file, warp_file

JOB_FILE = ".dec-warp-job.json"
UNWARP_JOB_FILE = ".dec-unwarp-job.json"


@dataclass
class JobSummary:
    """What a tree job did (the `--json` summary)."""

    command: str
    src: str
    dst: str
    files: int = 0
    outputs: int = 0
    written: int = 0
    skipped_existing: int = 0
    masks: int = 0
    bad: list[dict[str, str]] = field(default_factory=list)
    manifest: str | None = None
    workers: int = 1
    seconds: float = 0.0

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files_per_s"] = round(self.files_per_s, 3)
        data["seconds"] = round(self.seconds, 3)
        return data


def run_warp(src: str | os.PathLike, dst: str | os.PathLike, settings: WarpSettings = WarpSettings(), *,
             masks: str | os.PathLike | None = None, boxes: str | os.PathLike | None = None, workers: int = 1,
             overwrite: bool = False, resume: bool = False, json_path: str | None = None,
             on_start: Callable[[int], None] | None = None,
             on_progress: Callable[[int], None] | None = None) -> JobSummary:
    """Warp the tree SRC into DST (see the module docstring); returns the summary.

    One job per DST at a time (`dec_cli.trees.joblock`); more ``workers`` than files are not started.
    ``json_path``, where the caller will write the summary, may not lie in an input folder or be
    one of this job's files.
    """
    _check_job_options(overwrite, resume, workers)
    src_p, dst_p = Path(src), Path(dst)
    box_map = None if boxes is None else load_boxes(boxes)
    plan, scan_bad = plan_warp(src_p, dst_p, settings, masks=masks, boxes=boxes)
    if box_map is not None:
        check_boxes_cover(box_map, [rel for rel, _, _ in plan], boxes)
    names = [name for _, outs, mask_rel in plan for o in outs for name in (o.dst, mask_name(o.dst, mask_rel)) if name]
    check_report_path(json_path, "--json", trees=[("SRC", src_p), ("--masks", masks),
                                                  ("DST/masks", dst_p / MASKS_DIR if masks is not None else None)],
                      files=[("DST", dst_p)], root=dst_p, names={*names, MANIFEST_NAME, JOB_FILE, LOCK_FILE})
    with job_lock(dst_p, f"dec warp {src_p} {dst_p}"):
        return _warp_locked(src_p, dst_p, plan, scan_bad, names, settings, masks, box_map,
                            max(1, min(workers, len(plan))), overwrite, resume, on_start, on_progress)


def _check_job_options(overwrite: bool, resume: bool, workers: int) -> None:
    """`UsageError` for options no tree job accepts."""
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other", "use one of them")
    if workers < 1:
        raise UsageError(f"--workers must be >= 1; got {workers}", "for example --workers 4")
    check_workers(workers)


def _existing_outputs(dst_p: Path, names: Sequence[str]) -> list[str]:
    """The planned outputs already in DST; `UsageError` if any of them is not a dec job's recorded output."""
    existing = [name for name in names if (dst_p / name).exists()]
    if existing:
        check_own_outputs(dst_p, existing, recorded_outputs(dst_p, [MANIFEST_NAME], [JOB_FILE, UNWARP_JOB_FILE]))
    return existing


def _warp_locked(src_p: Path, dst_p: Path, plan: Plan,
                 scan_bad: list[dict[str, str]], names: list[str], settings: WarpSettings,
                 masks: str | os.PathLike | None, box_map: dict[str, Box] | None, workers: int, overwrite: bool,
                 resume: bool, on_start: Callable[[int], None] | None,
                 on_progress: Callable[[int], None] | None) -> JobSummary:
    """The part of `run_warp` that runs under DST's lock."""
    job = {"settings": asdict(settings), "masks": masks is not None, **({} if box_map is None else {"boxes": True})}
    job = json.loads(json.dumps(job))  # tuples -> lists, as stored on disk
    job_file = dst_p / JOB_FILE
    existing = _existing_outputs(dst_p, names)
    if resume:
        if job_file.exists():
            previous = json.loads(job_file.read_text(encoding="utf-8"))
            if {key: previous.get(key) for key in job} != job:
                raise UsageError(f"DST {dst_p} was made with different settings than these",
                                 "rerun with the original options, or use --overwrite")
    elif not overwrite:
        if (dst_p / MANIFEST_NAME).exists():  # written last: the job ran to its end (bad files or not)
            raise UsageError(f"DST {dst_p} already holds a completed warp job "
                             f"({len(existing)} of {len(names)} outputs written)",
                             "pass --overwrite to replace it, or --resume to retry only the missing outputs")
        if existing:
            raise UsageError(
                f"DST {dst_p} already holds outputs of a warp job ({len(existing)} of {len(names)} files exist)",
                "pass --resume to finish an interrupted job or --overwrite to replace them")
    if resume or overwrite:  # a killed run (SIGKILL) could not clean up after itself
        remove_stale_temporaries(dst_p, recursive=True)
    write_json({**job, "outputs": names}, job_file)
    summary = JobSummary("warp", str(src_p), str(dst_p), files=len(plan),
                         outputs=sum(len(outs) for _, outs, _ in plan), workers=workers, bad=list(scan_bad))
    ctx = JobContext(str(src_p), str(dst_p), None if masks is None else str(masks), settings, overwrite, resume,
                     box_map)
    records = _run(summary, warp_file, ctx, plan, on_start, on_progress)
    manifest = dst_p / MANIFEST_NAME
    write_manifest(manifest, records)
    summary.manifest = str(manifest)
    return summary


def run_unwarp(src: str | os.PathLike, dst: str | os.PathLike, manifest: str | os.PathLike | None = None, *,
               workers: int = 1, overwrite: bool = False, resume: bool = False, json_path: str | None = None,
               on_start: Callable[[int], None] | None = None,
               on_progress: Callable[[int], None] | None = None) -> JobSummary:
    """Invert every warp recorded in ``manifest`` (default ``SRC/manifest.jsonl``) into DST.

    Locking, ``workers`` and ``json_path`` as for `run_warp`.
    """
    _check_job_options(overwrite, resume, workers)
    src_p, dst_p = Path(src), Path(dst)
    check_tree_paths(src_p, dst_p)
    manifest_p = Path(manifest) if manifest is not None else src_p / MANIFEST_NAME
    found = read_manifest(manifest_p, roots=(src_p, dst_p), warps=True)
    names = [r["dst"] for r in found.records]
    check_report_path(json_path, "--json", trees=[("SRC", src_p)], files=[("--manifest", manifest_p), ("DST", dst_p)],
                      root=dst_p, names={*names, UNWARP_JOB_FILE, LOCK_FILE})
    with job_lock(dst_p, f"dec unwarp {src_p} {dst_p}"):
        return _unwarp_locked(src_p, dst_p, found, names, max(1, min(workers, len(found.records))), overwrite,
                              resume, on_start, on_progress)


def _unwarp_locked(src_p: Path, dst_p: Path, found: Manifest, names: list[str], workers: int,
                   overwrite: bool, resume: bool, on_start: Callable[[int], None] | None,
                   on_progress: Callable[[int], None] | None) -> JobSummary:
    """The part of `run_unwarp` that runs under DST's lock."""
    records = found.records
    existing = _existing_outputs(dst_p, names)
    if not overwrite and not resume:
        if existing:
            raise UsageError(f"DST {dst_p} already holds {len(existing)} of the {len(records)} outputs",
                             "pass --resume to finish or --overwrite to replace them")
    if resume or overwrite:
        remove_stale_temporaries(dst_p, recursive=True)
    write_json({"outputs": names}, dst_p / UNWARP_JOB_FILE)
    summary = JobSummary("unwarp", str(src_p), str(dst_p), files=len(records) + len(found.bad),
                         outputs=len(records), workers=workers, bad=[b.entry(found.path) for b in found.bad])
    ctx = JobContext(str(src_p), str(dst_p), None, WarpSettings(), overwrite, resume)
    _run(summary, unwarp_file, ctx, [(r,) for r in records], on_start, on_progress)
    return summary


def _run(summary: JobSummary, fn: Callable[..., dict[str, Any]], ctx: JobContext, tasks: Sequence[tuple],
         on_start: Callable[[int], None] | None, on_progress: Callable[[int], None] | None) -> list[dict[str, Any]]:
    """Run every task on ``summary.workers`` workers, add their counts to ``summary``; the manifest records."""
    if on_start:
        on_start(len(tasks))
    start = time.perf_counter()
    records = _collect(summary, run_tasks(fn, ctx, list(tasks), summary.workers, on_progress))
    summary.seconds = time.perf_counter() - start
    return records


def _collect(summary: JobSummary, results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each task's counts and bad entries to ``summary``; the tasks' manifest records, in task order."""
    records: list[dict[str, Any]] = []
    for r in results:
        records.extend(r["records"])
        summary.written += r["written"]
        summary.skipped_existing += r["skipped"]
        summary.masks += r["masks"]
        summary.bad.extend(r["bad"])
    return records
