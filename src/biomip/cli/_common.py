"""Helpers every ``biomip`` subcommand shares: where the report and preview of an
output go, and how points are read from the command line or a file."""

from __future__ import annotations

import csv
import functools
import re
from pathlib import Path

import numpy as np
import typer
from typer.core import TyperGroup

from ..core.errors import BiomipError, InputError

MULTI_SUFFIXES = (".nii.gz", ".ome.tif", ".ome.tiff", ".ome.zarr")


def sibling(out: Path, suffix: str) -> Path:
    """The path next to ``out`` with its (possibly double) extension replaced by ``suffix``:
    ``scan.nii.gz`` + ``.report.json`` -> ``scan.report.json``."""
    out = Path(out)
    name = out.name
    for ext in MULTI_SUFFIXES:
        if name.endswith(ext):
            return out.with_name(name[: -len(ext)] + suffix)
    return out.with_name(out.stem + suffix)


def run_mode(quick: bool, tiny: bool, full: bool, device=None, gpu_note: str | None = None,
             flags: str = "--quick, --tiny, --full") -> str:
    """The mode of a ``biomip run`` / study command: ``"quick"`` (the default), ``"tiny"`` or
    ``"full"``; more than one flag is refused.  With ``--full`` on a machine without CUDA,
    ``gpu_note`` (what the full mode is sized for and how long it takes on a CPU) is printed
    as a note.

    Parameters
    ----------
    quick : bool
        ``--quick``.
    tiny : bool
        ``--tiny``.
    full : bool
        ``--full``.
    device : str or None, optional
        The ``--device`` the run will use (default: biomip's default device).
    gpu_note : str or None, optional
        The note's text after ``--full is sized for a GPU``.
    flags : str, optional
        The flags as the command's help lists them (for the error message).

    Returns
    -------
    str
        ``"quick"``, ``"tiny"`` or ``"full"``.

    Raises
    ------
    InputError
        More than one mode flag.

    Examples
    --------
    >>> run_mode(False, True, False)
    'tiny'
    """
    if sum([bool(quick), bool(tiny), bool(full)]) > 1:
        raise InputError(f"{flags}: got more than one; expected at most one mode")
    if full and gpu_note:
        from ..core.config import get_device

        if get_device(device).type != "cuda":
            import typer

            typer.echo(f"biomip: note: --full is sized for a GPU {gpu_note}", err=True)
    return "tiny" if tiny else "full" if full else "quick"


def parse_points(values, sdim: int, option: str = "--seed") -> np.ndarray:
    """Points ``(n, sdim)`` from option values such as ``"120,80"`` (``;`` also separates)."""
    pts = []
    for v in values:
        try:
            p = [float(t) for t in v.replace(";", ",").split(",")]
        except ValueError:
            raise InputError(f"{option}: got {v!r}; expected comma-separated numbers, e.g. 120,80") from None
        if len(p) != sdim:
            raise InputError(f"{option}: got {v!r} ({len(p)} numbers); expected {sdim} (x,y[,z])")
        pts.append(p)
    return np.asarray(pts)


