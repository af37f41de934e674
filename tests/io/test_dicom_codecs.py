"""Compressed DICOM and the codecs biomip installs.

The default install carries no GPL code: JPEG baseline (8-bit) decodes with Pillow,
JPEG-LS with pyjpegls, JPEG 2000 with pylibjpeg-openjpeg, RLE natively.  JPEG lossless
(process 14) and 12-bit JPEG extended need the optional ``jpeg`` extra
(pylibjpeg-libjpeg, GPL-3.0) or python-gdcm; without one, reading such a file raises a
:class:`~biomip.core.errors.MissingDependencyError` that names the transfer syntax and
the command to run.  The tests hide decoders from pydicom's registry (``monkeypatch``,
undone after each test) to play the default install whatever this environment holds.
"""

import importlib.metadata as md
import importlib.util
import re

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless

from biomip.core.errors import FormatError, MissingDependencyError
from biomip.io import read

FULL_JPEG = ("pylibjpeg", "gdcm")  # pydicom plugins that decode every JPEG process: the jpeg extra, python-gdcm


def _hide(monkeypatch, uid, *labels):
    """Make pydicom's decoder for ``uid`` behave as if the plugins ``labels`` were not installed."""
    dec = get_decoder(uid)
    monkeypatch.setattr(dec, "_available", {k: v for k, v in dec._available.items() if k not in labels})
    monkeypatch.setattr(dec, "_unavailable", {**dec._unavailable, **{k: (f"{k} (hidden by the test)",) for k in labels}})


def _file(name):
    return get_testdata_file(name, download=False)


def test_jpeg_lossless_without_the_extra_says_what_to_install(monkeypatch):
    _hide(monkeypatch, JPEGLosslessSV1, *FULL_JPEG)
    path = _file("SC_rgb_jpeg_gdcm.dcm")  # JPEG lossless, process 14 SV1, RGB 100 x 100
    with pytest.raises(MissingDependencyError) as info:
        read(path)
    msg = str(info.value)
    assert "JPEG Lossless, Non-Hierarchical, First-Order Prediction" in msg
    assert str(JPEGLosslessSV1) in msg
    assert 'pip install "biomip[jpeg]"' in msg
    assert str(path) in msg
    # still a FormatError (every unreadable file is), and an ImportError
    assert isinstance(info.value, FormatError) and isinstance(info.value, ImportError)


def test_12bit_jpeg_extended_needs_more_than_pillow(monkeypatch):
    _hide(monkeypatch, JPEGExtended12Bit, *FULL_JPEG)
    if not get_decoder(JPEGExtended12Bit).is_available:
        pytest.skip("Pillow >= 10 with JPEG support is not installed")
    with pytest.raises(MissingDependencyError, match=r"JPEG Extended .*pillow.*12-bit") as info:
        read(_file("JPGExtended.dcm"))  # valid 12-bit lossy JPEG: Pillow decodes 8-bit only
    assert 'pip install "biomip[jpeg]"' in str(info.value)


def test_jpeg_baseline_decodes_without_gpl_codecs(monkeypatch):
    ref = read(_file("SC_rgb_rle.dcm")).array.astype(np.int16)  # the same picture, lossless RLE
    _hide(monkeypatch, JPEGBaseline8Bit, *FULL_JPEG)
    img = read(_file("SC_rgb_jpeg_dcmtk.dcm"))  # Pillow (a default dependency) decodes it
    assert img.shape == (3, 100, 100) and img.array.dtype == np.uint8
    assert np.abs(img.array.astype(np.int16) - ref).max() <= 8  # lossy JPEG, quality ~90


def test_jpeg_baseline_without_any_decoder_names_pillow(monkeypatch):
    _hide(monkeypatch, JPEGBaseline8Bit, *FULL_JPEG, "pillow")
    with pytest.raises(MissingDependencyError, match=r"JPEG Baseline \(Process 1\).*pillow") as info:
        read(_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert 'pip install "biomip[jpeg]"' in str(info.value)


def test_jpeg_ls_decodes_with_pyjpegls_and_fails_clearly_without(monkeypatch):
    ref = read(_file("MR_small.dcm")).array
    _hide(monkeypatch, JPEGLSLossless, *FULL_JPEG)
    np.testing.assert_array_equal(read(_file("MR_small_jpeg_ls_lossless.dcm")).array, ref)
    _hide(monkeypatch, JPEGLSLossless, "pyjpegls")
    with pytest.raises(MissingDependencyError, match=r"JPEG-LS Lossless Image Compression"):
        read(_file("MR_small_jpeg_ls_lossless.dcm"))


@pytest.mark.skipif(importlib.util.find_spec("libjpeg") is not None, reason="the jpeg extra is installed")
def test_default_install_reports_jpeg_lossless_as_missing():
    """Without the extra (and without gdcm), nothing is hidden: the real default install."""
    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("another JPEG lossless decoder (gdcm) is installed")
    with pytest.raises(MissingDependencyError, match=r'pip install "biomip\[jpeg\]"'):
        read(_file("SC_rgb_jpeg_gdcm.dcm"))


@pytest.mark.skipif(importlib.util.find_spec("libjpeg") is None, reason="needs the jpeg extra (pylibjpeg-libjpeg)")
def test_jpeg_extra_decodes_jpeg_lossless_exactly():
    ref = read(_file("SC_rgb_rle.dcm")).array
    np.testing.assert_array_equal(read(_file("SC_rgb_jpeg_gdcm.dcm")).array, ref)
    assert read(_file("JPGExtended.dcm")).shape == (1024, 256)  # 12-bit JPEG extended


def _gpl(dist) -> bool:
    """True for a GPL (not LGPL) licence in a distribution's metadata."""
    meta = dist.metadata
    texts = [meta.get("License-Expression") or ""]
    texts += [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    lic = meta.get("License") or ""
    if len(lic) < 200:  # a licence name; long fields are full texts (bundled runtime notices)
        texts.append(lic)
    return any(re.search(r"(?<!L)GPL|GNU (Affero )?General Public License", t) for t in texts)


def test_default_install_has_no_gpl_dependency():
    """Walk biomip's declared runtime dependencies (no extras) through what is installed."""
    from packaging.requirements import Requirement

    seen, todo, gpl = set(), [("biomip", frozenset())], []
    while todo:
        name, extras = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional platform dependency (colorama on Windows ...)
        if _gpl(dist):
            gpl.append(f"{key} {dist.version}")
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            todo.append((req.name, frozenset(req.extras)))
    assert "pylibjpeg-libjpeg" not in seen
    assert {"pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "pyjpegls", "pillow"} <= seen
    assert not gpl, f"GPL packages in the default install: {gpl}"
