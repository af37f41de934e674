"""``biomip serve [FOLDER]``: the browser app on a workspace folder (the ``app`` extra)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.errors import InputError


def serve_cmd(
        folder: Path = typer.Argument(Path("."), metavar="FOLDER",
                                      help="Workspace folder: its images (NIfTI, DICOM files and series folders, "
                                           "TIFF, PNG, JPEG, NPY, NPZ, OME-Zarr) are listed; labels, the training set and models go to "
                                           "FOLDER/.biomip/. Default: the current folder."),
        port: int = typer.Option(8000, help="Port (0: any free port; the URL is printed)."),
        host: str = typer.Option("127.0.0.1", help="Address to bind. The default is reachable from this machine "
                                                   "only; another address (0.0.0.0: every interface) requires a "
                                                   "token, generated and printed when --token is not given."),
        token: str | None = typer.Option(None, help="Access token (at least 8 characters); the API then needs it "
                                                    "(the printed URL carries it as ?token=...).",
                                         envvar="BIOMIP_SERVE_TOKEN"),
        open_browser: bool = typer.Option(False, "--open/--no-open", help="Open the page in the default browser."),
        max_upload_mb: float = typer.Option(512, "--max-upload-mb", help="Largest upload (labels, images), MiB; "
                                                                         "larger requests get 413.")):
    """Serve FOLDER in the browser: view any volume with its geometry, segment (threshold, region
    growing, brush, any biomip.segment method, trained flows / U-Net models), correct, save
    versioned labels, fine-tune a model with live progress, register two images. Ctrl-C stops
    the server (running training jobs are cancelled). Needs the app extra: pip install 'biomip[app]'."""
    if not folder.exists():
        raise InputError(f"FOLDER: {str(folder)!r} does not exist; expected a folder of images")
    if not folder.is_dir():
        raise InputError(f"FOLDER: {str(folder)!r} is a file; expected a folder of images")
    if not 0 <= port <= 65535:
        raise InputError(f"--port: got {port}; expected 0..65535")
    if max_upload_mb <= 0:
        raise InputError(f"--max-upload-mb: got {max_upload_mb}; expected a positive number")
    from ..app.launch import serve

    serve(folder, host=host, port=port, token=token, open_browser=open_browser, max_upload_mb=max_upload_mb,
          echo=typer.echo)
