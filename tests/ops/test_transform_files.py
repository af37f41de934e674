"""Damaged ITK transform files: a FormatError naming the file, never another exception
and never a transform built from NaN (issue 14)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from biomip.core.errors import BiomipError, FormatError
from biomip.ops import transforms as T


@pytest.mark.parametrize("transform", [T.RigidTransform(0.1, (1.0, 2.0)),
                                       T.RigidTransform((0.1, -0.2, 0.05), (1.0, 2.0, 3.0)),
                                       T.AffineTransform([[1, 0.1, 0], [0, 1, 0], [0, 0, 1.2]], (1.0, 2.0, 3.0))],
                         ids=["euler2d", "rigid3d", "affine3d"])
def test_mutated_transform_files(tmp_path, transform):
    data = transform.write(tmp_path / "t.tfm").read_bytes()
    rng = random.Random(0)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        b = bytearray(data)
        r = rng.random()
        j = rng.randrange(len(b))
        if r < 0.4:
            b[j] ^= 1 << rng.randrange(8)
        elif r < 0.6:
            b = b[:j]
        elif r < 0.8:
            b[j:j + 1] = rng.choice([b"nan", b"1e308", b"-", b"99999999999", b"\x00", b"inf", b" "])
        else:
            b[j] = rng.randrange(256)
        p = tmp_path / "m.tfm"
        p.write_bytes(bytes(b))
        try:
            t = T.read_transform(p)
        except BiomipError:
            outcomes["error"] += 1
            continue
        assert np.isfinite(t.matrix).all() and np.isfinite(t.translation).all()
        outcomes["ok"] += 1
    assert outcomes["error"] > 50


def test_specific_damage(tmp_path):
    p = tmp_path / "t.tfm"
    p.write_text("#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\nParameters: 1 0 0 0 1\n")
    with pytest.raises(FormatError, match="needs 12 parameters; the file holds 5"):
        T.read_transform(p)
    p.write_text("Transform: Euler3DTransform_double_3_3\nParameters: nan 0 0 0 0 0\n")
    with pytest.raises(FormatError, match="NaN"):
        T.read_transform(p)
    p.write_text("Transform: Euler3DTransform_double_3_3\nParameters: 0 x 0 0 0 0\n")
    with pytest.raises(FormatError, match="not a number"):
        T.read_transform(p)
    p.write_text("Transform: AffineTransform_double_2_2\nParameters: 0 0 0 0 1 1\n")
    with pytest.raises(FormatError, match="valid transform"):
        T.read_transform(p)                                   # a singular matrix
