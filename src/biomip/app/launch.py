"""Run the app with uvicorn: :func:`serve` is what ``biomip serve`` calls."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import sys

from ..core.errors import InputError

__all__ = ["serve", "serve_url", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``.

    Parameters
    ----------
    host : str
        A host name or IP address.

    Returns
    -------
    bool
        True for ``localhost``, ``127.x.x.x`` and ``::1``.

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("localhost")
    (True, False, True)
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_url(host: str, port: int, token: str | None = None) -> str:
    """The URL to open: ``http://HOST:PORT/`` (with ``?token=T``).

    A wildcard address (``0.0.0.0``, ``::``) is written as this machine's host name.

    Parameters
    ----------
    host : str
        The address the server binds.
    port : int
        The port.
    token : str or None, optional
        The access token.

    Returns
    -------
    str
        The URL.

    Examples
    --------
    >>> serve_url("127.0.0.1", 8000)
    'http://127.0.0.1:8000/'
    >>> serve_url("::1", 8000, "abc")
    'http://[::1]:8000/?token=abc'
    """
    name = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    if ":" in name:
        name = f"[{name}]"
    return f"http://{name}:{int(port)}/" + (f"?token={token}" if token else "")


def serve(folder=".", *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          open_browser: bool = False, max_upload_mb: float = 512, log_level: str = "warning",
          echo=None) -> None:
    """Serve a workspace folder in the browser until interrupted (Ctrl-C).

    The server binds ``host`` (default the loopback address: only this machine can
    connect).  Any other address needs a token: one is generated
    (:func:`secrets.token_urlsafe`) when none is given, and the URL to open, ending in
    ``?token=...``, is printed, as Jupyter does.  Stopping the server cancels the
    running training jobs and waits for them.

    Parameters
    ----------
    folder : str or pathlib.Path, optional
        The workspace folder (must exist).
    host : str, optional
        The address to bind (``0.0.0.0``: every interface).
    port : int, optional
        The port (0: a free one, printed).
    token : str or None, optional
        The access token (required by every API route when set).
    open_browser : bool, optional
        Open the page in the default browser.
    max_upload_mb : float, optional
        Largest upload, MiB.
    log_level : str, optional
        uvicorn's log level.
    echo : callable or None, optional
        Where the URL lines go (default ``print`` to stdout).

    Raises
    ------
    InputError
        For a missing folder, an empty token or a port outside 0..65535.
    MissingDependencyError
        Without FastAPI / uvicorn (``pip install 'biomip[app]'``).

    Examples
    --------
    >>> serve("my-images", host="0.0.0.0")        # doctest: +SKIP
    biomip serve: http://workstation:8000/?token=...
    """
    from .server import create_app
    from .workspace import Workspace

    echo = echo or (lambda s: print(s, flush=True))
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"--port: got {port!r}; expected 0..65535")
    if token is not None and len(token) < 8:
        raise InputError("--token: got a token shorter than 8 characters; give a longer one (or none: one is "
                         "generated)")
    ws = Workspace(folder)
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    app = create_app(ws, token=token, max_upload_mb=max_upload_mb,
                     allowed_hosts=None if token else ["127.0.0.1", "localhost", "::1", host])
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - fastapi without uvicorn
        from ..core.errors import MissingDependencyError

        raise MissingDependencyError("biomip serve needs uvicorn: pip install 'biomip[app]'") from exc
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)            # connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        sock.close()
        raise InputError(f"--host/--port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:                             # the socket is closed whatever happens from here
        port = sock.getsockname()[1]
        url = serve_url(host, port, token)
        n = len(ws.images())
        bad = ws.skipped_list()
        unreadable = ""
        if bad:
            shown = ", ".join(b["path"] for b in bad[:3]) + (", ..." if len(bad) > 3 else "")
            unreadable = f", {len(bad)} unreadable: {shown} -- see the page"
        echo(f"biomip serve: {ws.root} ({n} image{'s' if n != 1 else ''}{unreadable})")
        echo(f"biomip serve: open {url}")
        if not is_loopback(host):
            echo(f"biomip serve: or http://127.0.0.1:{port}/?token={token} on this machine")
        echo("biomip serve: press Ctrl-C to stop")
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3, access_log=False)
        server = uvicorn.Server(config)
        app.state.should_exit = lambda: server.should_exit    # event streams end at once on Ctrl-C
        if open_browser:
            import threading
            import webbrowser

            threading.Timer(1.0, lambda: webbrowser.open(url.replace("0.0.0.0", "127.0.0.1"))).start()
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:    # uvicorn re-raises the Ctrl-C it handled: the normal way to stop
            pass
    finally:
        sock.close()
    echo("biomip serve: stopped")
    sys.stdout.flush()
