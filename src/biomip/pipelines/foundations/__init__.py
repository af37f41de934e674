"""The machine-learning foundations of chapters 2-3, each shown on real images that ship
inside installed packages, with a ``report.json`` and a ``preview.png`` (``biomip learn ...``).
"""
