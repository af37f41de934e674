from . import jobs, launch, methods, server, workspace
from .jobs import Job, JobManager
from .launch import serve, serve_url
from .methods import METHODS, run_method
from .server import create_app
from .workspace import Workspace

__all__ = [
    "METHODS",
    "Job",
    "JobManager",
    "Workspace",
    "create_app",
    "jobs",
    "launch",
    "methods",
    "run_method",
    "serve",
    "serve_url",
    "server",
    "workspace",
]
