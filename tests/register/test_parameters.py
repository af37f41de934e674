"""Parameter validation in biomip.register: a NaN, a negative or zero value where a positive
one is meant, a wrong type, or a size that would need far more memory than the machine
has, raises an InputError naming the argument -- never NaN output, a silent identity, a
hang or a bare RuntimeError / MemoryError / TypeError; and a damaged saved model raises a
BiomipError (FormatError) before anything large is allocated."""

import io
import zipfile

import numpy as np
import pytest

import biomip
from biomip import register as R
from biomip.core.errors import BiomipError, FormatError, InputError

NAN = float("nan")


@pytest.fixture(scope="module")
def pair():
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((24, 24)), 1.0)
    shift = np.stack([np.full((24, 24), 0.7), np.zeros((24, 24))]).astype(np.float32)
    return fixed, biomip.ops.warp(fixed, shift)


CASES = [
    # (function name, keyword arguments, the argument the message must name)
    ("demons", {"sigma_diffusion": 1e12}, "sigma_diffusion"),            # was: a 10^12-voxel kernel, RuntimeError
    ("demons", {"sigma_fluid": 1e12}, "sigma_fluid"),
    ("demons", {"iterations": 10 ** 12}, "iterations"),                  # was: a run of 10^12 iterations
    ("svf", {"iterations": NAN}, "iterations"),                          # was: ValueError
    ("svf", {"iterations": "x"}, "iterations"),                          # was: ValueError
    ("svf", {"iterations": 0}, "iterations"),                            # was: a silent identity
    ("svf", {"iterations": True}, "iterations"),                         # was: accepted as 1
    ("svf", {"levels": 17}, "levels"),
    ("svf", {"sigma_fluid": 1e12}, "sigma_fluid"),                       # was: RuntimeError
    ("svf", {"sigma_diffusion": 1e12}, "sigma_diffusion"),
    ("svf", {"step": 1e12}, "step"),
    ("bspline", {"levels": 10 ** 12}, "levels"),                         # was: MemoryError
    ("bspline", {"bending": "x"}, "bending"),                            # was: TypeError
    ("bspline", {"bending": True}, "bending"),
    ("bspline", {"control_spacing": True}, "control_spacing"),           # was: accepted as 1 mm
    ("bspline", {"iterations": 10 ** 7}, "iterations"),
    ("variational", {"levels": 10 ** 6}, "levels"),
    ("variational", {"iterations": 10 ** 9}, "iterations"),
    ("lddmm", {"steps": 10 ** 9}, "steps"),                              # was: RuntimeError (allocation)
    ("lddmm", {"power": 1e12}, "power"),                                 # was: a silent identity
    ("lddmm", {"lr": 1e12}, "lr"),                                       # was: a silent identity
    ("lddmm", {"levels": 100}, "levels"),
]


@pytest.mark.parametrize("name, kwargs, arg", CASES)
def test_bad_parameters_raise_input_error_naming_them(pair, name, kwargs, arg):
    fixed, moving = pair
    kw = {"iterations": 2, **kwargs}
    with pytest.raises(InputError, match=arg):
        getattr(R, name)(fixed, moving, **kw)


def test_mutual_information_bins_beyond_memory():
    x = np.random.default_rng(0).random((64, 64))
    with pytest.raises(InputError, match="bins"):                        # was: RuntimeError (allocation)
        R.losses.mutual_information(x, x, bins=10 ** 9)


def test_lncc_eps_zero_refused():
    x = np.zeros((16, 16))
    x[4:8, 4:8] = 1
    with pytest.raises(InputError, match="eps"):                         # was: NaN
        R.losses.lncc(x, x, window=3, eps=0.0)


def test_elastic_energy_unbounded_lame_refused():
    with pytest.raises(InputError, match="lam"):                         # was: a negative "energy"
        R.losses.elastic_energy(np.zeros((2, 8, 8)), mu=1.0, lam=-5.0)


@pytest.mark.parametrize("kwargs, arg", [({"k": 0}, "k"), ({"k": -1}, "k"), ({"k": NAN}, "k"), ({"k": True}, "k"),
                                         ({"k": 10}, "k"), ({"explained": NAN}, "explained"),
                                         ({"explained": 0.0}, "explained"), ({"explained": 2.0}, "explained")])
def test_deformation_model_fit_parameters(kwargs, arg):
    fields = np.random.default_rng(0).normal(size=(4, 2, 8, 8))
    with pytest.raises(InputError, match=arg):                           # was: silently clamped / accepted
        R.DeformationModel.fit(fields, **kwargs)


def test_deformation_model_fit_refuses_nan_fields():
    fields = np.random.default_rng(0).normal(size=(4, 2, 8, 8))
    fields[1, 0, 2, 2] = np.nan
    with pytest.raises(InputError, match="fields"):
        R.DeformationModel.fit(fields, k=2)


def test_subspace_register_parameters():
    yy, xx = np.mgrid[:16, :16]
    fixed = np.exp(-((xx - 8.0) ** 2 + (yy - 8.0) ** 2) / 10.0)
    fields = np.zeros((3, 2, 16, 16))
    fields[:, 0] = np.array([-2.0, 0.0, 2.0])[:, None, None]
    model = R.DeformationModel.fit(fields, k=1)
    with pytest.raises(InputError, match="prior"):
        R.subspace_register(fixed, fixed, model, prior=NAN)
    with pytest.raises(InputError, match="prior"):
        R.subspace_register(fixed, fixed, model, prior=-1.0)
    with pytest.raises(InputError, match="iterations"):
        R.subspace_register(fixed, fixed, model, iterations=0)


