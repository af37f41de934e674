"""Scale-out on Dask (design layer ``batch/``): many files, and volumes larger than memory.

* :func:`run` (:mod:`.runner`): one task per input file (or per (fixed, moving) pair),
  results written atomically with the input's geometry, a ``manifest.json`` / ``.csv``
  with per-item status and time, resumable, retried, failures reported per item -- on a
  ``LocalCluster``, any Dask scheduler (SLURM / PBS through ``dask-jobqueue``), or in
  process (``scheduler="sync"``); the ``biomip batch`` command.
* :func:`map_blocks`, :func:`smooth`, :func:`label`, :func:`predict` (:mod:`.chunked`): a
  function on every chunk of an OME-Zarr (or in-memory) volume with a halo, connected
  components merged across chunk borders, U-Net inference on the whole volume's window
  grid chunk by chunk; :func:`register` / :func:`warp`: a large pair registered on a coarse
  pyramid level, warped chunk by chunk at full resolution; results written chunk by chunk
  as OME-Zarr with a pyramid.
* :func:`make_client` (:mod:`.cluster`): the Dask client for ``local:N`` / an address,
  worker thread pools set so that the workers do not oversubscribe the cores.

Dask is the optional ``scale`` extra (``pip install 'biomip[scale]'``).  Submodules load
on first use.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
