"""ParseNet (SEEM-lite) and parse_loss against hand computations."""

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.nn import ParseNet, parse_loss


def _net(**kw):
    cfg = dict(in_channels=3, text_dim=8, features=(8, 8, 16, 16), dim=16, mask_dim=8, queries=2, depth=2,
               heads=2, classes=3)
    cfg.update(kw)
    return ParseNet(**cfg)


def test_loss_equals_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 3)
    cls = torch.randn(2, 4)
    m = (torch.rand(2, 3, 3) > 0.5).float()
    y = torch.tensor([1, 3])
    loss, parts = parse_loss({"mask": logits, "class": cls}, m, y, a=2, b=5, c=5, eps=0.0)
    p = 1 / (1 + np.exp(-logits.numpy()))
    mm = m.numpy()
    bce = -np.mean(mm * np.log(p) + (1 - mm) * np.log(1 - p))
    dice = np.mean([1 - 2 * (p[i] * mm[i]).sum() / (p[i].sum() + mm[i].sum()) for i in range(2)])
    lse = np.log(np.exp(cls.numpy()).sum(1))
    ce = np.mean(lse - cls.numpy()[[0, 1], [1, 3]])
    assert parts["bce"] == pytest.approx(bce, rel=1e-5)
    assert parts["dice"] == pytest.approx(dice, rel=1e-5)
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert float(loss) == pytest.approx(2 * ce + 5 * bce + 5 * dice, rel=1e-5)
    # a perfect, confident mask has ~no mask loss
    perfect, parts2 = parse_loss({"mask": (m * 2 - 1) * 30, "class": cls}, m, None, eps=0.0)
    assert parts2["dice"] < 1e-6 and parts2["bce"] < 1e-6 and parts2["ce"] == 0.0


def test_shapes_any_size_and_shared_image_features():
    net = _net().eval()
    x = torch.rand(2, 3, 37, 50)
    text = torch.rand(3, 5, 8)
    tmask = torch.ones(3, 5, dtype=torch.bool)
    idx = torch.tensor([0, 1, 1])
    out = net(x, text, tmask, idx)
    assert out["mask"].shape == (3, 37, 50) and out["class"].shape == (3, 3)
    # prompt 1 and 2 on image 1 give what a separate call on image 1 gives
    single = net(x[1:2], text[1:2], tmask[1:2])
    assert torch.allclose(single["mask"][0], out["mask"][1], atol=1e-5)


def test_padding_tokens_do_not_change_the_output():
    net = _net().eval()
    x = torch.rand(1, 3, 32, 32)
    t = torch.rand(1, 3, 8)
    a = net(x, t, torch.ones(1, 3, dtype=torch.bool))
    t2 = torch.cat([t, torch.randn(1, 4, 8) * 10], 1)
    m2 = torch.tensor([[True] * 3 + [False] * 4])
    b = net(x, t2, m2)
    assert torch.allclose(a["mask"], b["mask"], atol=1e-5) and torch.allclose(a["class"], b["class"], atol=1e-5)


def test_the_text_decides_the_mask_after_training():
    """Two prompts, two disjoint halves of the same images: the network must read the text."""
    g = torch.Generator().manual_seed(0)
    net = _net(seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    codes = torch.eye(8)[:2].unsqueeze(1)          # prompt 0 / prompt 1 as one-token texts
    for _ in range(40):
        x = torch.rand(4, 3, 16, 16, generator=g)
        left = torch.zeros(16, 16)
        left[:, :8] = 1
        m = torch.stack([left, 1 - left, left, 1 - left])
        which = torch.tensor([0, 1, 0, 1])
        out = net(x, codes[which], torch.ones(4, 1, dtype=torch.bool))
        loss, _ = parse_loss(out, m, which)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 16, 16, generator=g), codes, torch.ones(2, 1, dtype=torch.bool))
    p = torch.sigmoid(out["mask"])
    assert p[0, :, :8].mean() > 0.8 and p[0, :, 8:].mean() < 0.2
    assert p[1, :, 8:].mean() > 0.8 and p[1, :, :8].mean() < 0.2
    assert out["class"].argmax(1).tolist() == [0, 1]


def test_save_load_round_trip(tmp_path):
    net = _net(seed=3).eval()
    with torch.no_grad():                       # weights unlike a fresh net of the same config
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x, t, m = torch.rand(1, 3, 24, 24), torch.rand(1, 2, 8), torch.ones(1, 2, dtype=torch.bool)
    assert not torch.allclose(net(x, t, m)["mask"], _net(seed=3).eval()(x, t, m)["mask"])
    net.save(tmp_path / "p")
    back = ParseNet.load(tmp_path / "p", device="cpu")
    assert torch.allclose(net(x, t, m)["mask"], back(x, t, m)["mask"])


def test_errors():
    net = _net()
    with pytest.raises(InputError, match="features"):
        _net(features=(8, 16))
    with pytest.raises(InputError, match="dim.*multiple of heads"):
        _net(dim=15)
    with pytest.raises(InputError, match="channel"):
        net(torch.rand(1, 1, 16, 16), torch.rand(1, 2, 8), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ShapeError, match="text"):
        net(torch.rand(1, 3, 16, 16), torch.rand(1, 2, 5), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(InputError, match="no real token"):
        net(torch.rand(1, 3, 16, 16), torch.rand(1, 2, 8), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ShapeError, match="mask"):
        parse_loss({"mask": torch.zeros(1, 4, 4), "class": torch.zeros(1, 2)}, torch.zeros(1, 3, 3))
