"""The reconstruction API does what its documentation says.

* every public function of ``biomip.reconstruct`` (and of ``lfm_raw`` / ``serenet``) lists
  exactly its signature's parameters, in order, in its docstring's Parameters section;
* every reconstruction function returns, on a tiny problem, the type its Returns section
  names, and the image kind that section states (a tensor for a tensor input, on its
  device; numpy for numpy and for an ``Image`` sinogram);
* the functions that return a ``Reconstruction`` take ``callback=`` (called after every
  iteration with ``(k, x)``; ``True`` stops) and ``progress=`` (handed to the progress bar);
* the README and the user guide name every algorithm of their table that does *not*
  return a ``Reconstruction`` with callback / progress, and every keyword they show in a
  call exists.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from numpydoc.docscrape import FunctionDoc

import biomip
from biomip import reconstruct as R

# by path: the package attribute `fbp` is the function, not the module
fbp_module = importlib.import_module("biomip.reconstruct.fbp")
iterative_module = importlib.import_module("biomip.reconstruct.iterative")
lfm_raw = importlib.import_module("biomip.reconstruct.lfm_raw")
serenet = importlib.import_module("biomip.reconstruct.serenet")

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "guide" / "reconstruct.md"]


# ------------------------------------------------------------------ helpers
def _public(module, names):
    return {f"{module.__name__}.{n}": getattr(module, n) for n in names}


PUBLIC = {**_public(R, R.__all__), **_public(lfm_raw, lfm_raw.__all__), **_public(serenet, serenet.__all__)}
FUNCTIONS = {k: v for k, v in PUBLIC.items() if inspect.isfunction(v)}


def _doc(func) -> FunctionDoc:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # numpydoc warns about sections it does not know
        return FunctionDoc(func)


def _signature_names(func) -> list[str]:
    prefix = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return [prefix.get(p.kind, "") + p.name for p in inspect.signature(func).parameters.values()]


def _documented_names(func) -> list[str]:
    return [n.strip() for p in _doc(func)["Parameters"] for n in p.name.split(",")]


def _returns(func):
    """(type text, description) of the first Returns entry."""
    ret = _doc(func)["Returns"]
    assert ret, f"{func.__name__}: no Returns section"
    # numpydoc puts an unnamed return's type in .name
    return (ret[0].type or ret[0].name), " ".join(ret[0].desc)


TYPES = {"numpy.ndarray": np.ndarray, "torch.Tensor": torch.Tensor, "Reconstruction": R.Reconstruction}


def _documented_types(func) -> tuple:
    text, _ = _returns(func)
    names = [t.strip() for t in re.split(r",| or ", text) if t.strip()]
    unknown = [n for n in names if n not in TYPES]
    assert not unknown, f"{func.__name__}: Returns type {text!r} names {unknown}, not a known type"
    return tuple(TYPES[n] for n in names)


# ------------------------------------------------------------------ 1. Parameters == signature
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_parameters_section_lists_the_signature(name):
    func = FUNCTIONS[name]
    assert _documented_names(func) == _signature_names(func), (
        f"{name}: docstring Parameters {_documented_names(func)} != signature {_signature_names(func)}")


# ------------------------------------------------------------------ 2. tiny problems
SIZE = 16


@pytest.fixture(scope="module")
def problems():
    img = np.zeros((SIZE, SIZE), np.float32)
    img[4:12, 5:11] = 1.0
    par = R.ParallelProjector(R.ParallelBeam.full(24, 23), (SIZE, SIZE))
    fan = R.DivergentProjector(R.fan_beam(24, sod=60.0, sdd=90.0, n_det=32), (SIZE, SIZE))
    psf = R.lightfield_psf(R.LightFieldOptics(n_views=3), depths=np.linspace(-2, 2, 3))
    lf = R.LightFieldProjector(psf, (SIZE, SIZE), binning=2)
    vol = np.random.default_rng(0).random(lf.in_shape).astype(np.float32)
    cone = R.DivergentProjector(R.cone_beam(8, sod=60.0, sdd=90.0, det_shape=(12, 12), det_spacing=1.5), (8, 8, 8))
    cube = np.zeros((8, 8, 8), np.float32)
    cube[2:6, 2:6, 2:6] = 1.0
    return {"parallel": (par, par(img)), "fan": (fan, fan(img)), "lightfield": (psf, lf(vol)),
            "cone": (cone, cone(cube))}


# name -> (problem, call(measurement, operator, **kw)); iterative ones run 3 iterations
CALLS = {
    "fbp": ("parallel", lambda y, op, **kw: R.fbp(y, op, **kw)),
    "fdk": ("fan", lambda y, op, **kw: R.fdk(y, op, **kw)),
    "least_squares": ("parallel", lambda y, op, **kw: R.least_squares(y, op, iterations=3, **kw)),
    "map_gaussian": ("parallel", lambda y, op, **kw: R.map_gaussian(y, op, 0.1, 1.0, correlation=1.0,
                                                                     iterations=3, **kw)),
    "sart": ("parallel", lambda y, op, **kw: R.sart(y, op, iterations=3, **kw)),
    "sirt": ("parallel", lambda y, op, **kw: R.sirt(y, op, iterations=3, **kw)),
    "landweber": ("parallel", lambda y, op, **kw: R.landweber(y, op, iterations=3, **kw)),
    "richardson_lucy": ("parallel", lambda y, op, **kw: R.richardson_lucy(y, op, iterations=3, **kw)),
    "fista_tv": ("parallel", lambda y, op, **kw: R.fista_tv(y, op, 1e-3, iterations=3, **kw)),
    "fista_l1": ("parallel", lambda y, op, **kw: R.fista_l1(y, op, 1e-3, basis="dct", iterations=3, **kw)),
    "dictionary_reconstruction": ("parallel", lambda y, op, **kw: R.dictionary_reconstruction(
        y, op, patch_size=4, n_atoms=8, outer=3, inner=2, **kw)),
    "inr_reconstruction": ("parallel", lambda y, op, **kw: R.inr_reconstruction(
        y, op, iterations=3, width=16, depth=1, warm_start=1, pre_steps=2, **kw)),
    "refocus": ("lightfield", lambda y, psf, **kw: R.refocus(y, psf, binning=2, **kw)),
    "refocus_stack": ("lightfield", lambda y, psf, **kw: R.refocus_stack(y, psf, binning=2, **kw)),
    "gaussian_reconstruction": ("cone", lambda y, op, **kw: R.gaussian_reconstruction(
        y, op, n_gaussians=40, iterations=3, densify=False, **kw)),
}
ITERATIVE = [n for n in CALLS if _documented_types(getattr(R, n)) == (R.Reconstruction,)]


def test_every_reconstruction_function_is_covered():
    """A new public function taking a measurement and a projector must join CALLS."""
    takes_projector = {n for n in R.__all__ if inspect.isfunction(getattr(R, n))
                       and list(inspect.signature(getattr(R, n)).parameters)[1:2] in (["projector"], ["psf"])}
    assert takes_projector == set(CALLS)


def _as(kind, y):
    if kind == "torch":
        return torch.as_tensor(y)
    if kind == "image":
        return biomip.Image(np.asarray(y))
    return np.asarray(y)


def _kinds(name):
    """The input kinds the docstring's first parameter accepts."""
    text = _doc(getattr(R, name))["Parameters"][0].type
    return [k for k, word in (("numpy", "numpy.ndarray"), ("torch", "torch.Tensor"), ("image", "Image"))
            if word in text]


