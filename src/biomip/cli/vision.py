"""``biomip vision ...``: the computer-vision catalogue of chapters 4-5 from the command line.

* ``biomip vision study NAME``: one of the studies of :mod:`biomip.pipelines.vision` on
  real images (report.json + preview.png).

Registered by ``cli/main.py`` (``_register_vision``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import FullHelpGroup, cli_words, run_mode, run_study

vision_app = typer.Typer(cls=FullHelpGroup, no_args_is_help=True,
                         help="Computer vision (book ch. 4-5): classic features and keypoints, Shape DNA, "
                              "augmentation, detection, optical flow, metric learning, graph networks, "
                              "Gaussian splatting -- studies on real images.")


# ----------------------------------------------------------------------------- study
@vision_app.command("study")
@cli_words(name="NAME", seed="--seed", mode="--quick/--tiny/--full", out="--out")
def study_cmd(name: str = typer.Argument(..., metavar="NAME", help="features, shapedna, augment, detection, flow, "
                                                                   "metric, graph, splatting."),
              out: Path | None = typer.Option(None, "--out", help="Folder for report.json and preview.png "
                                                                  "(default: vision-NAME)."),
              quick: bool = typer.Option(False, "--quick", help="The documented figures (minutes on 2 cores); "
                                                                "the default."),
              tiny: bool = typer.Option(False, "--tiny", help="CI-sized (seconds; runs end to end, does not reach "
                                                              "the quick figures)."),
              full: bool = typer.Option(False, "--full", help="Larger data and models (a GPU or a long CPU run)."),
              seed: int = typer.Option(0, "--seed", min=0, help="Seed of the data and models."),
              progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                                   help="Progress bars (default: when stderr is a terminal)."),
              overwrite: bool = typer.Option(False, "--overwrite", help="Write into an --out folder that is not "
                                                                        "empty (default: refuse).")):
    """Run one study of the book's computer-vision catalogue on real images and print its figures.

    Each study writes report.json (a `methods` mapping from method name to its figures,
    the config, seeds and, where the issue states one, its targets) and preview.png."""
    from ..pipelines.vision import STUDIES, run

    run_study(name, STUDIES, run, out if out is not None else Path(f"vision-{name}"), run_mode(quick, tiny, full),
              seed, progress, overwrite)