@pytest.mark.parametrize("kwargs, arg", [({"smoothing": NAN}, "smoothing"), ({"sigma": NAN}, "sigma"),
                                         ({"kernel": "ebs", "mu": NAN}, "mu"), ({"eps": -1.0}, "eps"),
                                         ({"smoothing": "x"}, "smoothing")])
def test_landmark_transform_parameters(kwargs, arg):
    p = np.random.default_rng(1).uniform(0, 20, size=(6, 2))
    with pytest.raises(InputError, match=arg):                           # was: accepted (NaN) or TypeError
        R.LandmarkTransform(p, p + 1.0, **kwargs)


def test_landmark_transform_system_beyond_memory():
    p = np.random.default_rng(1).uniform(0, 20, size=(400_000, 3))
    with pytest.raises(InputError, match="fixed_points"):                # a (1.2 M)^2 float64 system
        R.LandmarkTransform(p, p)


@pytest.mark.parametrize("kwargs, arg", [({"int_steps": 10 ** 6}, "int_steps"), ({"features": (10 ** 9,)}, "features"),
                                         ({"features": ()}, "features"), ({"epochs": 10 ** 9}, "epochs")])
def test_train_registration_parameters(kwargs, arg):
    pairs = R.synthetic_pairs(2, shape=(16, 16), seed=0)
    with pytest.raises(InputError, match=arg):                           # was: OverflowError / MemoryError
        R.train_registration(pairs, **{"epochs": 1, **kwargs})


def test_train_registration_divergence_names_lr():
    pairs = R.synthetic_pairs(4, shape=(32, 32), seed=0)
    with pytest.raises(InputError, match="lr"):                          # was: "v: contains NaN" from deep inside
        R.train_registration(pairs, epochs=2, lr=1e12)


# ------------------------------------------------------------------ damaged model files
@pytest.fixture()
def saved_model(tmp_path):
    fields = np.random.default_rng(0).normal(size=(4, 2, 6, 6))
    model = R.DeformationModel.fit(fields, k=2)
    path = tmp_path / "pca.npz"
    model.save(path)
    return path


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _rewrite(path, arrays, raw=None):
    """Write an npz from arrays, plus raw .npy members (name -> bytes)."""
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(v), allow_pickle=False)
            zf.writestr(k + ".npy", buf.getvalue())
        for name, data in (raw or {}).items():
            zf.writestr(name, data)


def test_model_roundtrip(saved_model):
    back = R.DeformationModel.load(saved_model)
    assert back.k == 2 and back.grid.axes == "cyx"


def test_model_missing_array(saved_model):
    a = _arrays(saved_model)
    del a["variances"]
    _rewrite(saved_model, a)
    with pytest.raises(FormatError, match="variances"):                  # was: KeyError
        R.DeformationModel.load(saved_model)


def test_model_huge_declared_shape_refused_before_allocation(saved_model):
    a = _arrays(saved_model)
    del a["components"]
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False,
                                                "shape": (10 ** 6, 2, 6, 6)})
    _rewrite(saved_model, a, {"components.npy": head.getvalue() + b"\0" * 64})
    with pytest.raises(FormatError, match="components"):                 # was: an allocation attempt / ValueError
        R.DeformationModel.load(saved_model)
    a["mean"] = np.zeros((2, 6, 6))
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False,
                                                "shape": (2, 2, 10 ** 6, 10 ** 6)})
    _rewrite(saved_model, a, {"components.npy": head.getvalue() + b"\0" * 64})
    with pytest.raises(FormatError):
        R.DeformationModel.load(saved_model)


def test_model_truncated(saved_model):
    data = saved_model.read_bytes()
    saved_model.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError):                                     # was: BadZipFile / EOFError
        R.DeformationModel.load(saved_model)


def test_model_truncated_array_data(saved_model):
    a = _arrays(saved_model)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a.pop("components"))
    _rewrite(saved_model, a, {"components.npy": buf.getvalue()[:-40]})
    with pytest.raises(FormatError):                                     # was: ValueError
        R.DeformationModel.load(saved_model)


@pytest.mark.parametrize("key, value", [("spacing", np.array([np.nan, 1.0])), ("spacing", np.array([0.0, 1.0])),
                                        ("direction", np.zeros((2, 2))), ("variances", np.array([np.inf, 1.0])),
                                        ("axes", np.array("zyx")), ("mean", np.zeros((2, 5, 6))),
                                        ("variances", np.array(["a", "b"]))])
def test_model_bad_values(saved_model, key, value):
    a = _arrays(saved_model)
    a[key] = value
    _rewrite(saved_model, a)
    with pytest.raises(FormatError):
        R.DeformationModel.load(saved_model)


def test_model_object_array_and_garbage(saved_model, tmp_path):
    a = _arrays(saved_model)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    del a["origin"]
    _rewrite(saved_model, a, {"origin.npy": buf.getvalue()})
    with pytest.raises(FormatError, match="origin"):                     # never unpickled
        R.DeformationModel.load(saved_model)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"{" * 10_000)
    with pytest.raises(FormatError):
        R.DeformationModel.load(junk)
    with pytest.raises(BiomipError):                                     # was: FileNotFoundError
        R.DeformationModel.load(tmp_path / "missing.npz")
