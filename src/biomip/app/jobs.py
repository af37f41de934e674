"""Background jobs of ``biomip serve``: model training off the request thread, one job at a
time per model, cancellable, with every progress event kept for late subscribers.

A job runs ``fn(job)`` in a daemon thread.  ``fn`` reports with :meth:`Job.emit` and polls
:attr:`Job.cancelled` (the trainers' per-step callbacks return True to stop, so a cancel
lands after the optimiser step in progress).  Events are dicts ``{"job", "model", "seq",
"time", "status", "type", "epoch", "epochs", "step", "steps_total", "loss", "metric",
"message", ...}``; the status goes ``queued`` -> ``running`` -> ``done`` | ``cancelled`` |
``failed``.

:func:`training_job` builds the ``fn`` that trains a flows or U-Net model on the
workspace's training set and saves a new model version with what it saw.  While it
trains it emits ``type: "step"`` events (the loss of one optimiser step; at most
:data:`STEP_EVENTS_PER_SECOND` a second, the last step of every epoch and the step a
cancel stopped at always) and ``type: "epoch"`` events (the epoch's mean loss and the
metric: the Dice on the held-out image, or on the training images).
"""

from __future__ import annotations

import secrets
import threading
import time
import traceback
from collections.abc import Callable

import numpy as np

from ..core.errors import BiomipError, InputError
from .methods import grey
from .workspace import ConflictError, NotFoundError, check_model_name

__all__ = ["Job", "JobManager", "STEP_EVENTS_PER_SECOND", "TRAIN_PARAMS", "check_train_request",
           "training_job"]

TERMINAL = ("done", "cancelled", "failed")

STEP_EVENTS_PER_SECOND = 10.0
"""At most this many ``step`` events a second per job (the SSE stream stays light when
steps are fast); the last step of an epoch and the one a cancel stopped at are always sent."""


class Job:
    """One background job and its events.

    Parameters
    ----------
    key : str
        What the job works on (the model name); one running job per key.
    kind : str
        ``"flows"`` or ``"unet"`` (free text for other jobs).

    Examples
    --------
    >>> job = Job("m", "flows")
    >>> job.emit("running", epoch=1, loss=0.5)["loss"]
    0.5
    >>> job.state()["status"], job.done
    ('running', False)
    """

    def __init__(self, key: str, kind: str):
        self.id = secrets.token_hex(4)
        self.key = key
        self.kind = kind
        self.status = "queued"
        self.events: list[dict] = []
        self.thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._cancel = threading.Event()

    @property
    def cancelled(self) -> bool:
        """Whether a cancel was asked for."""
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        """Whether the job has ended (done, cancelled or failed)."""
        return self.status in TERMINAL

    def cancel(self) -> None:
        """Ask the job to stop (it stops at its next check: a training job after the
        optimiser step in progress)."""
        self._cancel.set()

    def emit(self, status: str | None = None, **fields) -> dict:
        """Record an event (and a new status) and wake up the subscribers.

        Parameters
        ----------
        status : str or None, optional
            The new status; ``None`` keeps the current one.
        **fields
            ``type`` (``"status"`` by default; ``"step"``, ``"epoch"``), ``epoch``, ``epochs``,
            ``step``, ``steps_total``, ``loss``, ``metric``, ``message``, ...  ``epoch``,
            ``epochs``, ``step``, ``steps_total``, ``loss`` and ``metric`` carry over from the
            previous event when not given.

        Returns
        -------
        dict
            The event.
        """
        with self._cond:
            if self.done:          # nothing after a terminal event
                return self.events[-1]
            if status is not None:
                self.status = status
            ev = {"job": self.id, "model": self.key, "kind": self.kind, "seq": len(self.events), "time": time.time(),
                  "status": self.status, "type": "status", "epoch": None, "epochs": None, "step": None,
                  "steps_total": None, "loss": None, "metric": None, "message": ""}
            last = self.events[-1] if self.events else {}
            for k in ("epoch", "epochs", "step", "steps_total", "loss", "metric"):     # the state carries over
                if last.get(k) is not None:
                    ev[k] = last[k]
            ev.update(fields)
            self.events.append(ev)
            self._cond.notify_all()
            return ev

    def state(self) -> dict:
        """The current state: a copy of the last event.

        Returns
        -------
        dict
            The last event.
        """
        with self._cond:
            return dict(self.events[-1]) if self.events else {"job": self.id, "model": self.key, "status": self.status}

    def wait_events(self, after: int, timeout: float = 1.0) -> list[dict]:
        """The events with ``seq > after``, waiting up to ``timeout`` seconds for one.

        Parameters
        ----------
        after : int
            The last sequence number seen (-1: all).
        timeout : float, optional
            Seconds to wait when there is nothing new.

        Returns
        -------
        list of dict
            The new events (possibly empty).
        """
        with self._cond:
            if len(self.events) <= after + 1 and not self.done:
                self._cond.wait(timeout)
            return [dict(e) for e in self.events[after + 1:]]


