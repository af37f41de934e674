"""``biomip batch``: run one method over many files on Dask (biomip.batch.run)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..core.errors import InputError


def _params(values: list[str]) -> dict:
    out = {}
    for v in values or []:
        key, eq, raw = v.partition("=")
        if not eq or not key.strip().isidentifier():
            raise InputError(f"--param: got {v!r}; expected NAME=VALUE, e.g. --param sigma=1.5")
        if key.strip() in out:
            raise InputError(f"--param: {key.strip()!r} given twice; give each parameter once")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw                   # a plain word: a string
    return out


def batch_cmd(
        method: str = typer.Argument(..., metavar="METHOD",
                                     help="A biomip function 'package.function' taking an image (or FIXED, MOVING "
                                          "for --pairs) and returning one: ops.gaussian_smooth, segment.threshold, "
                                          "segment.kmeans_segment, register.linear (--pairs), ..."),
        inputs: list[str] = typer.Argument(..., metavar="INPUTS...",
                                           help="Files or glob patterns (quote them: 'scans/*.nii.gz'; ** recurses)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: one result per input, manifest.json / .csv."),
        param: list[str] = typer.Option([], "--param", "-p", help="Method parameter NAME=VALUE (JSON value or a word); "
                                                                 "repeat it."),
        scheduler: str = typer.Option("local", help="'local' (a Dask LocalCluster, one worker process per core), "
                                                     "'local:N', 'sync' (in this process, one by one) or a scheduler "
                                                     "address tcp://HOST:8786 (SLURM / PBS via dask-jobqueue)."),
        suffix: str = typer.Option(".nii.gz", help="Output format by extension (.nii.gz, .tif, .ome.zarr, ...)."),
        pairs: bool = typer.Option(False, "--pairs", help="INPUTS are FIXED MOVING FIXED MOVING ...: one task per pair "
                                                          "(registration), outputs named after MOVING; two patterns "
                                                          "('fix*.nii.gz' 'mov*.nii.gz') pair their matches in sorted "
                                                          "order. Only the image result is written (e.g. the warped "
                                                          "moving image)."),
        same_grid: bool = typer.Option(False, "--same-grid", help="Refuse the batch (before any work) when the inputs "
                                                                  "are not all on one grid."),
        retries: int = typer.Option(0, help="Times an item that raised is run again on Dask (transient errors); an "
                                            "item whose worker died is always run again."),
        no_resume: bool = typer.Option(False, "--no-resume", help="Run every item, also those an earlier run in OUT "
                                                                  "finished.")):
    """Run METHOD on every input file, on a Dask cluster; resumable, failures reported per item.

    Each result is written atomically with its input's geometry to OUT/{input name}{suffix};
    OUT/manifest.json and manifest.csv list each item's status, time and error. Running the
    same command again skips items finished with the same method, parameters and input files,
    and re-runs failed or changed ones. Exit status: 0 all done, 2 bad input (nothing was
    run), 3 some items failed (listed). For a handful of small files --scheduler sync starts
    faster. Needs the scale extra: pip install 'biomip[scale]'."""
    from ..batch import run

    items: list = list(inputs)
    if pairs:
        if len(items) % 2:
            raise InputError(f"INPUTS: --pairs needs FIXED MOVING pairs; got {len(items)} paths")
        items = [(items[i], items[i + 1]) for i in range(0, len(items), 2)]
    report = run(method, items, out, _params(param), suffix=suffix, scheduler=scheduler, retries=retries,
                 resume=not no_resume, same_grid=same_grid)
    n = {s: sum(it["status"] == s for it in report.items) for s in ("done", "skipped", "failed")}
    typer.echo(f"{len(report.items)} items: {n['done']} done, {n['skipped']} skipped (done before), "
               f"{n['failed']} failed in {report.seconds:.1f} s; manifest: {report.manifest}")
    for it in report.failed[:10]:
        typer.echo(f"failed: {it['inputs'][-1]}: {it['error']}", err=True)
    if report.failed:
        raise typer.Exit(3)
