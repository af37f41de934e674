"""Generate the API reference pages from each package's ``__all__``.

``conf.py`` calls :func:`write_api` before Sphinx reads the sources: it writes one page per
package into ``docs/api/generated/`` (autosummary tables whose stubs autosummary then
generates next to them) and ``docs/api/generated/toctree.inc``, which ``docs/api/index.rst``
includes.  Nothing here is hand-copied: a name moved from one module to another, or a new
name in an ``__all__``, follows on the next build.

What a package page lists
-------------------------
1. every function and class of the package's ``__all__`` (dunder names such as
   ``__version__`` and module-level data such as ``FORMATS``, whose page would show the
   docstring of ``tuple``, are left to the package docstring);
2. then, per public submodule (a plain module, not a sub-package: sub-packages are pages of
   their own when ``conf.API_PACKAGES`` lists them, and are skipped otherwise, as
   ``biomip.core`` and ``biomip.cli`` are), the names of its ``__all__``
   that step 1 did not already cover.  A name that the package itself resolves to the same
   object (a lazy ``__getattr__`` re-export, as in :mod:`biomip.segment`) is documented
   under the package path (``biomip.segment.threshold``), any other under the submodule
   path (``biomip.reconstruct.serenet.SeReNet``).

Run as a script, it checks the docstrings with numpydoc's validator, the same checks as
the Sphinx build (``conf.NUMPYDOC_CHECKS``), and prints the failures per package::

    .venv/bin/python docs/apigen.py --check                 # summary
    .venv/bin/python docs/apigen.py --check --markdown      # DOCSTRING-TODO.md body
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Section:
    """One autosummary table: ``names`` documented under ``module``."""

    title: str                 # heading ('' for the package's own __all__)
    source: str                # module whose docstring introduces the section
    entries: list = field(default_factory=list)   # [(documented module path, name)]


def _documentable(obj):
    # functions and classes; module-level data (FORMATS, SAMPLES, ...) would show the
    # docstring of its type (tuple, dict, ndarray), so the package docstrings describe it
    return inspect.isroutine(obj) or inspect.isclass(obj)


def _key(obj, module, name):
    # functions and classes are recognised wherever they are re-exported; plain data by name
    if inspect.isroutine(obj) or inspect.isclass(obj):
        return ("obj", id(obj))
    return ("data", module, name)


def _public(name):
    return not name.startswith("_")


def package_sections(pkgname: str, packages) -> list[Section]:
    """Sections of the API page of ``pkgname`` (see the module docstring)."""
    pkg = importlib.import_module(pkgname)
    seen = set()
    top = Section("", pkgname)
    submodules = []
    for name in getattr(pkg, "__all__", ()):
        if name.startswith("__"):
            continue
        obj = getattr(pkg, name)
        if not inspect.ismodule(obj) and not _documentable(obj):
            continue
        if inspect.ismodule(obj):
            # a plain module named in __all__ is a section here (register.losses); a
            # sub-package is a page of its own only when API_PACKAGES lists it
            if obj.__name__ not in packages and not hasattr(obj, "__path__"):
                submodules.append(obj.__name__)
            continue
        top.entries.append((pkgname, name))
        seen.add(_key(obj, pkgname, name))
    sections = [top]
    if hasattr(pkg, "__path__"):
        for info in pkgutil.iter_modules(pkg.__path__):
            full = f"{pkgname}.{info.name}"
            if _public(info.name) and not info.ispkg and full not in submodules:
                submodules.append(full)
    for full in submodules:
        mod = importlib.import_module(full)
        sec = Section(full, full)
        for name in getattr(mod, "__all__", ()):
            if name.startswith("__"):
                continue
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or not _documentable(obj):
                continue
            key = _key(obj, full, name)
            if key in seen:
                continue
            seen.add(key)
            try:
                via_package = getattr(pkg, name) is obj
            except AttributeError:
                via_package = False
            sec.entries.append((pkgname if via_package else full, name))
        if sec.entries:
            sections.append(sec)
    return [s for s in sections if s.entries or not s.title]


def _underline(text, char):
    return f"{text}\n{char * len(text)}\n"


def homes(pages, packages, excluded=()) -> dict:
    """Where each object is documented: ``_key`` -> ``"module.name"``.

    An object listed on several pages (``biomip.read`` and ``biomip.io.read``,
    ``biomip.reconstruct.ParallelBeam`` and ``biomip.ops.ct.ParallelBeam``) is documented
    once, on the page of the most specific listed package that contains its defining
    module, else on the first page that lists it; the others link to it.
    """
    listed = {}
    for pkgname in pages:
        for sec in package_sections(pkgname, packages):
            for m, n in sec.entries:
                if f"{m}.{n}" in excluded:
                    continue
                obj = getattr(importlib.import_module(m), n)
                listed.setdefault(_key(obj, m, n), []).append((pkgname, f"{m}.{n}", obj))
    out = {}
    for key, where in listed.items():
        defined = getattr(where[0][2], "__module__", "") or ""
        inside = [w for w in where if defined == w[0] or defined.startswith(w[0] + ".")]
        best = max(inside, key=lambda w: len(w[0])) if inside else where[0]
        out[key] = best[1]
    return out


def package_page(pkgname: str, packages, excluded=(), home=None) -> str:
    """The reST of one package page.

    Names listed in ``excluded`` (``module.name``) are left out; an object whose
    ``home`` (see :func:`homes`) is another page is linked there instead of being
    documented twice.
    """
    home = home if home is not None else homes([pkgname], packages, excluded)
    out = [_underline(pkgname, "="), f".. automodule:: {pkgname}\n   :no-members:\n"]
    reexports = []
    for sec in package_sections(pkgname, packages):
        kept = []
        for m, n in sec.entries:
            if f"{m}.{n}" in excluded:
                continue
            target = home.get(_key(getattr(importlib.import_module(m), n), m, n), f"{m}.{n}")
            if target != f"{m}.{n}":
                reexports.append((f"{m}.{n}", target))
                continue
            kept.append((m, n))
        sec.entries = kept
        if sec.title and not sec.entries:
            continue
        if sec.title:
            out.append(_underline(f"``{sec.title}``", "-"))
            # a submodule shadowed by a function of the same name in the package
            # (biomip.register.lddmm, .variational) is one object path for Sphinx: the
            # function owns it, the module section only shows the module docstring
            attr = getattr(importlib.import_module(pkgname), sec.source.rpartition(".")[2], None)
            shadowed = attr is not None and not inspect.ismodule(attr)
            out.append(f".. automodule:: {sec.source}\n   :no-members:\n"
                       + ("   :no-index:\n" if shadowed else ""))
        by_module = {}
        for module, name in sec.entries:
            by_module.setdefault(module, []).append(name)
        for module, names in by_module.items():
            out.append(f".. currentmodule:: {module}\n")
            out.append(".. autosummary::\n   :toctree: .\n   :nosignatures:\n")
            out.extend(f"   {n}" for n in names)
            out.append("")
    if reexports:
        out.append(_underline("Re-exported", "-"))
        out.append("Also importable from here, documented on the page of the package that defines them: "
                   + ", ".join(f":obj:`{name} <{target}>`" for name, target in reexports) + ".\n")
    return "\n".join(out) + "\n"


def available(packages):
    """The listed packages that can be imported (a listed package not written yet is skipped)."""
    found = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"apigen: {name} does not exist yet; skipped", file=sys.stderr)
                continue
            raise
        found.append(name)
    return found


def write_api(outdir: Path, packages, excluded=()) -> list[str]:
    """Write one page per package and ``toctree.inc``; return the pages written.

    ``excluded`` holds package names (the page is not written) and documented object
    paths such as ``"biomip.Image"`` (that row is left out of its page).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    pages = []
    built = [p for p in available(packages) if p not in excluded]
    home = homes(built, packages, excluded)
    expected = {"toctree.inc", *(f"{path}.rst" for path in home.values())}
    for pkgname in built:
        expected.add(f"{pkgname}.rst")
        text = package_page(pkgname, packages, excluded, home)
        path = outdir / f"{pkgname}.rst"
        if not path.exists() or path.read_text() != text:    # keep mtimes: incremental builds
            path.write_text(text)
        pages.append(pkgname)
    for stale in outdir.iterdir():          # stubs of names that moved, or were excluded
        if stale.name not in expected:
            stale.unlink()
    toc = [".. toctree::", "   :maxdepth: 1", ""] + [f"   generated/{p}" for p in pages]
    inc = outdir / "toctree.inc"
    text = "\n".join(toc) + "\n"
    if not inc.exists() or inc.read_text() != text:
        inc.write_text(text)
    return pages


