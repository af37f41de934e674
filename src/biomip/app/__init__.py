"""``biomip serve``: a local web app to view, segment, correct and fine-tune in the browser.

* :class:`Workspace` (:mod:`.workspace`): the served folder -- image listing, versioned
  atomic label saves, the training set, trained model versions, path safety;
* :mod:`.methods`: the methods the page runs (``POST /infer/{method}``) with their
  parameter schemas, each the biomip function of the same name;
* :mod:`.jobs`: training in background threads, one job per model, cancellable, progress
  events for Server-Sent Events;
* :func:`create_app` (:mod:`.server`): the FastAPI application; :func:`serve` runs it
  with uvicorn (the ``biomip serve`` command).

FastAPI and uvicorn are the optional ``app`` extra (``pip install 'biomip[app]'``); the
workspace, methods and jobs work without them.  Submodules load on first use.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
