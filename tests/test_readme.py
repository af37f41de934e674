"""Every code block of the README and the user guide runs as written.

* ```` ```python ```` blocks run **each on its own** (a fresh namespace, in an empty
  temporary working directory), so a reader can copy any one block into a new Python
  session: every name a block uses is imported or defined in that block.
* ```` ```bash ```` blocks: every line that starts with ``biomip `` runs through ``bash``
  with this environment's ``biomip`` first on ``PATH``, the lines of one block in order in
  one temporary directory (a block may use the files its earlier lines wrote).  Lines of
  other programs (``make``, ``pip``, ``python -m venv``, ``git``) are installation steps and
  are not run, nor is ``--full`` (a GPU-sized run).  ``text`` blocks are never run.
* A block identical to one already run (the user guide repeats README blocks) runs once;
  so does a bash block whose ``biomip`` lines, comments aside, are the first lines of an
  earlier block (they would repeat the same run in a fresh directory).
* No runnable block names ``"cuda"`` unless guarded on the same line
  (``"cuda" if torch.cuda.is_available() else "cpu"``): CI is a CPU-only machine.
  Comments may mention CUDA.
* A block that reads a sample from the optional sample packages is skipped (with the
  reason) when that package is not installed; ``make test`` installs them.

Opting a block out takes an HTML comment on the line(s) just before its fence, with a
reason: ``<!-- readme-test: slow (why) -->`` runs it only with ``-m slow`` (``make
test-all``), ``<!-- readme-test: skip (why) -->`` never.  Keep both rare: shrink an
example (fewer iterations, a smaller image) rather than opting it out.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*readme-test:\s*(\w+)\s*(?:\((.*?)\))?\s*-->\s*\Z", re.S)
NOT_RUN = ("--full",)                              # GPU-sized runs: stated, not run
BIN = Path(sys.executable).parent
# helpers that read sample files without naming them
SAMPLES_OF = {"mni152_pair": ("mni152-t1", "mni152-gm", "mni152-wm")}


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    marker: str | None = None
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"

    def commands(self) -> list[str]:
        """The ``biomip`` lines of a bash block."""
        return [ln.strip() for ln in self.code.splitlines()
                if ln.strip().startswith("biomip ") and not any(f in ln for f in NOT_RUN)]


def _blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    out, end = [], 0
    for m in FENCE.finditer(text):
        before = text[end:m.start()]
        end = m.end()
        mk = MARKER.search(before)
        b = Block(page, text.count("\n", 0, m.start()) + 1, m.group(1).lower(), m.group(2))
        if mk:
            b.marker, b.reason = mk.group(1), (mk.group(2) or "").strip()
        out.append(b)
    return out


ALL = [b for p in PAGES for b in _blocks(p)]


def _bare(command: str) -> str:
    """A ``biomip`` line without its trailing comment and extra spaces."""
    return " ".join(command.split(" #", 1)[0].split())


def _runnable() -> list[Block]:
    seen, ran, out = set(), [], []
    for b in ALL:
        if b.lang not in ("python", "bash"):
            continue
        key = (b.lang, b.code.strip())
        if key in seen:                                          # same block already runs
            continue
        seen.add(key)
        if b.lang == "bash":
            cmds = [_bare(c) for c in b.commands()]
            if not cmds:                                         # install steps only
                continue
            # the guide repeats README runs with other comments, or their first lines only:
            # the same commands in the same order in a fresh directory already ran
            if any(prev[:len(cmds)] == cmds for prev in ran):
                continue
            ran.append(cmds)
        out.append(b)
    return out


def _param(b: Block):
    marks = []
    if b.marker == "slow":
        marks.append(pytest.mark.slow)
    elif b.marker == "skip":
        marks.append(pytest.mark.skip(reason=b.reason))
    return pytest.param(b, id=b.id, marks=marks)


RUNNABLE = _runnable()
PYTHON = [_param(b) for b in RUNNABLE if b.lang == "python"]
BASH_BLOCKS = [b for b in RUNNABLE if b.lang == "bash"]
BASH = [_param(b) for b in BASH_BLOCKS]


def _samples_needed(b: Block) -> list[str]:
    import biomip

    names = {s.name for s in biomip.data.list()}
    used = set(re.findall(r"[\"']([\w-]+)[\"']", b.code)) | set(re.findall(r"data get ([\w-]+)", b.code))
    for helper, samples in SAMPLES_OF.items():
        if helper in b.code:
            used |= set(samples)
    return sorted(n for n in used & names if not biomip.data.get(n).available)


def _skip_without_samples(b: Block):
    missing = _samples_needed(b)
    if missing:
        pytest.skip(f"needs the sample packages (make test / requirements/samples.txt): {', '.join(missing)}")


# ------------------------------------------------------------------ checks without running
def test_pages_have_runnable_blocks():
    assert len(PYTHON) >= 8 and len(BASH) >= 3, "the README lost its examples (or the parser broke)"


@pytest.mark.parametrize("b", [pytest.param(b, id=b.id) for b in ALL if b.marker], )
def test_opt_outs_are_known_and_justified(b):
    assert b.marker in ("skip", "slow"), f"{b.id}: unknown marker readme-test: {b.marker}"
    assert len(b.reason) >= 10, f"{b.id}: readme-test: {b.marker} needs a reason in parentheses"


def test_every_bash_run_is_kept_or_repeats_a_kept_one():
    kept = [[_bare(c) for c in b.commands()] for b in BASH_BLOCKS]
    for b in ALL:
        cmds = [_bare(c) for c in b.commands()] if b.lang == "bash" else []
        if cmds:
            assert any(k[:len(cmds)] == cmds for k in kept), f"{b.id}: its biomip lines run nowhere"
    assert _bare("biomip run x --tiny   --out r   # a comment") == "biomip run x --tiny --out r"


def test_opt_outs_are_rare():
    # a block the user guide repeats from the README is one opt-out, not two
    assert len({b.code.strip() for b in ALL if b.marker == "skip"}) <= 2
    assert len({b.code.strip() for b in ALL if b.marker is not None}) <= 6


def _code_without_comments(b: Block) -> list[str]:
    if b.lang == "bash":
        return [ln.split("#", 1)[0] for ln in b.commands()]
    lines = b.code.splitlines()
    keep = [list(ln) for ln in lines]
    for tok in tokenize.generate_tokens(io.StringIO(b.code).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            keep[row - 1][col:] = []
    return ["".join(ln) for ln in keep]


@pytest.mark.parametrize("b", [pytest.param(b, id=b.id) for b in ALL if b.lang in ("python", "bash")])
def test_no_unguarded_cuda(b):
    bad = [ln.strip() for ln in _code_without_comments(b)
           if "cuda" in ln.lower() and "is_available()" not in ln]
    assert not bad, f"{b.id}: CI has no GPU; guard the device (\"cuda\" if torch.cuda.is_available() else " \
                    f"\"cpu\"): {bad}"


# ------------------------------------------------------------------ running
@pytest.mark.parametrize("b", PYTHON)
def test_python_block_runs(b, tmp_path, monkeypatch):
    _skip_without_samples(b)
    monkeypatch.chdir(tmp_path)
    code = compile(b.code, f"{b.page.name}:{b.line}", "exec")
    exec(code, {"__name__": "__main__"})              # as `python block.py` runs it


@pytest.mark.parametrize("b", BASH)
def test_bash_block_runs(b, tmp_path):
    _skip_without_samples(b)
    exe = BIN / "biomip"
    assert exe.exists(), f"{exe}: the biomip command is not installed in this environment"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for line in b.commands():
        r = subprocess.run(["bash", "-c", f"set -e -o pipefail\n{line}"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, f"{b.id}: `{line}` exited {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