@pytest.mark.parametrize("name,kind", [(n, k) for n in sorted(CALLS) for k in _kinds(n)])
def test_documented_return_type_is_returned(name, kind, problems):
    func = getattr(R, name)
    problem, call = CALLS[name]
    op, y = problems[problem]
    allowed = _documented_types(func)
    _, desc = _returns(func)
    out = call(_as(kind, y), op)
    assert isinstance(out, allowed), f"{name}: returned {type(out).__name__}; documented {allowed}"
    image = out.image if isinstance(out, R.Reconstruction) else out
    if isinstance(out, R.Reconstruction) or set(allowed) == {np.ndarray, torch.Tensor}:
        # the documented rule: a tensor on the input's device for a tensor input, else numpy
        assert "a torch tensor on the device of a tensor" in desc and "else a numpy array" in desc, (
            f"{name}: the Returns section does not state the image kind: {desc!r}")
        want = torch.Tensor if kind == "torch" else np.ndarray
        assert type(image) is want, f"{name}({kind}): image is {type(image).__name__}, documented {want.__name__}"
    if isinstance(out, R.Reconstruction):
        assert isinstance(out.method, str) and isinstance(out.params, dict)
        assert isinstance(out.seconds, float) and out.seconds >= 0
        assert len(out.history) >= 1 and all(isinstance(h, float) for h in out.history)
    if problem != "lightfield":
        assert tuple(image.shape) == tuple(op.in_shape)
        assert bool(np.isfinite(np.asarray(image)).all())