class JobManager:
    """The jobs of one server: one running job per key, cancellable, shut down cleanly.

    Examples
    --------
    >>> jobs = JobManager()
    >>> job = jobs.start("m", "demo", lambda j: {"message": "hello"})
    >>> job.thread.join(5)
    >>> jobs.get("m").state()["status"], jobs.get("m").state()["message"]
    ('done', 'hello')
    """

    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.closed = False

    def start(self, key: str, kind: str, fn: Callable) -> Job:
        """Start ``fn(job)`` in a background thread.

        ``fn`` returns a dict of fields for the final ``done`` event (or None); raising
        gives a ``failed`` event with the message; returning after a cancel gives
        ``cancelled``.

        Parameters
        ----------
        key : str
            The model name.
        kind : str
            The job kind.
        fn : callable
            The work.

        Returns
        -------
        Job
            The job (status ``queued``, then ``running``).

        Raises
        ------
        ConflictError
            When a job for ``key`` is still running, or the manager is shut down.
        """
        with self._lock:
            if self.closed:
                raise ConflictError("server: shutting down; no new jobs")
            old = self._jobs.get(key)
            if old is not None and not old.done:
                raise ConflictError(f"model: a {old.kind} job ({old.id}) for {key!r} is running; cancel it with "
                                    f"DELETE /train/{key} or wait")
            job = Job(key, kind)
            job.emit("queued", message=f"{kind} job queued")
            self._jobs[key] = job
            job.thread = threading.Thread(target=self._run, args=(job, fn), name=f"biomip-job-{key}", daemon=True)
            job.thread.start()
            return job

    @staticmethod
    def _run(job: Job, fn: Callable) -> None:
        try:
            if job.cancelled:
                job.emit("cancelled", message="cancelled before it started")
                return
            job.emit("running", message="started")
            out = fn(job) or {}
            if job.cancelled:
                job.emit("cancelled", message="cancelled; no model saved")
            else:
                job.emit("done", **{"message": "done", **out})
        except BiomipError as exc:
            job.emit("failed", message=str(exc))
        except Exception as exc:     # a bug: keep the server alive, say what happened
            job.emit("failed", message=f"{type(exc).__name__}: {exc}",
                     traceback=traceback.format_exc(limit=5)[-2000:])

    def find(self, key: str) -> Job | None:
        """The latest job for ``key``, or None when there was none since the server started.

        Parameters
        ----------
        key : str
            The model name.

        Returns
        -------
        Job or None
            The job.

        Examples
        --------
        >>> JobManager().find("nuclei") is None
        True
        """
        with self._lock:
            return self._jobs.get(key)

    def get(self, key: str) -> Job:
        """The latest job for ``key``.

        Parameters
        ----------
        key : str
            The model name.

        Returns
        -------
        Job
            The job.

        Raises
        ------
        NotFoundError
            When there was never a job for ``key``.
        """
        job = self.find(key)
        if job is None:
            raise NotFoundError(f"model: no training job for {key!r} since the server started")
        return job

    def cancel(self, key: str) -> Job:
        """Cancel the job for ``key`` (a finished job is left as it is).

        Parameters
        ----------
        key : str
            The model name.

        Returns
        -------
        Job
            The job.
        """
        job = self.get(key)
        job.cancel()
        return job

    def cancel_all(self) -> list[Job]:
        """Cancel every running job.

        Returns
        -------
        list of Job
            The jobs that were running.
        """
        with self._lock:
            running = [j for j in self._jobs.values() if not j.done]
        for j in running:
            j.cancel()
        return running

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Refuse new jobs, cancel the running ones and wait for their threads.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait in all.

        Returns
        -------
        bool
            Whether every job thread ended in time.
        """
        with self._lock:
            self.closed = True
        end = time.monotonic() + timeout
        for j in self.cancel_all():
            if j.thread is not None:
                j.thread.join(max(0.0, end - time.monotonic()))
        with self._lock:
            return all(j.thread is None or not j.thread.is_alive() for j in self._jobs.values())


# ------------------------------------------------------------------------ training
TRAIN_PARAMS = {
    "flows": {"lr": (float, 5e-4, 1e-7, 1.0), "iterations_per_epoch": (int, 10, 1, 1000),
              "batch_size": (int, 4, 1, 64), "patch_size": (int, 128, 16, 512), "features": (list, None, None, None),
              "augment": (bool, True, None, None), "seed": (int, 0, 0, 2**31 - 1), "channel": (int, 0, 0, 255),
              "holdout": (bool, None, None, None)},
    "unet": {"lr": (float, 2e-3, 1e-7, 1.0), "iterations_per_epoch": (int, 10, 1, 1000),
             "batch_size": (int, 2, 1, 64), "patch_size": (int, 128, 16, 512), "features": (list, None, None, None),
             "augment": (bool, True, None, None), "seed": (int, 0, 0, 2**31 - 1), "channel": (int, 0, 0, 255),
             "binary": (bool, False, None, None), "holdout": (bool, None, None, None)},
}
"""Training parameters per kind: ``name: (type, default, min, max)``.  ``holdout``: keep the
last training-set image for the validation metric (default: when there are >= 2 images;
else the metric is measured on the training images)."""


def _check_param(name, v, spec):
    typ, _, lo, hi = spec
    if typ is bool:
        if not isinstance(v, bool):
            raise InputError(f"params.{name}: got {v!r}; expected true or false")
        return v
    if typ is list:
        if not isinstance(v, list) or not 1 <= len(v) <= 6 or not all(
                isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 512 for x in v):
            raise InputError(f"params.{name}: got {v!r}; expected 1 to 6 channel counts (1..512), e.g. [16, 32, 64]")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise InputError(f"params.{name}: got {v!r}; expected a number")
    if typ is int:
        if not float(v).is_integer():
            raise InputError(f"params.{name}: got {v!r}; expected an integer")
        v = int(v)
    else:
        v = float(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InputError(f"params.{name}: got {v!r}; expected {lo} <= {name} <= {hi}")
    return v


def check_train_request(workspace, model: str, body: dict) -> dict:
    """Check a ``POST /train/{model}`` request before a job starts (4xx errors come at once).

    Parameters
    ----------
    workspace : Workspace
        The workspace.
    model : str
        The model name.
    body : dict
        ``{"kind": "flows" | "unet", "epochs": int, "base": version | null, "params": {...}}``;
        ``kind`` defaults to the existing model's kind, else ``"flows"``; ``base``
        ``"latest"`` is the newest version.

    Returns
    -------
    dict
        ``model``, ``kind``, ``epochs``, ``base`` (int or None), ``params`` (complete),
        ``data`` (the training set).

    Raises
    ------
    InputError
        For a bad name, kind, epochs, base or parameter, an empty training set, or one
        that mixes 2-D and 3-D images or holds an image that cannot be read.
    NotFoundError
        For a base version that does not exist.

    Examples
    --------
    >>> import tempfile
    >>> from biomip.app import Workspace
    >>> check_train_request(Workspace(tempfile.mkdtemp()), "nuclei", {"epochs": 2})
    Traceback (most recent call last):
    ...
    biomip.core.errors.InputError: training set: empty; save labels for an image and add it (POST /training-set/{id})
    """
    check_model_name(model)
    if not isinstance(body, dict):
        raise InputError(f"body: got {type(body).__name__}; expected a JSON object")
    unknown = sorted(set(body) - {"kind", "epochs", "base", "params"})
    if unknown:
        raise InputError(f"body: unknown field(s) {', '.join(unknown)}; expected kind, epochs, base, params")
    existing = workspace.models().get(model)
    kind = body.get("kind") or (existing or {}).get("kind") or "flows"
    if kind not in TRAIN_PARAMS:
        raise InputError(f"kind: got {kind!r}; expected 'flows' or 'unet'")
    if existing and existing["kind"] != kind:
        raise InputError(f"kind: model {model!r} is a {existing['kind']} model; got {kind!r}")
    epochs = body.get("epochs", 5)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 10000:
        raise InputError(f"epochs: got {epochs!r}; expected an integer 1..10000")
    base = body.get("base")
    if base == "latest":
        base = existing["versions"][-1] if existing else None
    if base is not None:
        if isinstance(base, bool) or not isinstance(base, int):
            raise InputError(f"base: got {base!r}; expected a version number, 'latest' or null")
        versions = (existing or {}).get("versions") or []
        if base not in versions:
            raise NotFoundError(f"base: got {base!r}; " + (f"model {model!r} has versions {versions}" if versions
                                                          else f"model {model!r} has no trained version yet; "
                                                          "use base null to train a new model"))
        workspace.model_path(model, base)
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise InputError(f"params: got {type(params).__name__}; expected a JSON object")
    spec = TRAIN_PARAMS[kind]
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise InputError(f"params: {kind} training has no parameter {', '.join(unknown)}; expected some of "
                         f"{', '.join(spec)}")
    full = {k: (_check_param(k, params[k], s) if params.get(k) is not None else s[1]) for k, s in spec.items()}
    data = workspace.training_set()
    if not data:
        raise InputError("training set: empty; save labels for an image and add it (POST /training-set/{id})")
    by_dim: dict[int, list[str]] = {}
    for item in data:
        info = workspace.describe(item["image"])
        if "error" in info:
            raise InputError(f"training set: image {item['image']!r} cannot be read ({info['error']}); remove it "
                             f"(DELETE /training-set/{item['image']})")
        by_dim.setdefault(int(info["ndim"]), []).append(item["image"])
    if len(by_dim) > 1:
        groups = "; ".join(f"{d}-D: {', '.join(map(repr, ids))}" for d, ids in sorted(by_dim.items()))
        raise InputError(f"training set: mixes 2-D and 3-D images ({groups}); a model is trained on one kind, so "
                         "remove the images of the other (DELETE /training-set/{id})")
    return {"model": model, "kind": kind, "epochs": epochs, "base": base, "params": full, "data": data}


def _fg_dice(pred, truth) -> float:
    from ..metrics import dice

    return float(dice(np.asarray(pred) > 0, np.asarray(truth) > 0))


def training_job(workspace, request: dict) -> Callable:
    """The work of a training job: load the training set, train with progress events,
    save a new model version.

    Events while it trains (besides the status ones): ``type: "step"`` after optimiser
    steps (``step`` counted from 1 over the whole training, ``steps_total``, ``loss`` of
    that step; at most :data:`STEP_EVENTS_PER_SECOND` a second, always the last step of an
    epoch and the step a cancel stopped at), and ``type: "epoch"`` after every epoch
    (``epoch`` = epochs complete, ``step``, ``loss`` = the epoch's mean loss, ``metric`` =
    ``{"name": "dice", "value", "on"}``: the Dice on the held-out image, or on the training
    images when nothing is held out, as ``on`` says).  ``epoch`` in a step event is still the number of epochs
    complete.  A cancel stops the training after the step in progress; nothing is saved.

    Parameters
    ----------
    workspace : Workspace
        The workspace.
    request : dict
        From :func:`check_train_request`.

    Returns
    -------
    callable
        ``fn(job)`` for :meth:`JobManager.start`; it returns the final event's fields
        (``version``, ``metric``) or None when cancelled.

    Examples
    --------
    >>> request = check_train_request(workspace, "nuclei", {"kind": "flows", "epochs": 5})   # doctest: +SKIP
    >>> job = JobManager().start("nuclei", "flows", training_job(workspace, request))         # doctest: +SKIP
    >>> job.thread.join(); job.state()["version"]                                              # doctest: +SKIP
    1
    """

    def run(job: Job):
        from ..nn import UNet
        from ..segment import predict, predict_instances, train_flows, train_unet

        kind, p, epochs = request["kind"], request["params"], request["epochs"]
        data = request["data"]
        images, labels = [], []
        for item in data:
            images.append(grey(workspace.read(item["image"]), p["channel"]))
            labels.append(workspace.read_labels(item["image"], item["version"]).numpy())
            if job.cancelled:
                return None
        holdout = p["holdout"] if p["holdout"] is not None else len(images) >= 2
        if holdout and len(images) < 2:
            raise InputError("params.holdout: needs at least 2 images in the training set")
        train_idx = list(range(len(images) - 1)) if holdout else list(range(len(images)))
        val_idx = [len(images) - 1] if holdout else train_idx
        on = "held-out image" if holdout else "training images"
        model = None
        if request["base"] is not None:
            model = UNet.load(workspace.model_path(request["model"], request["base"]), device="cpu")
        sdim = images[0].sdim
        patch = [min(p["patch_size"], s) for s in images[0].spatial_shape]
        if sdim == 3:
            patch = [min(ps, 64) for ps in patch]
        ipe = p["iterations_per_epoch"]
        job.emit(message=f"training {kind} on {len(train_idx)} image(s); metric: dice on {on}", epochs=epochs,
                 epoch=0, step=0, steps_total=epochs * ipe)
        history = []
        last_sent = [-np.inf]            # monotonic time of the last step event

        def on_step(step: int, loss: float) -> bool:
            stop = job.cancelled
            now = time.monotonic()
            if stop or step % ipe == 0 or now - last_sent[0] >= 1.0 / STEP_EVENTS_PER_SECOND:
                last_sent[0] = now
                job.emit(type="step", step=step, loss=loss)
            return stop

        def metric(net) -> float:
            vals = []
            for i in val_idx:
                if kind == "flows":
                    pred, _ = predict_instances(net, images[i])
                else:
                    pred = predict(net, images[i], progress=False)
                vals.append(_fg_dice(pred.numpy() if hasattr(pred, "numpy") else pred, labels[i]))
            return float(np.mean(vals))

        def callback(epoch, net, rec):
            if job.cancelled:
                return True
            value = metric(net)
            net.train()
            rec = {k: v for k, v in rec.items() if isinstance(v, (int, float, type(None)))}
            history.append({**rec, "metric": value})
            job.emit(type="epoch", epoch=epoch + 1, epochs=epochs, step=(epoch + 1) * ipe, loss=float(rec["loss"]),
                     metric={"name": "dice", "value": value, "on": on}, seconds=rec.get("seconds"))
            return job.cancelled

        xs = [images[i] for i in train_idx]
        ys = [labels[i] for i in train_idx]
        common = {"epochs": epochs, "lr": p["lr"], "batch_size": p["batch_size"],
                  "iterations_per_epoch": ipe, "seed": p["seed"], "callback": callback, "step_callback": on_step,
                  "progress": False, "patch_size": patch}
        if kind == "flows":
            kw = {"augment": p["augment"]}
            if model is None and p["features"]:
                kw["features"] = tuple(p["features"])
            model, _ = train_flows(xs, ys, model=model, **common, **kw)
        else:
            kw = {"augment": p["augment"], "binary": p["binary"], "val_fraction": 0.0,
                  "early_stopping_patience": None, "device": "cpu"}
            if model is None and p["features"]:
                kw["features"] = tuple(p["features"])
            model, _ = train_unet(xs, ys, model=model, **common, **kw)
        if job.cancelled:
            return None
        final = history[-1]["metric"] if history else metric(model)
        meta = {"kind": kind, "base": request["base"], "epochs": len(history),
                "data": [{"image": d["image"], "label_version": d["version"],
                          "role": "validation" if (holdout and i in val_idx) else "training"}
                         for i, d in enumerate(data)],
                "metric": {"name": "dice", "value": final, "on": on}, "params": p, "history": history}
        version = workspace.save_model(request["model"], model, meta)
        return {"version": version, "metric": meta["metric"], "message": f"saved {request['model']} v{version}"}

    return run