def read_points_file(path, sdim: int, option: str) -> np.ndarray:
    """Points ``(n, sdim)`` in mm from a CSV / whitespace text file (a header row is skipped)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{option}: {path} does not exist")
    rows = []
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = [t for t in line.replace(",", " ").replace(";", " ").split() if t]
        if not parts:
            continue
        try:
            rows.append([float(t) for t in parts])
        except ValueError:
            if rows:
                raise InputError(f"{option}: {path}: non-numeric row {line!r}") from None
    pts = np.asarray(rows, dtype=float)
    if pts.ndim != 2 or pts.shape[0] == 0 or pts.shape[1] != sdim or not np.all(np.isfinite(pts)):
        raise InputError(f"{option}: {path}: expected rows of {sdim} finite coordinates (mm), got shape {pts.shape}")
    return pts


class Outputs:
    """The files one command writes, checked before the work starts and removed again if
    the command fails after writing some of them.

    :meth:`add` checks, for each output: the format is one biomip writes (and holds the
    image: PNG / JPEG take one 2-D integer image), its folder exists and is writable, it is
    not one of the command's inputs, and it does not exist yet unless ``--overwrite`` was
    given.  Used as a context manager, a failure inside the ``with`` block deletes every
    output that did not exist before the command (nothing is left half-done); outputs that
    existed and were replaced with ``--overwrite`` cannot be restored.

    Parameters
    ----------
    overwrite : bool, optional
        Whether existing outputs may be replaced (the CLI's ``--overwrite``).
    inputs : iterable of path, optional
        The command's input files / folders: an output may not be one of them.

    Examples
    --------
    >>> with Outputs(overwrite=False, inputs=["in.nii.gz"]) as outs:  # doctest: +SKIP
    ...     out = outs.add("out.nii.gz", "--out")
    ...     write(image, out)
    """

    def __init__(self, overwrite: bool = False, inputs=()):
        self.overwrite = bool(overwrite)
        self.inputs = [Path(p) for p in inputs if p is not None]
        self._created: list[Path] = []
        self._late_checks: list[tuple[Path, str, str]] = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.remove_created()
        return False

    def remove_created(self) -> list[Path]:
        """Delete the outputs that did not exist before the command; returns them."""
        import shutil

        gone = []
        for p in self._created:
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
                else:
                    continue
                gone.append(p)
            except OSError:
                pass
        return gone

    def add(self, path, option: str, *, format: str | None = None, format_option: str | None = None,
            sdim: int | None = None, dtype_kind: str | None = None, siblings=(), image: bool = True) -> Path:
        """Check one output (and its sibling files such as ``.report.json``) before the work.

        Parameters
        ----------
        path : str or pathlib.Path
            The output file or folder.
        option : str
            Its name on the command line (``"--out"``, ``"DST"``), for messages.
        format : str or None, optional
            An explicit format (``--format``); default from the suffix.
        format_option : str or None, optional
            The CLI name of the format option, for messages (None: the command has none).
        sdim : int or None, optional
            Spatial dimensions of the image that will be written (2 or 3), when known.
        dtype_kind : str or None, optional
            ``"f"`` when floating-point values will be written (PNG / JPEG refuse them).
        siblings : iterable of str, optional
            Suffixes of files written next to ``path`` (``".report.json"``, ``".preview.png"``).
        image : bool, optional
            ``False`` for an output that is not an image (a transform, a model folder): its
            format is not checked.

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        import os
        import tempfile

        from ..io import output_format

        path = Path(path)
        fmt = output_format(path, format, format_name=format_option or "", path_name=option) if image else None
        if fmt in ("png", "jpeg"):
            _check_raster(path, option, fmt, sdim, dtype_kind)
            self._late_checks.append((path, option, fmt))
        if fmt == "dicom" and path.suffix.lower() in (".dcm", ".ima"):       # one DICOM file: one slice
            self._late_checks.append((path, option, fmt))
        for p in self.inputs:
            if _same_path(p, path):
                raise InputError(f"{option}: {str(path)!r} is also an input of this command; write to another "
                                 "file (the input would be replaced while it is read)")
            if _inside(p, path):
                raise InputError(f"{option}: the folder {str(path)!r} holds the input {str(p)!r}; write to another "
                                 "folder (replacing it would delete the input)")
        if len(path.name.encode("utf-8", "surrogateescape")) > 255:
            raise InputError(f"{option}: the file name is {len(path.name.encode('utf-8', 'surrogateescape'))} bytes "
                             "long; expected at most 255 (the file system's limit)")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.exists():
            raise InputError(f"{option}: the folder {str(parent)!r} of {str(path)!r} does not exist; create it first")
        if not parent.is_dir():
            raise InputError(f"{option}: {str(parent)!r} is not a folder")
        try:
            fd, probe = tempfile.mkstemp(dir=parent, prefix=".biomip-write-check-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise InputError(f"{option}: cannot write in the folder {str(parent)!r} "
                             f"({exc.strerror or exc}); choose another output") from None
        targets = [path] + [sibling(path, s) for s in siblings]
        for t in targets[1:]:
            for p in self.inputs:
                if _same_path(p, t):
                    raise InputError(f"{option}: the command would write {str(t)!r} next to {str(path)!r}, and it "
                                     "is also an input of this command; choose another output name")
        for t in targets:
            if (t.exists() or t.is_symlink()) and not self.overwrite:
                raise InputError(f"{option}: {str(t)!r} exists; pass --overwrite to replace it (or choose another name)")
            if t.is_dir() and not t.is_symlink() and image:
                foreign = _not_image_files(t)
                if not foreign:
                    foreign = _other_series(t)
                if foreign:
                    raise InputError(f"{option}: the folder {str(t)!r} holds files that are not part of an image "
                                     f"(e.g. {foreign!r}); --overwrite replaces only a DICOM series or OME-Zarr "
                                     "folder, so choose another name")
        for t in targets:
            if not (t.exists() or t.is_symlink()) and t not in self._created:
                self._created.append(t)
        return path


    def known(self, sdim: int | None = None, dtype_kind: str | None = None, slices: int | None = None) -> None:
        """Check the PNG / JPEG / single-file DICOM outputs again once the input is read
        and the written image's dimensions (or value kind) are known -- before the work,
        not when the result is written.

        Parameters
        ----------
        sdim : int or None, optional
            Spatial dimensions of the image that will be written.
        dtype_kind : str or None, optional
            ``"f"`` when floating-point values will be written.
        slices : int or None, optional
            Slices of a 3-D image that will be written.

        Raises
        ------
        InputError
            When a PNG / JPEG output cannot hold that image (a 3-D volume, floats), or a
            ``.dcm`` file would have to hold several slices.
        """
        for path, option, fmt in self._late_checks:
            if fmt == "dicom":
                if sdim == 3 and slices is not None and slices > 1:
                    raise InputError(f"{option}: a .dcm file holds one slice; this command writes a volume of "
                                     f"{slices} slices to {str(path)!r}: write .nii.gz (a DICOM series folder: "
                                     "then `biomip convert VOLUME.nii.gz FOLDER --format dicom`)")
                continue
            _check_raster(path, option, fmt, sdim, dtype_kind)


def _check_raster(path: Path, option: str, fmt: str, sdim, dtype_kind) -> None:
    """PNG / JPEG hold one 2-D integer image: refuse a 3-D or floating-point result."""
    if sdim == 3:
        raise InputError(f"{option}: {fmt.upper()} holds one 2-D image; this command writes a 3-D volume "
                         f"to {str(path)!r}: use .nii.gz, .ome.tif, .ome.zarr or .npz")
    if dtype_kind == "f":
        raise InputError(f"{option}: {fmt.upper()} holds 8 / 16-bit integers; this command writes "
                         f"floating-point values to {str(path)!r}: use .nii.gz, .tif or .npz")


def _inside(a: Path, folder: Path) -> bool:
    """Whether ``a`` lies inside the existing folder ``folder``."""
    try:
        return folder.is_dir() and Path(a).resolve().is_relative_to(folder.resolve()) and \
            Path(a).resolve() != folder.resolve()
    except OSError:
        return False


_ZARR_FILE = re.compile(r"^(\.z(array|attrs|group|metadata)|zarr\.json|\d+([._]\d+)*|c)$")


def _not_image_files(folder: Path, limit: int = 100000) -> str | None:
    """The first file under ``folder`` that is neither DICOM (``DICM`` marker) nor part of
    an OME-Zarr store (``.zarray`` / ``.zattrs`` / ``.zgroup`` / ``zarr.json`` / chunks of a
    folder that has them), relative to ``folder``; None when every file is."""
    import os

    zarr_root = any((folder / n).exists() for n in (".zattrs", ".zgroup", "zarr.json"))
    n = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            n += 1
            if n > limit:
                return None
            f = Path(root) / name
            if zarr_root:
                if not _ZARR_FILE.match(name):       # metadata or chunk keys only (v2 "0.1.2", v3 c/0/1/2)
                    return str(f.relative_to(folder))
                continue
            try:
                with open(f, "rb") as fh:
                    head = fh.read(132)
            except OSError:
                return str(f.relative_to(folder))
            if head[128:132] != b"DICM":
                return str(f.relative_to(folder))
    return None


def _other_series(folder: Path) -> str | None:
    """A description of the second DICOM series in ``folder`` (replacing the folder would
    delete it too), or None when it holds one series or none."""
    if any((folder / n).exists() for n in (".zattrs", ".zgroup", "zarr.json")):
        return None
    try:
        from ..io import list_series

        items = list_series(folder)
    except BiomipError:
        return None
    if len(items) > 1:
        return f"{len(items)} DICOM series, e.g. [{items[1].index}] {items[1].modality} '{items[1].description}'"
    return None


def _same_path(a: Path, b: Path) -> bool:
    """Whether two paths name the same file or folder (also through links, or when ``b``
    does not exist yet but resolves to ``a``)."""
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def cli_words(**names: str):
    """Decorator: messages of the errors a command raises name its CLI options, not the
    Python arguments of the functions underneath.

    ``@cli_words(image="IMAGE", classes="--k")`` rewrites ``classes: got 70 ...`` to
    ``--k: got 70 ...`` and ``pass format=`` to ``pass --format``; the error keeps its type
    (so its exit status).

    Parameters
    ----------
    **names : str
        Python argument name -> the CLI option or argument that sets it.

    Returns
    -------
    callable
        The decorator (the command's signature is kept, for typer).

    Examples
    --------
    >>> @cli_words(classes="--k")
    ... def cmd():
    ...     raise InputError("classes: got 0; expected >= 2")
    >>> try:
    ...     cmd()
    ... except InputError as e:
    ...     print(e)
    --k: got 0; expected >= 2
    """
    def deco(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except BiomipError as exc:
                msg = str(exc)
                new = translate_message(msg, names)
                if new != msg:
                    exc.args = (new,) + tuple(exc.args[1:])
                    if isinstance(exc, ImportError):      # ImportError's str() is its .msg, not its args
                        exc.msg = new
                raise
        return inner
    return deco


class named:
    """Context manager: errors raised inside name ``names``' CLI words (see :func:`cli_words`),
    e.g. ``with named(path="FIXED"): f = read(fixed)`` so a damaged file is blamed on the
    argument that named it.

    Parameters
    ----------
    **names : str
        Python argument name -> CLI option or argument.
    """

    def __init__(self, **names: str):
        self.names = names

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and isinstance(exc, BiomipError):
            msg = str(exc)
            new = translate_message(msg, self.names)
            if new != msg:
                exc.args = (new,) + tuple(exc.args[1:])
        return False


def check_label_input(img, option: str):
    """A label image read from the command line: integer ids >= 0 (bool or integer dtype,
    or floats that are all whole numbers, as NIfTI often stores masks), else an
    InputError naming ``option`` -- an intensity image given as labels is refused.

    Parameters
    ----------
    img : Image
        The image read from the file.
    option : str
        Its CLI option, for messages (``"--truth"``).

    Returns
    -------
    Image
        ``img``, with whole-number floats as int32.

    Examples
    --------
    >>> from biomip import Image
    >>> check_label_input(Image(np.array([[0.0, 2.0], [1.0, 1.0]])), "--truth").array.dtype
    dtype('int32')
    """
    from ..core.arrays import integer_labels

    a = integer_labels(img.numpy(), option, "a label image of integer ids >= 0 (0 = background)")
    if a.dtype != img.numpy().dtype:
        if a.size and a.max() > np.iinfo(np.int32).max:
            raise InputError(f"{option}: got label {a.max()}; expected ids below 2^31")
        img = img.with_array(a.astype(np.int32))
    return img


def read_input(path, option: str, **kwargs):
    """:func:`biomip.io.read` with errors naming the CLI argument ``option`` (``"FIXED"``)."""
    from ..io import read

    with named(path=option, series="--series", level="--level"):
        return read(path, **kwargs)


def translate_message(msg: str, names: dict) -> str:
    """``msg`` with the argument names at its head (``a, b: ...``) and ``name=`` in its text
    replaced by the CLI names of ``names`` (see :func:`cli_words`)."""
    m = re.match(r"^([A-Za-z_][\w]*(?:, [A-Za-z_][\w]*)*): ", msg)
    if m:
        head = [names.get(a, a) for a in m.group(1).split(", ")]
        msg = ", ".join(head) + ": " + msg[m.end():]
    for py, cli in names.items():
        if cli.startswith("--"):
            msg = re.sub(rf"(?<![\w.-]){re.escape(py)}=True\b", cli, msg)
            msg = re.sub(rf"(?<![\w.-]){re.escape(py)}=(?=[\s,;.)]|$)", cli, msg)
            msg = re.sub(rf"(?<![\w.-]){re.escape(py)}=", cli + " ", msg)
    msg = re.sub(r"\(Python: [^;()]*; CLI: ([^()]*)\)", r"(\1)", msg)        # keep the CLI half of a hint

    def _cli_hint(mt):
        return "" if mt.group(1) in msg[:mt.start()] else f" ({mt.group(1)})"
    return re.sub(r" \(CLI: ([^()]*)\)", _cli_hint, msg)


class FullHelpGroup(TyperGroup):
    """A command group whose command list shows each command's whole first paragraph,
    wrapped, instead of click's one line cut off with "..."."""

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            text = cmd.short_help or (cmd.help or "").split("\n\n")[0]
            rows.append((name, " ".join(text.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def same_grid(a, b) -> bool:
    """Whether two images lie on the same voxel grid (spacing, origin, direction)."""
    return bool(np.allclose(a.spacing, b.spacing, rtol=1e-4, atol=1e-6) and
                np.allclose(a.origin, b.origin, atol=1e-3) and np.allclose(a.direction, b.direction, atol=1e-4))


def warn_other_grid(ref, img, option: str = "--truth", name: str = "IMAGE") -> None:
    """Warn (one CLI line) when a reference of the right shape lies on another grid."""
    if not same_grid(ref, img):
        import warnings

        warnings.warn(f"{option}: its grid (spacing {ref.spacing}, origin {ref.origin}) differs from {name}'s "
                      f"(spacing {img.spacing}, origin {img.origin}); it is scored voxel by voxel, distances in "
                      f"{name}'s spacing", stacklevel=3)


def fmt_number(v) -> str:
    """A figure as the CLI prints it (floats to 4 significant digits)."""
    if isinstance(v, float) and not isinstance(v, bool):
        return f"{v:.4g}"
    return str(v)


def run_study(name: str, studies, run, out: Path, mode: str, seed: int, progress, overwrite: bool) -> dict:
    """Run one study of a study collection (``biomip learn study``, ``biomip vision study``) and print it.

    Checks ``name`` against ``studies`` and the ``--out`` folder (a folder, empty unless
    ``overwrite``), calls ``run(name, out=, mode=, seed=, progress=)`` and prints every
    method's figures, the targets and the warnings of the report it returns.
    """
    if name not in studies:
        raise InputError(f"NAME: got {name!r}; expected one of {', '.join(studies)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {str(out)!r} is a file; expected a folder for report.json and preview.png")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out: the folder {str(out)!r} is not empty; pass --overwrite to replace report.json "
                         "and preview.png there, or choose a new folder")
    if not out.exists():
        Outputs().add(out, "--out", image=False)
    rep = run(name, out=out, mode=mode, seed=seed, progress=progress)
    typer.echo(f"wrote {out}/report.json and preview.png  ({name}, {mode}, {rep.get('seconds', 0.0):.0f} s)")
    for method, figs in rep.get("methods", {}).items():
        for name, shown in _figure_rows(method, figs):
            typer.echo(f"  {name:22s} " + "  ".join(shown[:8]))
    for tname, t in (rep.get("targets") or {}).items():
        if isinstance(t, dict) and "met" in t:
            typer.echo(f"  target {tname}: {fmt_number(t.get('value'))} (bound {fmt_number(t.get('bound'))}) "
                       f"{'met' if t['met'] else 'NOT met'}")
    for w in rep.get("warnings", []):
        typer.echo(f"  warning: {w}")
    return rep


def _figure_rows(name: str, figs, depth: int = 0):
    """``(row name, ["key value", ...])`` rows of a method's figures; figures nested by
    dataset or setting (``{"nuclei3d": {"p_at_1": ..}}``) give one row each, ``method / key``."""
    if not isinstance(figs, dict):
        return [(name, [fmt_number(figs)])] if isinstance(figs, (int, float)) and not isinstance(figs, bool) else []
    flat = [f"{k} {fmt_number(v)}" for k, v in figs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    rows = [(name, flat)] if flat or depth == 0 else []
    if depth < 2:
        for k, v in figs.items():
            if isinstance(v, dict):
                rows += _figure_rows(f"{name} / {k}", v, depth + 1)
    return [r for r in rows if r[1]] or rows[:1]


def write_table(path: Path, names, rows) -> None:
    """A CSV table written atomically: a header row, then rows (whole numbers in the first
    column as integers, other values to 9 significant digits)."""
    from ..core.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(names)
            for r in rows:
                w.writerow([int(v) if isinstance(v, (np.integer, int)) or (float(v).is_integer() and i == 0)
                            else f"{float(v):.9g}" for i, v in enumerate(r)])