# ------------------------------------------------------------------ 3. callback= and progress=
# gaussian_reconstruction hands its callback the fitted GaussianVolume, not a voxel image
# (voxelising every step would cost more than the step)
@pytest.mark.parametrize("name", [n for n in ITERATIVE if n != "gaussian_reconstruction"])
def test_callback_runs_every_iteration_and_true_stops(name, problems):
    problem, call = CALLS[name]
    op, y = problems[problem]
    seen = []

    def callback(k, x):
        seen.append((k, x))
        return k == 1                                     # stop after the second iteration

    rec = call(y, op, callback=callback)
    assert [k for k, _ in seen] == [0, 1], f"{name}: callback saw iterations {[k for k, _ in seen]}"
    assert all(isinstance(x, torch.Tensor) and tuple(x.shape) == tuple(op.in_shape) for _, x in seen)
    assert len(rec.history) == 2


def _record_bars(monkeypatch):
    """Record the ``progress`` argument of every progress bar the reconstruct modules open."""
    asked = []
    for module in (iterative_module, fbp_module):
        original = getattr(module, "progress_bar", None)
        if original is None:                                   # this module opens no bars
            continue

        def recording(description, total=None, progress=None, *a, _original=original, **kw):
            asked.append(progress)
            return _original(description, total, False, *a, **kw)      # draw nothing in the test

        monkeypatch.setattr(module, "progress_bar", recording)
    return asked


@pytest.mark.parametrize("name", [*ITERATIVE, "fdk"])
def test_progress_reaches_the_progress_bar(name, problems, monkeypatch):
    problem, call = CALLS[name]
    op, y = problems[problem]
    asked = _record_bars(monkeypatch)
    call(y, op, progress=True)
    assert True in asked, f"{name}(progress=True) opened no progress bar"
    asked.clear()
    call(y, op, progress=False)
    assert asked and not any(asked), f"{name}(progress=False) asked for bars {asked}"


@pytest.mark.parametrize("name", ["fbp", "fdk"])
def test_direct_methods_take_no_callback(name):
    params = inspect.signature(getattr(R, name)).parameters
    assert "callback" not in params
    assert _documented_types(getattr(R, name)) == (np.ndarray, torch.Tensor)


# ------------------------------------------------------------------ 4. README and user guide
def _algorithms_section(text: str) -> tuple[str, list[str]]:
    """(intro, table rows) of the reconstruction 'Algorithms' part of a page."""
    m = re.search(r"^(?:\*\*Algorithms\*\*|## Algorithms)(.*?)^(\|.*?)(?=^[^|])", text, re.S | re.M)
    assert m, "no Algorithms section with a table"
    return m.group(1), m.group(2).splitlines()


def _table_functions(rows) -> list[str]:
    names = []
    for row in rows[2:]:                                       # skip the header and the rule
        cells = row.replace("\\|", "/").split("|")                  # \| is a pipe inside a cell
        cell = cells[2] if len(cells) >= 4 else ""
        names += [n for n in re.findall(r"`(\w+)(?:\(|`)", cell) if inspect.isfunction(getattr(R, n, None))]
    return names


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_docs_name_the_algorithms_that_return_the_image(page):
    intro, rows = _algorithms_section(page.read_text(encoding="utf-8"))
    names = _table_functions(rows)
    assert {"fbp", "fdk", "sart", "fista_tv", "inr_reconstruction"} <= set(names)
    for n in names:
        func = getattr(R, n)
        params = inspect.signature(func).parameters
        iterative = _documented_types(func) == (R.Reconstruction,) and "callback" in params and "progress" in params
        if not iterative:
            assert f"`{n}`" in intro, (
                f"{page.name}: `{n}` returns {_returns(func)[0]} (no Reconstruction with callback= / progress=) "
                "but the text before the algorithms table does not say so")
    assert "`Reconstruction`" in intro and "`callback=`" in intro and "`progress=`" in intro


CALLABLE_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]


@pytest.mark.parametrize("page", CALLABLE_DOCS, ids=lambda p: p.name)
def test_keywords_shown_in_the_docs_exist(page):
    text = page.read_text(encoding="utf-8").replace("\\|", "|")
    bad = []
    for name, args in re.findall(r"(?<![\w.])(\w+)\(([^()`]*)\)", text):
        obj = PUBLIC.get(f"biomip.reconstruct.{name}") or PUBLIC.get(f"biomip.reconstruct.serenet.{name}") \
            or PUBLIC.get(f"biomip.reconstruct.lfm_raw.{name}")
        if obj is None:
            continue
        params = inspect.signature(obj).parameters
        bad += [f"{name}({kw}=)" for kw in re.findall(r"(\w+)\s*=", args) if kw not in params]
    assert not bad, f"{page.name} shows keywords the functions do not take: {bad}"
