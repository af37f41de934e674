"""One API convention for registration: every method takes numpy arrays, torch tensors
and Images (arrays with ``spacing=``, default 1 mm) and returns the kind it received,
and every spatial width / step is in mm (the units rule)."""

import numpy as np
import pytest
import torch

import biomip
from biomip import Image
from biomip.core import GeometryError, InputError
from biomip.register import (
    bspline,
    demons,
    lddmm,
    linear,
    subspace_register,
    svf,
    variational,
)
from biomip.register.subspace import DeformationModel

# small 2-D runs, a few iterations each: only the conversions are tested here
METHODS = {
    "demons": (demons, {"iterations": 5}),
    "svf": (svf, {"levels": 2, "iterations": 3}),
    "bspline": (bspline, {"levels": 1, "iterations": 3, "control_spacing": 8}),
    "variational": (variational, {"iterations": 4, "levels": 1}),
    "lddmm": (lddmm, {"steps": 2, "iterations": 2, "levels": 1}),
}


@pytest.fixture(scope="module")
def pair():
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((32, 32)), 1.0)
    d = biomip.data.random_deformation(fixed, max_displacement=2.0, seed=1)
    moving = biomip.ops.warp(fixed, d.inverse)
    return fixed.numpy().astype(np.float32), moving.numpy().astype(np.float32)


def _kinds(f, m, sp=(1.0, 1.0)):
    return {"numpy": (f, m), "torch": (torch.from_numpy(f), torch.from_numpy(m)),
            "image": (Image(f, spacing=sp), Image(m, spacing=sp))}


def _check_kind(x, kind, shape):
    want = {"numpy": np.ndarray, "torch": torch.Tensor, "image": Image}[kind]
    assert isinstance(x, want), (kind, type(x))
    assert tuple(x.shape) == shape
    if kind == "torch":
        assert x.device.type == "cpu"
    return np.asarray(x.numpy() if kind == "image" else (x.numpy() if kind == "torch" else x))


@pytest.mark.parametrize("name", list(METHODS))
def test_dense_methods_return_the_kind_they_receive(pair, name):
    fn, kw = METHODS[name]
    out = {}
    for kind, (f, m) in _kinds(*pair).items():
        res = fn(f, m, **kw)
        out[kind] = (_check_kind(res.displacement, kind, (2, 32, 32)), _check_kind(res.warped, kind, (32, 32)))
        if kind == "image":
            assert res.displacement.axes == "cyx" and res.displacement.meta["kind"] == "displacement"
    for kind in ("torch", "image"):           # the same computation whatever the wrapping
        np.testing.assert_allclose(out[kind][0], out["numpy"][0], atol=1e-5)
        np.testing.assert_allclose(out[kind][1], out["numpy"][1], atol=1e-5)


def test_svf_velocity_follows_the_input_kind(pair):
    f, m = pair
    assert isinstance(svf(f, m, levels=1, iterations=2).params["velocity"], np.ndarray)
    assert isinstance(svf(torch.from_numpy(f), torch.from_numpy(m), levels=1, iterations=2).params["velocity"],
                      torch.Tensor)
    assert isinstance(svf(Image(f), Image(m), levels=1, iterations=2).params["velocity"], Image)


def test_linear_returns_the_kind_it_receives(pair):
    f, m = pair
    out = {}
    for kind, (fi, mi) in _kinds(f, m).items():
        res = linear(fi, mi, "rigid", levels=1, iterations=5)
        out[kind] = (res.transform.matrix, _check_kind(res.warped, kind, (32, 32)))
    for kind in ("torch", "image"):
        np.testing.assert_allclose(out[kind][0], out["numpy"][0], atol=1e-6)
        np.testing.assert_allclose(out[kind][1], out["numpy"][1], atol=1e-4)


def test_subspace_register_returns_the_kind_it_receives(pair):
    f, m = pair
    grid = Image(f, spacing=(1.5, 1.5))
    fields = [biomip.data.random_deformation(grid, max_displacement=2.0, seed=s).displacement for s in range(4)]
    model = DeformationModel.fit(fields, k=2)
    ref = subspace_register(Image(f, spacing=(1.5, 1.5)), Image(m, spacing=(1.5, 1.5)), model, iterations=5)
    for kind, (fi, mi) in _kinds(f, m).items():
        if kind == "image":
            continue
        res = subspace_register(fi, mi, model, iterations=5)       # arrays take the model grid's geometry
        np.testing.assert_allclose(_check_kind(res.displacement, kind, (2, 32, 32)), ref.displacement.numpy(),
                                   atol=1e-5)
        _check_kind(res.warped, kind, (32, 32))
    with pytest.raises(GeometryError, match="spacing"):
        subspace_register(f, m, model, spacing=1.0)
    with pytest.raises(InputError, match="model"):
        subspace_register(f, m, "not a model")


def test_array_spacing_and_mixed_inputs(pair):
    f, m = pair
    on_2mm = demons(Image(f, spacing=(2.0, 2.0)), Image(m, spacing=(2.0, 2.0)), iterations=5)
    arr = demons(f, m, iterations=5, spacing=2.0)                  # arrays on a 2-mm grid
    np.testing.assert_allclose(arr.displacement, on_2mm.displacement.numpy(), atol=1e-6)
    mixed = demons(Image(f, spacing=(2.0, 2.0)), m, iterations=5)   # an array takes its partner Image's grid
    assert isinstance(mixed.displacement, Image) and mixed.displacement.spacing == (2.0, 2.0)
    np.testing.assert_allclose(mixed.displacement.numpy(), on_2mm.displacement.numpy(), atol=1e-6)
    with pytest.raises(GeometryError, match="spacing: got .* but fixed is an Image"):
        demons(Image(f, spacing=(2.0, 2.0)), m, spacing=1.0)
    init = demons(f, m, iterations=2, initial=arr.displacement / 2)  # an array initial field
    assert isinstance(init.displacement, np.ndarray)


