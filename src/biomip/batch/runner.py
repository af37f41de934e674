"""Batch runs: one task per input file (or per pair), on Dask or in this process.

Each item reads its input(s) with :func:`biomip.io.read`, calls the method, and writes the
result with the input's geometry through :func:`biomip.io.write` (atomic: a temporary file
moved into place, so a killed worker leaves no partial output).  ``manifest.json`` and
``manifest.csv`` in the output folder record, per item, its status, output, time, the
result's shape and dtype, and the error of a failed item; they are rewritten (atomically)
as items finish, so a batch killed half-way can be resumed: items whose output exists and
that the manifest records as done are skipped, failed ones run again.
"""

from __future__ import annotations

import csv
import glob
import importlib
import io as _stdio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import BiomipError, InputError

__all__ = ["run", "serial", "process_item", "resolve_method", "grid_of", "BatchReport"]

_SUFFIXES = (".nii.gz", ".nii", ".ome.tif", ".ome.tiff", ".tif", ".tiff", ".ome.zarr", ".npy", ".npz", ".png", ".jpg",
             ".jpeg", ".mha", ".nrrd", ".dcm")


def resolve_method(method) -> Callable:
    """The function a batch runs: a callable, or a biomip name ``"package.function"``.

    Parameters
    ----------
    method : callable or str
        A function ``f(image, **params)`` (``f(fixed, moving, **params)`` for pairs) that
        returns an Image or an array on the input's grid; or a name inside biomip such as
        ``"ops.gaussian_smooth"``, ``"segment.threshold"`` or ``"segment.kmeans_segment"``
        (a full ``"biomip.…"`` name works too).

    Returns
    -------
    callable

    Raises
    ------
    InputError
        For a name that does not resolve to a biomip function.

    Examples
    --------
    >>> resolve_method("ops.gaussian_smooth").__name__
    'gaussian_smooth'
    """
    if callable(method):
        return method
    if not isinstance(method, str) or "." not in method.strip("."):
        raise InputError(f"method: got {method!r}; expected a function or a name such as 'segment.threshold'")
    name = method[len("biomip."):] if method.startswith("biomip.") else method
    mod, _, fn = name.rpartition(".")
    try:
        module = importlib.import_module(f"biomip.{mod}")
        f = getattr(module, fn)
    except (ImportError, AttributeError):
        f = None
    if f is None or not callable(f) or fn.startswith("_"):
        raise InputError(f"method: {method!r} is not a biomip function; expected a name such as "
                         "'ops.gaussian_smooth' or 'segment.threshold' (see `biomip batch --help`)")
    return f


def _stem(path: Path) -> str:
    name = path.name
    for s in _SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def _is_pattern(x) -> bool:
    return any(c in str(x) for c in "*?[")


def _matches(pattern: str, exclude: Path | None) -> list:
    """The files a glob pattern matches (absolute, sorted), none of them under ``exclude``."""
    found = [Path(p).resolve() for p in sorted(glob.glob(str(pattern), recursive=True))]
    if exclude is not None:
        kept = [p for p in found if exclude != p and exclude not in p.parents]
        if found and not kept:
            raise InputError(f"out: every file the pattern {str(pattern)!r} matches lies in the output folder "
                             f"{str(exclude)!r}; choose another output folder")
        found = kept
    if not found:
        raise InputError(f"inputs: the pattern {str(pattern)!r} matches no file")
    return found


def _existing(x) -> Path:
    p = Path(x)
    if not p.exists():
        raise InputError(f"inputs: {str(x)!r} does not exist")
    return p.resolve()