# ---------------------------------------------------------------- docstring check (script)
def documented_objects(pkgname: str, packages):
    """``(path, object)`` of everything the API page of ``pkgname`` renders: the module
    docstrings, every listed function and class, and the public methods and properties
    of the classes.  Objects are resolved as autodoc does (attribute of the parent), so a
    function named like its module (``biomip.io.sniff``) is the function."""
    for sec in package_sections(pkgname, packages):
        yield sec.source, importlib.import_module(sec.source)
        for module, name in sec.entries:
            path = f"{module}.{name}"
            obj = getattr(importlib.import_module(module), name)
            if inspect.isroutine(obj):
                yield path, obj
            elif inspect.isclass(obj):
                yield path, obj
                for attr, member in vars(obj).items():
                    if not _public(attr):
                        continue
                    if isinstance(member, (staticmethod, classmethod)):
                        yield f"{path}.{attr}", getattr(obj, attr)
                    elif inspect.isroutine(member) or isinstance(member, property):
                        yield f"{path}.{attr}", member


def _validate(nv, obj):
    """numpydoc's errors of one object; a module's docstring is only parsed for its sections."""
    import warnings

    if not inspect.ismodule(obj):
        return nv.validate(nv.get_doc_object(obj))["errors"]
    from numpydoc.docscrape import NumpyDocString

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        NumpyDocString(inspect.getdoc(obj) or "")
    return [("GL06", str(w.message)) for w in caught if "Unknown section" in str(w.message)]


