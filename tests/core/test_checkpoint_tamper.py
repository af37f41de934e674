"""Model folders that were damaged or edited: a clear FormatError before any allocation
(issue 14), and every biomip model still round-trips."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest
import torch

from biomip.core.checkpoint import read_json
from biomip.core.errors import BiomipError, FormatError
from biomip.nn.registration import RegistrationNet
from biomip.nn.unet import UNet
from biomip.reconstruct.serenet import SeReNet


@pytest.fixture
def saved_unet(tmp_path):
    torch.manual_seed(0)
    net = UNet(sdim=2, in_channels=1, classes=2, features=(4, 8))
    return net, net.save(tmp_path / "unet")


def _edit(folder, fn):
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text())
    fn(cfg)
    cfg_file.write_text(json.dumps(cfg))


@pytest.mark.parametrize("model", [
    lambda: UNet(sdim=2, in_channels=1, classes=2, features=(4, 8)),
    lambda: UNet(sdim=3, in_channels=2, classes=3, features=(4, 8), attention=True),
    lambda: RegistrationNet(sdim=2, features=(4, 8, 8)),
    lambda: SeReNet(n_views=5, channels=8),
], ids=["unet2d", "unet3d", "registration", "serenet"])
def test_every_model_round_trips(tmp_path, model):
    torch.manual_seed(0)
    net = model()
    type(net).load(net.save(tmp_path / "m"))             # the meta-device check accepts every real model
    back = type(net).load(tmp_path / "m")
    for (k, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b.cpu()), k


def test_huge_channel_count_is_refused_before_allocation(saved_unet):
    net, folder = saved_unet
    _edit(folder, lambda c: c["config"].update(features=[10 ** 5, 10 ** 5]))
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30));"
            "from biomip.nn.unet import UNet; from biomip.core.errors import FormatError\n"
            f"try:\n    UNet.load({str(folder)!r})\nexcept FormatError as e:\n    print('FormatError', e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "FormatError" in out.stdout and ("do not match" in out.stdout or "cannot be built" in out.stdout)


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["config"].update(dropout=float("nan")), "NaN"),
    (lambda c: c["config"].update(features=[-4, 8]), "cannot be built"),
    (lambda c: c["config"].update(unknown_setting=1), "cannot be built"),
    (lambda c: c.update(version=10 ** 6), "version"),
    (lambda c: c.update(format="something-else"), "does not describe"),
    (lambda c: c.update(meta=[1, 2]), "'meta'"),
    (lambda c: c["config"].pop("features"), "do not match"),              # a default fills it: loads, or refuses cleanly
])
def test_edited_settings_give_a_clear_error(saved_unet, edit, words):
    net, folder = saved_unet
    _edit(folder, edit)
    try:
        UNet.load(folder)
    except FormatError as exc:
        assert words in str(exc)
        assert "config.json" in str(exc) or "model" in str(exc)
    else:
        assert words == ""


def test_deep_nesting_and_oversized_config(saved_unet):
    net, folder = saved_unet
    (folder / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(FormatError, match="too deeply|deeper|large|bytes"):
        UNet.load(folder)
    (folder / "config.json").write_text('{"format": "x", "pad": "' + "a" * (2 << 20) + '"}')
    with pytest.raises(FormatError, match="bytes"):
        UNet.load(folder)
    (folder / "config.json").write_text('{"a": ' * 100 + "1" + "}" * 100)
    with pytest.raises(FormatError, match="nested"):
        UNet.load(folder)
    (folder / "config.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(FormatError, match="UTF-8"):
        UNet.load(folder)


def test_damaged_weights(saved_unet, tmp_path):
    net, folder = saved_unet
    w = folder / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])                 # truncated
    with pytest.raises(FormatError, match="model.safetensors"):
        UNet.load(folder)
    w.write_bytes(b"\xff" * 8 + data[8:])                 # header length says 2^64 - 1
    with pytest.raises(FormatError, match="model.safetensors"):
        UNet.load(folder)
    torch.manual_seed(0)
    other = UNet(sdim=2, in_channels=1, classes=2, features=(8, 8))
    other.save(tmp_path / "other")
    w.write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())   # weights of another shape
    with pytest.raises(FormatError, match="do not match"):
        UNet.load(folder)


def test_nan_weights_are_refused(tmp_path):
    torch.manual_seed(0)
    net = UNet(sdim=2, in_channels=1, classes=2, features=(4, 8))
    with torch.no_grad():
        next(net.parameters())[0] = float("nan")
    net.save(tmp_path / "nan")
    with pytest.raises(FormatError, match="NaN"):
        UNet.load(tmp_path / "nan")


def test_read_json_is_a_biomip_error_for_a_missing_file(tmp_path):
    with pytest.raises(BiomipError, match="cannot read"):
        read_json(tmp_path / "none.json", "model config")
    assert resource.getrlimit(resource.RLIMIT_AS)          # (resource imported for the subprocess test)