def _expand(inputs, exclude: Path | None = None) -> list:
    """Items (absolute paths): glob patterns, paths, or (fixed, moving) pairs -- a pair of two
    patterns pairs their matches in sorted order.  Files under ``exclude`` (the output folder)
    never match a pattern."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    items: list = []
    for x in inputs:
        if isinstance(x, (tuple, list)):
            if len(x) != 2:
                raise InputError(f"inputs: got the item {x!r}; a pair is (fixed, moving)")
            if _is_pattern(x[0]) or _is_pattern(x[1]):
                if not (_is_pattern(x[0]) and _is_pattern(x[1])):
                    raise InputError(f"inputs: the pair {tuple(map(str, x))!r} mixes a pattern and a path; give two "
                                     "patterns (their matches are paired in sorted order) or two paths")
                a, b = _matches(x[0], exclude), _matches(x[1], exclude)
                if len(a) != len(b):
                    raise InputError(f"inputs: {str(x[0])!r} matches {len(a)} files and {str(x[1])!r} {len(b)}; "
                                     "paired patterns must match as many files")
                items.extend(zip(a, b))
            else:
                items.append((_existing(x[0]), _existing(x[1])))
            continue
        if _is_pattern(x):
            items.extend(_matches(x, exclude))
        else:
            items.append(_existing(x))
    if not items:
        raise InputError("inputs: got no item; expected files, a glob pattern or (fixed, moving) pairs")
    return items


def _fingerprint(method, params: dict, suffix: str, inputs) -> str:
    """What an output depends on: the method, its parameters, the format, each input's size and time."""
    import hashlib
    import json

    name = method if isinstance(method, str) else f"{getattr(method, '__module__', '')}.{getattr(method, '__qualname__', repr(method))}"
    stamp = []
    for p in inputs:
        st = Path(p).stat()
        stamp.append([str(p), st.st_size, st.st_mtime_ns])
    blob = json.dumps([name, {k: repr(v) for k, v in sorted(params.items())}, suffix, stamp], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_call(f, params: dict, n_images: int) -> None:
    """Refuse parameters the method does not take, or a method that needs other images, before any work."""
    import inspect

    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        return                                                # a builtin without a signature: trust it
    try:
        sig.bind(*([object()] * n_images), **params)
    except TypeError as exc:
        what = "a (fixed, moving) pair" if n_images == 2 else "one image"
        raise InputError(f"params: {exc} -- the method is called with {what} and the parameters "
                         f"{sorted(params)}; its signature is {f.__name__}{sig}") from None


def _as_output(result, ref):
    """The method's result as an Image on the reference grid (an Image stays as it is)."""
    from ..core.image import Image

    if isinstance(result, Image):
        return result
    for attr in ("warped", "moved", "image", "labels"):       # registration / segmentation result objects
        r = getattr(result, attr, None)
        if isinstance(r, Image) or isinstance(r, np.ndarray):
            result = r
            break
    if hasattr(result, "detach"):
        result = result.detach().cpu().numpy()
    if isinstance(result, Image):
        return result
    if isinstance(result, np.ndarray):
        if result.shape[-ref.sdim:] != ref.spatial_shape:
            raise InputError(f"method: returned an array of shape {result.shape}; expected the input's grid "
                             f"{ref.spatial_shape} (return an Image for another grid)")
        return ref.with_array(result, axes=None if result.ndim == ref.array.ndim else
                              "c" * (result.ndim - ref.sdim) + ref.axes[-ref.sdim:])
    raise InputError(f"method: returned {type(result).__name__}; expected an Image or an array")


def grid_of(path) -> tuple:
    """The grid of an image file -- (spatial shape zyx, spacing, origin, direction) -- cheaply.

    NIfTI and OME-Zarr headers are read without the voxels; other formats are read whole.

    Parameters
    ----------
    path : str or pathlib.Path
        An image file biomip reads.

    Returns
    -------
    tuple
        ``(shape, spacing, origin, direction)``, numpy arrays except the shape.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from biomip import io
    >>> from biomip.core.image import Image
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.nii.gz"
    >>> _ = io.write(Image(np.zeros((4, 5, 6), np.float32), spacing=(0.5, 0.5, 2.0)), p)
    >>> grid_of(p)[:2]
    ((4, 5, 6), array([0.5, 0.5, 2. ]))
    """
    from .. import io as bio
    from ..io.sniff import sniff

    fmt = sniff(path) if Path(path).is_file() else None
    if str(path).endswith(".ome.zarr"):
        from ..io.omezarr import open_omezarr

        img = open_omezarr(path)[2]
    elif fmt == "nifti":
        import nibabel as nib

        from ..core.image import Image

        hdr = nib.load(str(path))
        shape = tuple(int(n) for n in hdr.shape[:3])
        stand_in = Image(np.broadcast_to(np.zeros((), np.uint8), shape[::-1]))
        ras = np.asarray(hdr.affine, dtype=float)                     # RAS -> LPS: flip x and y
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
        sp = np.linalg.norm(lps[:3, :3], axis=0)
        return (tuple(stand_in.shape), sp, lps[:3, 3], lps[:3, :3] / sp)
    else:
        img = bio.read(path, progress=False)
    return (tuple(img.spatial_shape), np.asarray(img.spacing, float), np.asarray(img.origin, float),
            np.asarray(img.direction, float))


def _check_one_grid(plan: list) -> None:
    first = None
    for p in plan:
        for src in p["inputs"]:
            g = grid_of(src)
            if first is None:
                first = (src, g)
                continue
            s0, g0 = first
            same = g[0] == g0[0] and all(np.allclose(a, b, atol=1e-4) for a, b in zip(g[1:], g0[1:]))
            if not same:
                raise InputError(f"inputs: {str(src)!r} is on another grid than {str(s0)!r} (shape {g[0]} vs "
                                 f"{g0[0]}, spacing {np.round(g[1], 4).tolist()} vs {np.round(g0[1], 4).tolist()}"
                                 "); same_grid=True needs one grid -- resample first")


def process_item(method, inputs: tuple, output: str, params: dict) -> dict:
    """Run one item: read, call, write atomically.  Raises on failure (Dask retries it).

    Parameters
    ----------
    method : callable or str
        As for :func:`run`.
    inputs : tuple of str
        One path, or (fixed, moving).
    output : str
        The output file.
    params : dict
        Keyword arguments of the method.

    Returns
    -------
    dict
        ``seconds``, ``shape``, ``dtype`` of the result.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from biomip import io
    >>> from biomip.core.image import Image
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = io.write(Image(np.ones((8, 8), np.float32)), d / "a.nii.gz")
    >>> process_item("ops.gaussian_smooth", (str(d / "a.nii.gz"),), str(d / "b.nii.gz"), {"sigma": 1.0})["shape"]
    [8, 8]
    """
    from .. import io as bio

    t0 = time.perf_counter()
    f = resolve_method(method)
    images = [bio.read(p, progress=False) for p in inputs]
    result = _as_output(f(*images, **params), images[-1])
    bio.write(result, output, overwrite=True)
    return {"seconds": time.perf_counter() - t0, "shape": list(result.shape), "dtype": str(result.array.dtype)}


@dataclass
class BatchReport:
    """What a batch did.

    Parameters
    ----------
    items : list of dict
        Per item: ``inputs``, ``output``, ``status`` (``"done"``, ``"skipped"`` -- done by
        an earlier run --, ``"failed"``), ``seconds``, ``shape``, ``dtype``, ``error``.
    seconds : float
        Wall time of the batch.
    manifest : pathlib.Path
        ``manifest.json`` (``manifest.csv`` beside it).
    """

    items: list
    seconds: float
    manifest: Path

    @property
    def failed(self) -> list:
        """The failed items."""
        return [it for it in self.items if it["status"] == "failed"]

    def __repr__(self) -> str:
        n = {s: sum(it["status"] == s for it in self.items) for s in ("done", "skipped", "failed")}
        return (f"BatchReport({len(self.items)} items: {n['done']} done, {n['skipped']} skipped, "
                f"{n['failed']} failed, {self.seconds:.1f} s; {self.manifest})")


def _write_manifest(path: Path, header: dict, items: list) -> None:
    from ..core.atomic import atomic_path, write_json

    write_json({**header, "items": items}, path)
    buf = _stdio.StringIO()
    w = csv.writer(buf)
    w.writerow(["input", "output", "status", "seconds", "shape", "dtype", "error"])
    for it in items:
        w.writerow([";".join(it["inputs"]), it["output"], it["status"],
                    "" if it.get("seconds") is None else f"{it['seconds']:.3f}",
                    "x".join(str(n) for n in it.get("shape") or []), it.get("dtype") or "", it.get("error") or ""])
    with atomic_path(path.with_suffix(".csv")) as tmp:
        tmp.write_text(buf.getvalue())


def run(method, inputs, out, params: dict | None = None, *, suffix: str = ".nii.gz", client=None,
        scheduler: str | None = "local", retries: int = 0, resume: bool = True, same_grid: bool = False,
        progress=None) -> BatchReport:
    """Run ``method`` on every input file and write one result per input into ``out``.

    Parameters
    ----------
    method : callable or str
        ``f(image, **params) -> Image or array`` (``f(fixed, moving, **params)`` for pairs),
        or a biomip name such as ``"ops.gaussian_smooth"`` / ``"segment.threshold"`` (see
        :func:`resolve_method`).  A callable must be importable or picklable by the workers.
    inputs : str, path or sequence
        A glob pattern (``"scans/*.nii.gz"``, ``**`` recursive), files, or ``(fixed, moving)``
        pairs (registration: one task per pair, the output named after the moving image).
    out : str or path
        Output folder (created); results are ``{input stem}{suffix}``.
    params : dict, optional
        Keyword arguments of the method (the same for every item).
    suffix : str, optional
        Output format by extension (``.nii.gz``, ``.tif``, ``.ome.zarr``, ...).
    client : distributed.Client, optional
        Run on this client (its cluster); else one is made from ``scheduler`` and closed
        at the end.
    scheduler : str or None, optional
        ``"local"`` (default: a LocalCluster, one worker process per core), ``"local:N"``,
        ``"sync"`` (no Dask: in this process, one item after the other) or an address.
    retries : int, optional
        Times an item that raised is run again on Dask (transient errors, e.g. a network
        file system; default 0).  An item whose worker died is always run again elsewhere.
    resume : bool, optional
        Skip items that an earlier run in ``out`` finished with the same method,
        parameters, suffix and input files (size and modification time): their output
        exists and the manifest records them done with the same fingerprint; failed,
        missing and changed ones run.
    same_grid : bool, optional
        The method needs every input on one grid (shape, spacing, origin, direction):
        check the headers first and refuse the batch before any work if one differs.
    progress : bool or None, optional
        Progress bar on stderr (default: when stderr is a terminal).

    Returns
    -------
    BatchReport
        Per-item status and the manifest path.  A failed item does not stop the batch.

    Raises
    ------
    InputError
        Before any work (nothing is written): no inputs, a pattern matching nothing, a
        missing file, an unknown method, parameters the method does not take (or a method
        that needs a pair), an output format biomip does not write, an output that would
        replace an input, two inputs with the same output name, inputs on different grids
        with ``same_grid``, a scheduler that cannot be started or reached.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from biomip import io
    >>> from biomip.core.image import Image
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for k in range(3):
    ...     _ = io.write(Image(np.full((8, 8), k, np.float32)), d / f"in{k}.nii.gz")
    >>> report = run("ops.gaussian_smooth", str(d / "in*.nii.gz"), d / "out", {"sigma": 1.0},
    ...              scheduler="sync", progress=False)
    >>> [it["status"] for it in report.items], sorted(p.name for p in (d / "out").glob("*.nii.gz"))
    (['done', 'done', 'done'], ['in0.nii.gz', 'in1.nii.gz', 'in2.nii.gz'])
    """
    from .. import io as bio
    from ..core.atomic import recover
    from ..core.progress import progress_bar

    t0 = time.perf_counter()
    params = dict(params or {})
    f = resolve_method(method)                               # fail before any work
    if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
        raise InputError(f"retries: got {retries!r}; expected a non-negative integer")
    if not isinstance(suffix, str) or not suffix.startswith("."):
        raise InputError(f"suffix: got {suffix!r}; expected a file extension such as '.nii.gz'")
    try:
        bio.output_format(f"x{suffix}", path_name="suffix")  # a format biomip writes
    except BiomipError:
        raise InputError(f"suffix: got {suffix!r}; expected an output format biomip writes (.nii.gz, .nii, .tif, "
                         ".ome.tif, .ome.zarr, .png, .jpg, .npy, .npz, .dcm)") from None
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {str(out)!r} is a file; expected a folder")
    items = _expand(inputs, exclude=out)
    names: dict = {}
    plan = []
    all_inputs = {p for it in items for p in (it if isinstance(it, tuple) else (it,))}
    for it in items:
        ins = it if isinstance(it, tuple) else (it,)
        dest = out / f"{_stem(ins[-1])}{suffix}"
        if dest in all_inputs:
            raise InputError(f"out: the result of {str(ins[-1])!r} would replace the input {str(dest)!r}; "
                             "choose another output folder (or suffix)")
        if dest in names:
            raise InputError(f"inputs: {str(names[dest])!r} and {str(ins[-1])!r} would both write {dest.name!r}; "
                             "rename one or run them in separate batches")
        names[dest] = ins[-1]
        plan.append({"inputs": [str(p) for p in ins], "output": str(dest),
                     "fingerprint": _fingerprint(method, params, suffix, ins)})
    _check_call(f, params, len(plan[0]["inputs"]))
    if same_grid:
        _check_one_grid(plan)
    own = False
    if client is None and scheduler != "sync":
        from .cluster import make_client

        client, own = make_client(scheduler), True           # a bad scheduler fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.json"
    done_before: dict = {}
    if resume and manifest.exists():
        import json

        try:
            old = json.loads(manifest.read_text())
            done_before = {it["output"]: it for it in old.get("items", []) if it.get("status") in ("done", "skipped")}
        except (ValueError, KeyError, TypeError, AttributeError):
            done_before = {}                                  # a damaged manifest: run everything again
    header = {"method": method if isinstance(method, str) else getattr(method, "__qualname__", repr(method)),
              "params": {k: (v if isinstance(v, (int, float, str, bool, list, type(None))) else repr(v))
                         for k, v in params.items()},
              "suffix": suffix}
    records = []
    todo = []
    for p in plan:
        recover(p["output"])                                  # a partial write of a killed run goes away
        prev = done_before.get(p["output"])
        if prev is not None and prev.get("fingerprint") == p["fingerprint"] and Path(p["output"]).exists():
            records.append({**p, "status": "skipped", "seconds": prev.get("seconds"), "shape": prev.get("shape"),
                            "dtype": prev.get("dtype"), "error": None})
        else:
            rec = {**p, "status": "pending", "seconds": None, "shape": None, "dtype": None, "error": None}
            records.append(rec)
            todo.append(rec)
    _write_manifest(manifest, header, records)

    def finish(rec, info=None, exc=None):
        if exc is None:
            rec.update(status="done", **info)
        else:
            msg = str(exc) if isinstance(exc, BiomipError) else f"{type(exc).__name__}: {exc}"
            rec.update(status="failed", error=msg[:2000])

    last = time.perf_counter()
    try:
        with progress_bar(f"batch {header['method']}", total=len(todo), progress=progress) as bar:
            if client is None:
                for rec in todo:
                    try:
                        finish(rec, process_item(method, tuple(rec["inputs"]), rec["output"], params))
                    except Exception as exc:                   # reported per item; the batch goes on
                        finish(rec, exc=exc)
                    bar.advance()
                    if time.perf_counter() - last > 2.0:
                        _write_manifest(manifest, header, records)
                        last = time.perf_counter()
            elif todo:
                from distributed import as_completed

                futures = {client.submit(process_item, method, tuple(rec["inputs"]), rec["output"], params,
                                         retries=retries, pure=False, key=f"biomip-batch-{i}-{time.time_ns()}"): rec
                           for i, rec in enumerate(todo)}
                for fut in as_completed(futures, loop=client.loop):
                    rec = futures[fut]
                    try:
                        finish(rec, fut.result())
                    except Exception as exc:
                        finish(rec, exc=exc)
                    bar.advance()
                    if time.perf_counter() - last > 2.0:
                        _write_manifest(manifest, header, records)
                        last = time.perf_counter()
    finally:
        _write_manifest(manifest, header, records)
        if own and client is not None:
            cluster = getattr(client, "cluster", None)         # None for a client of a scheduler address
            client.close()
            if cluster is not None:
                cluster.close()
    return BatchReport(records, time.perf_counter() - t0, manifest)


def serial(method, inputs: Sequence, params: dict | None = None) -> list:
    """The same calls as :func:`run`, in memory and one after the other (a reference for tests).

    Parameters
    ----------
    method : callable or str
        As for :func:`run`.
    inputs : sequence of path or (fixed, moving)
        The items.
    params : dict, optional
        Keyword arguments of the method.

    Returns
    -------
    list of Image

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from biomip import io
    >>> from biomip.core.image import Image
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.nii.gz"
    >>> _ = io.write(Image(np.ones((4, 4), np.float32)), p)
    >>> serial("ops.gaussian_smooth", [p], {"sigma": 1.0})[0].shape
    (4, 4)
    """
    from .. import io as bio

    f = resolve_method(method)
    out = []
    for it in _expand(list(inputs)):
        images = [bio.read(p, progress=False) for p in (it if isinstance(it, tuple) else (it,))]
        out.append(_as_output(f(*images, **dict(params or {})), images[-1]))
    return out