@pytest.mark.parametrize("name", list(METHODS) + ["linear"])
def test_complex_bool_object_inputs_are_refused(pair, name):
    fn, kw = METHODS.get(name, (linear, {"levels": 1, "iterations": 2}))
    f, m = pair
    with pytest.raises(InputError, match="fixed: .*complex"):
        fn(f.astype(np.complex64), m, **kw)
    with pytest.raises(InputError, match="moving: .*boolean"):
        fn(f, m > 0.5, **kw)
    with pytest.raises(InputError, match="moving: .*boolean"):
        fn(torch.from_numpy(f), torch.from_numpy(m > 0.5), **kw)
    with pytest.raises(InputError, match="fixed: .*object"):
        fn(f.astype(object), m, **kw)
    with pytest.raises(InputError, match="moving: .*NaN"):
        fn(f, np.full_like(m, np.nan), **kw)


@pytest.mark.parametrize("name", list(METHODS) + ["linear"])
def test_missing_empty_and_constant_images_are_refused(pair, name):
    """Every method refuses what the rigid one always did: a missing, empty or constant image
    (a dense method used to return a 'registration' of a blank image)."""
    from biomip.core import ShapeError

    fn, kw = METHODS.get(name, (linear, {"levels": 1, "iterations": 2}))
    f, m = pair
    with pytest.raises(InputError, match="fixed: got NoneType; expected an image"):
        fn(None, m, **kw)
    with pytest.raises(InputError, match="moving: got NoneType; expected an image"):
        fn(f, None, **kw)
    with pytest.raises(ShapeError, match="fixed: got an empty image"):
        fn(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), **kw)
    with pytest.raises(InputError, match="fixed: is constant; there is nothing to register"):
        fn(np.zeros_like(f), m, **kw)
    with pytest.raises(InputError, match="moving: is constant"):
        fn(f, np.ones_like(m), **kw)


def test_integer_images_are_registered_as_intensities(pair):
    """An int16 CT is warped linearly and keeps its pixel type (as ops.warp)."""
    f, m = pair
    fi, mi = (np.round(f * 1000).astype(np.int16), np.round(m * 1000).astype(np.int16))
    res = demons(Image(fi), Image(mi), iterations=5)
    assert res.warped.dtype == np.int16
    ref = biomip.ops.warp(mi.astype(np.float32), res.displacement.numpy())
    assert np.abs(res.warped.numpy() - ref).max() <= 0.5                 # linear, rounded; not nearest
    assert len(np.setdiff1d(res.warped.numpy(), mi)) > 0
    labels = demons(Image(fi), Image(mi, meta={"kind": "labels"}), iterations=5)   # a label map stays nearest
    assert set(np.unique(labels.warped.numpy())) <= set(np.unique(mi))


# ------------------------------------------------------------------------ units rule
def test_widths_are_mm_demons_and_svf_are_scale_covariant():
    """The same arrays on a 2-mm grid with every width / step doubled give the same
    registration in voxels: the displacement in mm doubles.  (A textured image: in flat
    regions demons' absolute denominator threshold is not scale-free.)"""
    import scipy.ndimage as ndi

    f = ndi.gaussian_filter(np.random.default_rng(0).standard_normal((32, 32)), 2.0).astype(np.float32)
    d = biomip.data.random_deformation(Image(f), max_displacement=2.0, seed=1)
    m = biomip.ops.warp(f, d.inverse.numpy()).astype(np.float32)
    one = demons(f, m, iterations=8, sigma_diffusion=1.0, sigma_fluid=0.5, max_step=2.0)
    two = demons(f, m, iterations=8, sigma_diffusion=2.0, sigma_fluid=1.0, max_step=4.0, spacing=2.0)
    np.testing.assert_allclose(two.displacement, 2 * one.displacement, atol=1e-4)
    one = svf(f, m, levels=2, iterations=4, window=5, step=0.25, sigma_fluid=3.0, sigma_diffusion=1.0)
    two = svf(f, m, levels=2, iterations=4, window=10, step=0.5, sigma_fluid=6.0, sigma_diffusion=2.0, spacing=2.0)
    np.testing.assert_allclose(two.displacement, 2 * one.displacement, atol=1e-4)
    assert two.params["window_voxels"] == [5, 5]


def test_bspline_control_spacing_is_mm_or_voxels(pair):
    f, m = pair
    mm = bspline(f, m, levels=1, iterations=3, control_spacing=8, spacing=(2.0, 1.0))
    assert mm.params["control_spacing_voxels"] == [4, 8]                 # x: 8 mm / 2 mm, y: 8 mm / 1 mm
    assert mm.params["bspline"].control_spacing == (8.0, 8.0)
    vox = bspline(f, m, levels=1, iterations=3, control_spacing_voxels=(4, 8), spacing=(2.0, 1.0))
    np.testing.assert_allclose(vox.displacement, mm.displacement, atol=1e-6)
    with pytest.raises(InputError, match="control_spacing"):
        bspline(f, m, control_spacing=8, control_spacing_voxels=4)
    with pytest.raises(InputError, match="control_spacing"):
        bspline(f, m, control_spacing=-1.0)
