"""*Arrays in, same kind out*: the one decorator that converts a public function's
image arguments to :class:`~biomip.core.image.Image` at its entry and its results back
to the caller's kind (numpy, torch on the same device, or Image) at its exit."""

from __future__ import annotations

import numpy as np

from .arrays import as_numpy, as_tensor, check_finite, check_real, check_spacing, is_tensor
from .errors import GeometryError, describe
from .image import Image, default_axes

__all__ = ["same_kind"]


def same_kind(*names: str, spacing: str | None = "spacing", reference=None, finite: bool = True,
              real: bool = True):
    """Decorator: *arrays in, same kind out* for a public function of images.

    Converts once at the function's entry and once at its exit, so that the function
    body works on :class:`~biomip.core.image.Image` s only.

    Entry: each argument in ``names`` (e.g. ``"fixed", "moving"``; ``None`` values are
    skipped) may be a numpy array, a torch tensor or an Image.  It is checked once --
    real numbers (:func:`check_real`: complex, boolean, object refused) and finite --
    and becomes an Image: an Image stays as it is; an array takes the geometry of the
    first Image among ``names``, else of ``reference(arguments)`` (a callable of the
    bound arguments returning an Image, e.g. a model's grid, or None), else the
    function's ``spacing`` argument (mm, world order x, y, z; default 1 mm, origin 0,
    identity direction).  A ``spacing`` given together with an Image must equal its
    spacing (else :class:`~biomip.core.errors.GeometryError`).  numpy arrays next to a
    torch tensor go to the tensor's device.

    Exit: every Image in the result -- the result itself, the fields of a dataclass
    result, the values of dicts / lists / tuples in them -- comes back as the kind of
    the inputs: an Image if any input was an Image; else a torch tensor on the input's
    device if any input was torch; else a numpy array.  Objects nested deeper (e.g. a
    transform held by the result) are left alone.

    Parameters
    ----------
    *names : str
        The names of the image arguments of the decorated function.
    spacing : str or None, optional
        The name of the function's spacing argument (used when it has one; None: no
        spacing argument).
    reference : callable, optional
        ``reference(arguments)`` -> Image or None: the grid of array arguments when no
        Image is given (``arguments`` the bound arguments, a dict).
    finite : bool, optional
        Check the image arguments for NaN / Inf.
    real : bool, optional
        Check that the image arguments hold real numbers (:func:`check_real`).

    Returns
    -------
    callable
        The decorator; it raises TypeError at decoration time when the function has
        no argument named in ``names``.

    Raises
    ------
    InputError
        (from the decorated function) for non-real or non-finite image arguments.
    GeometryError
        (from the decorated function) for a ``spacing`` that disagrees with an Image.
    ShapeError
        (from the decorated function) for an array that does not fit the reference
        grid.

    Examples
    --------
    >>> from biomip import Image
    >>> @same_kind("image")
    ... def double(image, spacing=None):
    ...     return image.with_array(image.array * 2)
    >>> double(np.ones(3)).tolist(), type(double(Image(np.ones((2, 2))))).__name__
    ([2.0, 2.0, 2.0], 'Image')
    """
    import dataclasses
    import functools
    import inspect

    def decorate(fn):
        sig = inspect.signature(fn)
        missing = [n for n in names if n not in sig.parameters]
        if missing:
            raise TypeError(f"same_kind: {fn.__name__} has no argument(s) {missing}")
        sp_name = spacing if spacing in sig.parameters else None

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            given = []
            for n in names:
                v = bound.arguments[n]
                if v is None:
                    continue
                if real:
                    check_real(v, n)
                if not (isinstance(v, Image) or is_tensor(v) or isinstance(v, np.ndarray)):
                    v = as_numpy(v, name=n)                  # lists and other array-likes
                given.append((n, v))
            images = [(n, v) for n, v in given if isinstance(v, Image)]
            tensors = [v for _, v in given if is_tensor(v)]
            kind = "image" if images else ("torch" if tensors else "numpy")
            device = tensors[0].device if tensors else None
            ref_name, ref = images[0] if images else ("reference grid", None)
            if ref is None and reference is not None:
                ref = reference(bound.arguments)
            sp = bound.arguments.get(sp_name) if sp_name else None
            if sp is not None and ref is not None:
                want = check_spacing(sp, ref.sdim, name=sp_name)
                if not np.allclose(want, ref.spacing, rtol=1e-5, atol=1e-8):
                    raise GeometryError(f"{sp_name}: got {want} but {ref_name} is an Image with spacing "
                                        f"{ref.spacing}; leave {sp_name}=None when passing Images")
            for n, v in given:
                if isinstance(v, Image):
                    img = v
                else:
                    if kind == "torch":
                        v = as_tensor(v, device=device, name=n)
                    if ref is not None:
                        axes = ref.axes if v.ndim == ref.ndim else default_axes(v.ndim)
                        if sum(a in "zyx" for a in axes) != ref.sdim:
                            from .errors import ShapeError

                            raise ShapeError(f"{n}: got {describe(v)}; expected a {ref.sdim}-D array on the grid of "
                                             f"{ref_name}")
                        img = Image(v, spacing=ref.spacing, origin=ref.origin, direction=ref.direction, axes=axes)
                    else:
                        img = Image(v, spacing=sp)
                if finite:
                    check_finite(img.array, n)
                bound.arguments[n] = img
            result = fn(*bound.args, **bound.kwargs)
            return _restore_kind(result, kind, device, dataclasses)

        wrapper.__signature__ = sig
        return wrapper

    return decorate


def _restore_kind(obj, kind: str, device, dataclasses, top: bool = True):
    """The Images in ``obj`` as ``kind`` (see :func:`same_kind`)."""

    if kind == "image":
        return obj
    if isinstance(obj, Image):
        return obj.numpy() if kind == "numpy" else as_tensor(obj.array, device=device)
    if isinstance(obj, dict):
        return type(obj)((k, _restore_kind(v, kind, device, dataclasses, False)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        items = [_restore_kind(v, kind, device, dataclasses, False) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    if top and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _restore_kind(getattr(obj, f.name), kind, device, dataclasses, False)
                   for f in dataclasses.fields(obj)}
        try:
            for k, v in changes.items():
                setattr(obj, k, v)
        except dataclasses.FrozenInstanceError:
            obj = dataclasses.replace(obj, **{k: v for k, v in changes.items()})
        return obj
    return obj
