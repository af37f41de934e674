"""Random smooth, invertible deformations for registration experiments and augmentation.

A deformation is built from seeded white noise, Gaussian-smoothed into a stationary
velocity field ``v`` and exponentiated by scaling and squaring, so it is a
diffeomorphism by construction (positive Jacobian) and its inverse is simply
``exp(-v)``.  Fields follow :mod:`biomip.ops` conventions: ``(d, [z,] y, x)``,
component 0 = x, in mm, ``warped(p) = image(p + u(p))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.arrays import check_shape, check_spacing
from ..core.errors import GeometryError, InputError, ShapeError
from ..core.image import Image
from ..ops.filters import gaussian_smooth, spatial_gradient
from ..ops.spatial import integrate_velocity, invert_displacement, warp

__all__ = ["RandomDeformation", "jacobian_min", "random_deformation"]


def jacobian_min(u: np.ndarray, spacing) -> float:
    """Smallest ``det(I + grad u)`` of a field ``(d, ...)`` in mm (numpy.gradient stencils).

    Parameters
    ----------
    u : numpy.ndarray
        Displacement ``(d, [z,] y, x)`` in mm.
    spacing : sequence of float
        Voxel size (x, y[, z]) in mm.

    Returns
    -------
    float
        The smallest Jacobian determinant.
    """
    d = u.shape[0]
    g = np.asarray(spatial_gradient(np.asarray(u, dtype=np.float64), spacing=spacing, sdim=d))
    # g[j, i] = d u_i / d x_j  ->  J[i, j] = delta_ij + g[j, i]
    J = np.moveaxis(g, (0, 1), (-1, -2)) + np.eye(d)
    return float(np.linalg.det(J).min())


def _max_norm(u: np.ndarray) -> float:
    return float(np.sqrt((np.asarray(u, dtype=np.float64) ** 2).sum(axis=0)).max())


@dataclass
class RandomDeformation:
    """A random deformation and its inverse, on a grid of ``shape`` voxels.

    Parameters
    ----------
    displacement : Image
        ``'cyx'`` / ``'czyx'`` field in mm (component 0 = x): ``phi(p) = p + u(p)``.
    inverse : Image
        The displacement of ``phi^-1`` (``compose(displacement, inverse) ~ 0``).
    velocity : Image or None
        The stationary velocity field (None when not diffeomorphic).
    max_displacement : float
        Measured ``max |u(p)|`` in mm.
    min_jacobian : float
        Measured ``min det(I + grad u)`` (> 0 means no folding).
    seed, smoothness, diffeomorphic : int, float, bool
        The generation parameters (smoothness in mm).
    requested_max_displacement : float
        The `max_displacement` that was asked for, in mm.
    """

    displacement: Image
    inverse: Image
    velocity: Image | None
    max_displacement: float
    min_jacobian: float
    seed: int = 0
    smoothness: float = 0.0
    diffeomorphic: bool = True
    requested_max_displacement: float = field(default=0.0)

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape ``([z,] y, x)`` of the grid."""
        return self.displacement.spatial_shape

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size (x, y[, z]) of the grid in mm."""
        return self.displacement.spacing

    def warp(self, image, mode: str = "linear", padding: str = "border", inverse: bool = False):
        """Deform ``image`` (Image or array ``(..., [z,] y, x)`` on this grid).

        ``out(p) = image(p + u(p))`` with ``u = displacement`` (``inverse=False``) or the
        inverse field.  An Image must have this grid's spatial shape and spacing; the
        field is placed on the image's grid (its origin and direction), so the result
        keeps the image's geometry.  ``mode="nearest"`` keeps label dtypes.

        Parameters
        ----------
        image : Image or array_like
            The image to deform, on this grid.
        mode : {"linear", "nearest", "cubic"}, optional
            Interpolation (``"nearest"`` keeps label dtypes).
        padding : {"border", "zeros", "reflection"}, optional
            Values outside the grid (see :func:`biomip.ops.warp`).
        inverse : bool, optional
            Warp with the inverse field instead.

        Returns
        -------
        Image or array_like
            The deformed image, of the kind of `image`, with its geometry.

        Examples
        --------
        >>> from biomip.data.deformation import random_deformation
        >>> from biomip.data.phantoms import shepp_logan
        >>> img = shepp_logan((64, 64))
        >>> deformed = random_deformation((64, 64), seed=1).warp(img)
        >>> deformed.shape
        (64, 64)
        """
        fld = self.inverse if inverse else self.displacement
        if isinstance(image, Image):
            if image.sdim != fld.sdim or image.spatial_shape != fld.spatial_shape:
                raise ShapeError(f"image: got spatial shape {image.spatial_shape}; expected {fld.spatial_shape} "
                                 "(the deformation's grid)")
            if not np.allclose(image.spacing, fld.spacing, rtol=1e-5):
                raise GeometryError(f"image: got spacing {image.spacing}; expected {fld.spacing} (the deformation's)")
            on_grid = Image(fld.array, spacing=image.spacing, origin=image.origin, direction=image.direction,
                            axes=fld.axes, meta=fld.meta)
            return warp(image, on_grid, mode=mode, padding=padding)
        shape = getattr(image, "shape", None)
        if shape is None or tuple(shape[-fld.sdim:]) != fld.spatial_shape:
            raise ShapeError(f"image: got shape {shape}; expected (..., {', '.join(map(str, fld.spatial_shape))})")
        return warp(image, fld.array, spacing=fld.spacing, mode=mode, padding=padding, sdim=fld.sdim)

    def to_dict(self, arrays: bool = False) -> dict:
        """Parameters and measurements as JSON-able values (``arrays=True`` adds the fields).

        Parameters
        ----------
        arrays : bool, optional
            Also include the arrays (default False).

        Returns
        -------
        dict
            JSON-ready values.
        """
        out = {
            "shape": list(self.shape), "spacing": list(self.spacing), "seed": self.seed,
            "smoothness_mm": self.smoothness, "diffeomorphic": self.diffeomorphic,
            "requested_max_displacement_mm": self.requested_max_displacement,
            "max_displacement_mm": self.max_displacement, "min_jacobian": self.min_jacobian,
        }
        if arrays:
            out["displacement"] = self.displacement.numpy()
            out["inverse"] = self.inverse.numpy()
            out["velocity"] = None if self.velocity is None else self.velocity.numpy()
        return out


def random_deformation(shape, max_displacement: float = 4.0, smoothness: float | None = None,
                       spacing=None, seed: int = 0, diffeomorphic: bool = True,
                       steps: int = 7) -> RandomDeformation:
    """A random smooth deformation with a prescribed largest displacement.

    Construction: white noise ``(d, *shape)`` from ``numpy.random.default_rng(seed)``
    -> Gaussian smoothing with ``sigma = smoothness`` mm -> scaled velocity ``v`` ->
    ``u = exp(v)`` by scaling and squaring (:func:`biomip.ops.integrate_velocity`);
    the scale is refined until ``max |u|`` equals ``max_displacement`` (to < 1 %).
    The inverse is ``exp(-v)``.

    Parameters
    ----------
    shape : sequence of int or Image
        Spatial shape ``(ny, nx)`` or ``(nz, ny, nx)``, or a reference
        :class:`~biomip.Image` whose grid (shape, spacing, origin, direction) the fields
        then live on, so ``biomip.ops.warp(image, deformation.displacement)`` works directly.
    max_displacement : float, optional
        Largest displacement length in mm (>= 0).
    smoothness : float, optional
        Standard deviation (mm) of the Gaussian that smooths the noise: the
        length scale of the deformation.  Default: 1/8 of the smallest physical extent
        (at least 2 voxels).  Keep ``max_displacement`` below about ``smoothness`` for
        a mild deformation.
    spacing : sequence of float, optional
        Voxel size (x, y, [z]) in mm (default 1).
    seed : int, optional
        Integer seed; the same arguments give the same field on every machine.
    diffeomorphic : bool, optional
        ``False`` uses the smoothed noise directly as the displacement
        (no velocity; the inverse by fixed-point iteration); it can fold when strong.
    steps : int, optional
        Scaling-and-squaring steps.

    Returns
    -------
    RandomDeformation
        :class:`RandomDeformation` with float32 Image fields on the grid (origin 0 and
        identity direction unless a reference image is given; ``meta["kind"] == "displacement"``).

    Examples
    --------
    >>> from biomip.data.deformation import random_deformation
    >>> deformation = random_deformation((64, 64), max_displacement=3.0, seed=7)
    >>> abs(deformation.max_displacement - 3.0) < 0.1, deformation.min_jacobian > 0
    (True, True)
    """
    reference = None
    if isinstance(shape, Image):  # fields on this image's grid (origin, direction, spacing)
        reference = shape
        if spacing is not None and not np.allclose(check_spacing(spacing, reference.sdim), reference.spacing):
            raise GeometryError(f"spacing: got {spacing!r} and a reference image with spacing "
                                f"{reference.spacing}; give one of them")
        shape, spacing = reference.spatial_shape, reference.spacing
    shp = check_shape(shape, min_size=2)
    d = len(shp)
    sp = check_spacing(spacing, d)
    if isinstance(max_displacement, bool) or not isinstance(max_displacement, (int, float, np.integer, np.floating)) \
            or not np.isfinite(max_displacement) or max_displacement < 0:
        raise InputError(f"max_displacement: got {max_displacement!r}; expected a finite number >= 0 (mm)")
    extent = min(n * s for n, s in zip(shp[::-1], sp))
    if smoothness is None:
        smoothness = max(extent / 8.0, 2.0 * max(sp))
    if isinstance(smoothness, bool) or not isinstance(smoothness, (int, float, np.integer, np.floating)) \
            or not np.isfinite(smoothness) or smoothness <= 0:
        raise InputError(f"smoothness: got {smoothness!r}; expected a positive length in mm")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed: got {seed!r}; expected an integer")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise InputError(f"steps: got {steps!r}; expected an integer >= 0")
    rng = np.random.default_rng(int(seed))
    noise = rng.standard_normal((d, *shp))
    smooth = np.asarray(gaussian_smooth(noise, float(smoothness), spacing=sp, sdim=d), dtype=np.float64)
    base = smooth / max(_max_norm(smooth), 1e-12)            # max |base| = 1
    target = float(max_displacement)
    geom = {"spacing": sp, "axes": "c" + "zyx"[-d:]}

    if diffeomorphic:
        scale = target
        u = integrate_velocity(scale * base, spacing=sp, steps=int(steps), sdim=d)
        for _ in range(8):
            m = _max_norm(u)
            if target == 0 or m == 0 or abs(m - target) <= 1e-4 * target:
                break
            scale *= target / m
            u = integrate_velocity(scale * base, spacing=sp, steps=int(steps), sdim=d)
        v = scale * base
        inv = integrate_velocity(-v, spacing=sp, steps=int(steps), sdim=d)
        velocity = Image(v.astype(np.float32), meta={"kind": "velocity"}, **geom)
    else:
        u = target * base
        inv = invert_displacement(u, spacing=sp, sdim=d)
        velocity = None
    meta = {"kind": "displacement", "generator": "random_deformation", "seed": int(seed)}
    if reference is not None:
        # built in the grid's own axes; rotate the vectors into the world frame
        rot = np.asarray(reference.direction, dtype=np.float64)
        turn = (lambda f: None if f is None else np.einsum("ck,k...->c...", rot, np.asarray(f, np.float64)))
        u, inv = turn(u), turn(inv)
        geom.update(origin=reference.origin, direction=reference.direction)
        if velocity is not None:
            velocity = Image(turn(velocity.numpy()).astype(np.float32), meta={"kind": "velocity"}, **geom)
    return RandomDeformation(
        displacement=Image(np.asarray(u, dtype=np.float32), meta=meta, **geom),
        inverse=Image(np.asarray(inv, dtype=np.float32), meta=dict(meta, inverse=True), **geom),
        velocity=velocity,
        max_displacement=_max_norm(u),
        min_jacobian=jacobian_min(u, sp),
        seed=int(seed), smoothness=float(smoothness), diffeomorphic=bool(diffeomorphic),
        requested_max_displacement=target,
    )