def check(packages, checks):
    import numpydoc.validate as nv

    results = {}
    for pkgname in available(packages):
        fails = []
        total = 0
        for path, obj in documented_objects(pkgname, packages):
            total += 1
            errs = [(code, msg) for code, msg in _validate(nv, obj) if code in checks]
            if errs:
                fails.append((path, errs))
        results[pkgname] = (total, fails)
    return results


def todo_markdown(results, conf) -> str:
    """DOCSTRING-TODO.md: per package, the objects whose docstrings fail the checks."""
    excluded = conf.API_EXCLUDED_UNTIL_DOCSTRINGS_FIXED
    lines = ["# Docstrings to fix before their API pages can be built", "",
             "Generated by `.venv/bin/python docs/apigen.py --check --todo docs/DOCSTRING-TODO.md`.",
             "`make docs` builds the API reference with warnings as errors and numpydoc's checks",
             f"{', '.join(sorted(conf.NUMPYDOC_CHECKS))} (see `NUMPYDOC_CHECKS` in `docs/conf.py`: a docstring",
             "on every public function, class, method and property; every parameter documented as",
             "`name : type` plus an indented description; no unknown parameters or sections).",
             "The packages and objects below fail them, so `API_EXCLUDED_UNTIL_DOCSTRINGS_FIXED` in",
             "`docs/conf.py` keeps them out of the build for now: fix the docstrings, delete the entry",
             "there, run `make docs`.", "",
             "| package | objects checked | failing | excluded from the build |", "|---|---|---|---|"]
    for pkgname, (total, fails) in results.items():
        objs = sorted(e for e in excluded if e.startswith(pkgname + ".") and e.count(".") == pkgname.count(".") + 1)
        how = "whole package" if pkgname in excluded else (", ".join(f"`{e}`" for e in objs) if objs else "-")
        lines.append(f"| `{pkgname}` | {total} | {len(fails)} | {how} |")
    for pkgname, (total, fails) in results.items():
        if not fails:
            continue
        lines += ["", f"## `{pkgname}`: {len(fails)} of {total} objects fail", ""]
        for path, errs in fails:
            lines.append(f"- `{path}`")
            lines += [f"  - {c}: {m}" for c, m in errs]
    return "\n".join(lines) + "\n"


def main(argv=None):
    import argparse

    sys.path.insert(0, str(HERE))
    import conf  # noqa: E402  (the one list of packages and checks)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="validate the docstrings with numpydoc")
    ap.add_argument("--markdown", action="store_true", help="print the failures as Markdown")
    ap.add_argument("--todo", metavar="PATH", help="write the failures of the excluded packages and objects "
                    "(conf.API_EXCLUDED_UNTIL_DOCSTRINGS_FIXED) as a Markdown to-do list to PATH")
    ap.add_argument("packages", nargs="*", help="default: conf.API_PACKAGES")
    args = ap.parse_args(argv)
    packages = args.packages or conf.API_PACKAGES
    if not args.check:
        built = available(packages)
        home = homes(built, conf.API_PACKAGES)
        for p in built:
            print(package_page(p, conf.API_PACKAGES, (), home))
        return 0
    results = check(packages, conf.NUMPYDOC_CHECKS)
    if args.todo:
        Path(args.todo).write_text(todo_markdown(results, conf))
        print(f"wrote {args.todo}")
    bad = 0
    for pkgname, (total, fails) in results.items():
        bad += len(fails)
        if args.markdown:
            if not fails:
                continue
            print(f"\n## `{pkgname}`: {len(fails)} of {total} objects fail\n")
            for path, errs in fails:
                print(f"- `{path}`: " + "; ".join(f"{c} {m}" for c, m in errs))
        else:
            print(f"{pkgname:24s} {len(fails):4d} of {total:4d} objects fail {sorted(conf.NUMPYDOC_CHECKS)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
