"""Detection (issue 26, item 5): box utilities, NMS, RoIAlign, paste-back, box AP, the
dense detector's loss and training, save / load, the HOG baseline and the study."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import biomip
from biomip.core.errors import InputError, ShapeError
from biomip.metrics.detection import box_average_precision, box_iou_matrix, match_detections
from biomip.nn.detection import (
    DetectionNet,
    batched_nms,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    boxes_from_labels,
    detection_loss,
    generalized_box_iou,
    mask_targets,
    nms,
    paste_masks,
    roi_align,
)
from biomip.segment import match_instances
from biomip.segment.detect import Detector, HOGDetector


# ---------------------------------------------------------------- boxes
def test_box_formats_round_trip():
    b = torch.tensor([[1.0, 2.0, 5.0, 10.0], [0.0, 0.0, 3.0, 1.0]])
    c = box_xyxy_to_cxcywh(b)
    assert c.tolist() == [[3.0, 6.0, 4.0, 8.0], [1.5, 0.5, 3.0, 1.0]]
    assert torch.equal(box_cxcywh_to_xyxy(c), b)


def test_iou_and_giou_known_values():
    a = [[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 4, 4]]
    b = [[1, 0, 3, 2], [2, 0, 3, 1], [1, 1, 3, 3]]
    iou = box_iou(a, b).diagonal()
    giou = generalized_box_iou(a, b).diagonal()
    # overlap by half a box: IoU 2 / 6, the hull equals the union; disjoint: hull 3, union 2; nested: 4 / 16
    np.testing.assert_allclose(iou.numpy(), [1 / 3, 0.0, 0.25], rtol=1e-6)
    np.testing.assert_allclose(giou.numpy(), [1 / 3, -1 / 3, 0.25], rtol=1e-6)
    np.testing.assert_allclose(box_iou_matrix(a, b), box_iou(a, b).numpy(), rtol=1e-6)
    assert float(generalized_box_iou([[0, 0, 1, 1]], [[0, 0, 1, 1]])) == 1.0


def _brute_nms(boxes, scores, thr):
    def iou(p, q):
        w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        inter = w * h
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7])
def test_nms_matches_brute_force(thr):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 60, (150, 2))
    wh = rng.uniform(4, 20, (150, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.permutation(150) / 150.0                      # distinct scores: one right answer
    got = nms(boxes, scores, thr).tolist()
    assert got == _brute_nms(boxes.tolist(), scores.tolist(), thr)
    groups = rng.integers(0, 3, 150)
    ref = sorted((i for g in range(3) for i in np.nonzero(groups == g)[0][
        _brute_nms(boxes[groups == g].tolist(), scores[groups == g].tolist(), thr)]), key=lambda i: -scores[i])
    assert batched_nms(boxes, scores, groups, thr).tolist() == [int(i) for i in ref]


def test_nms_bad_input():
    with pytest.raises(InputError, match="iou_threshold"):
        nms([[0, 0, 1, 1]], [1.0], 1.5)
    with pytest.raises(InputError, match="scores"):
        nms([[0, 0, 1, 1]], [1.0, 2.0])
    with pytest.raises(ShapeError, match="boxes"):
        nms([[0, 0, 1]], [1.0])
    empty = nms(np.zeros((0, 4)), [])
    assert isinstance(empty, np.ndarray) and empty.size == 0


def test_box_utilities_refuse_nan_reversed_boxes_and_nan_scores():
    b = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]])
    with pytest.raises(InputError, match="boxes1:.*reversed"):
        box_iou(torch.tensor([[10.0, 10, 0, 0]]), b)
    with pytest.raises(InputError, match="boxes2:.*NaN"):
        box_iou(b, torch.tensor([[np.nan, 0, 1, 1]]))
    with pytest.raises(InputError, match="scores:.*NaN"):
        nms(b, torch.tensor([np.nan, 0.8]))
    assert box_iou([[1.0, 1, 1, 1]], [[1.0, 1, 1, 1]]).tolist() == [[0.0]]      # zero-area boxes are allowed


def test_box_utilities_numpy_in_numpy_out():
    b = np.array([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    iou = box_iou(b, b)
    assert isinstance(iou, np.ndarray) and iou[0, 1] == pytest.approx(81 / 119)
    keep = nms(b, np.array([0.9, 0.8, 0.7]), 0.5)
    assert isinstance(keep, np.ndarray) and keep.tolist() == [0, 2]
    assert torch.is_tensor(nms(torch.as_tensor(b), torch.tensor([0.9, 0.8, 0.7]), 0.5))


def test_roi_align_numpy_features_named_as_not_a_tensor():
    with pytest.raises(InputError, match="features:.*expected a torch tensor"):
        roi_align(np.zeros((1, 1, 8, 8), np.float32), torch.tensor([[0.0, 0, 0, 4, 4]]), 2)


# ---------------------------------------------------------------- RoIAlign
def test_roi_align_exact_on_a_linear_ramp():
    # bilinear sampling is exact on a linear function and the bin mean of symmetric samples is its
    # value at the bin centre: output = ramp at (x1 s - 1/2 + (j + 1/2) bw, y1 s - 1/2 + (i + 1/2) bh)
    yy, xx = np.mgrid[0:16, 0:16].astype(np.float64)
    f = torch.as_tensor(2 * xx + 3 * yy + 1, dtype=torch.float32)[None, None].repeat(2, 2, 1, 1)
    f[1, 1] *= -1
    boxes = [[4.0, 6.0, 20.0, 18.0], [7.0, 9.0, 13.0, 27.0]]
    out = roi_align(f, torch.tensor([[0, *boxes[0]], [1, *boxes[1]]]), (3, 4), spatial_scale=0.5, sampling_ratio=2)
    assert out.shape == (2, 2, 3, 4)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        bw, bh = (x2 - x1) * 0.5 / 4, (y2 - y1) * 0.5 / 3
        cx = x1 * 0.5 - 0.5 + (np.arange(4) + 0.5) * bw
        cy = y1 * 0.5 - 0.5 + (np.arange(3) + 0.5) * bh
        want = 2 * cx[None, :] + 3 * cy[:, None] + 1
        np.testing.assert_allclose(out[k, 0].numpy(), want, rtol=1e-5)
        np.testing.assert_allclose(out[k, 1].numpy(), want if k == 0 else -want, rtol=1e-5)


def _roi_align_reference(f, box, oh, ow, s):
    """torchvision's algorithm (aligned=True), loops, boxes inside the map."""
    x1, y1, x2, y2 = (v - 0.5 for v in box)
    bh, bw = (y2 - y1) / oh, (x2 - x1) / ow
    out = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            acc = 0.0
            for iy in range(s):
                for ix in range(s):
                    y = y1 + i * bh + (iy + 0.5) * bh / s
                    x = x1 + j * bw + (ix + 0.5) * bw / s
                    y0, x0 = int(math.floor(y)), int(math.floor(x))
                    ly, lx = y - y0, x - x0
                    y1_, x1_ = min(y0 + 1, f.shape[0] - 1), min(x0 + 1, f.shape[1] - 1)
                    acc += ((1 - ly) * (1 - lx) * f[y0, x0] + (1 - ly) * lx * f[y0, x1_]
                            + ly * (1 - lx) * f[y1_, x0] + ly * lx * f[y1_, x1_])
            out[i, j] = acc / s / s
    return out


def test_roi_align_matches_loop_reference():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(12, 14))
    boxes = [[1.3, 2.2, 9.7, 7.1], [0.5, 0.5, 13.0, 11.5], [4.0, 4.0, 6.5, 5.0]]
    out = roi_align(torch.as_tensor(f)[None, None], [torch.tensor(boxes, dtype=torch.float64)], (5, 4), sampling_ratio=3)
    for k, b in enumerate(boxes):
        np.testing.assert_allclose(out[k, 0].numpy(), _roi_align_reference(f, b, 5, 4, 3), rtol=1e-9, atol=1e-12)


def test_roi_align_bad_input():
    with pytest.raises(ShapeError, match="features"):
        roi_align(torch.zeros(4, 4), [torch.zeros(0, 4)])
    with pytest.raises(InputError, match="sampling_ratio"):
        roi_align(torch.zeros(1, 1, 4, 4), [torch.zeros(1, 4)], sampling_ratio=0)
    with pytest.raises(InputError, match="rois"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.tensor([[3.0, 0, 0, 1, 1]]))


# ---------------------------------------------------------------- masks
def test_paste_masks_geometry():
    lab = paste_masks(np.ones((1, 4, 4)), [[2.0, 1.0, 6.0, 3.0]], (5, 8))
    want = np.zeros((5, 8), np.int32)
    want[1:3, 2:6] = 1
    np.testing.assert_array_equal(lab, want)
    half = np.zeros((1, 4, 4))
    half[0, :, :2] = 1.0                                   # left half of the box
    lab = paste_masks(half, [[2.0, 1.0, 6.0, 3.0]], (5, 8))
    want[:] = 0
    want[1:3, 2:4] = 1
    np.testing.assert_array_equal(lab, want)
    # overlapping boxes: the better score wins, numbering by decreasing score; small ones dropped
    lab = paste_masks(np.ones((3, 2, 2)), [[0, 0, 4, 4], [2, 2, 6, 6], [7, 7, 8, 8]], (8, 8),
                      scores=[0.5, 0.9, 0.7], min_area=2)
    assert lab[3, 3] == 1 and lab[0, 0] == 2 and lab[7, 7] == 0
    assert (lab == 1).sum() == 16 and (lab == 2).sum() == 12
    # mask NMS: the second mask lies 12 / 16 on the first, so it goes at max_overlap 0.5 and stays at 0.8
    two = dict(masks=np.ones((2, 2, 2)), boxes=[[0, 0, 4, 4], [1, 0, 5, 4]], shape=(6, 6), scores=[0.9, 0.8])
    assert paste_masks(**two, max_overlap=0.5).max() == 1
    assert paste_masks(**two, max_overlap=0.8).max() == 2


def test_mask_targets_then_paste_back_reproduces_labels():
    _, lab = _tiny_case(64, ((10, 10, 6, 4), (12, 30, 5, 9), (16, 50, 8, 5), (40, 12, 7, 7), (38, 30, 4, 9),
                             (45, 52, 9, 6), (56, 30, 5, 5), (28, 22, 3, 4)))
    b, ids = boxes_from_labels(lab)
    t = mask_targets(torch.as_tensor(lab)[None], torch.cat([torch.zeros(len(b), 1), torch.as_tensor(b)], 1), ids, 28)
    out = paste_masks(t, b, lab.shape)
    m = match_instances(out, lab, 0.8)
    assert m["tp"] == len(ids) and m["fp"] == 0 and m["mean_matched_iou"] > 0.9


def test_boxes_from_labels():
    lab = np.zeros((10, 12), int)
    lab[2:5, 3:9] = 4
    lab[7, 0] = 9
    b, ids = boxes_from_labels(lab)
    assert b.tolist() == [[3, 2, 9, 5], [0, 7, 1, 8]] and ids.tolist() == [4, 9]
    assert boxes_from_labels(lab, min_area=2)[1].tolist() == [4]
    with pytest.raises(InputError, match="labels"):
        boxes_from_labels(np.zeros((2, 2, 2), int))


# ---------------------------------------------------------------- box AP
def test_box_ap_hand_case():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    det = [[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31]]            # TP, FP, TP (IoU 100 / 110)
    r = box_average_precision(det, [0.9, 0.8, 0.7], gt, "coco")
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: the envelope is 1 on [0, .5] (51 points), 2/3 after (50)
    assert r["ap50"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert r["per_threshold"][0.9] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert r["per_threshold"][0.95] == pytest.approx(51 / 101)           # the third is a FP at IoU 0.95
    np.testing.assert_allclose(r["precision"], [1, 0.5, 2 / 3])
    cont = box_average_precision(det, [0.9, 0.8, 0.7], gt, interpolation="continuous")
    assert cont["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # two images, the same detections split: the same ranking, the same AP
    two = box_average_precision([np.array(det[:2]), np.array(det[2:])], [[0.9, 0.8], [0.7]],
                                [np.array(gt[:1]), np.array(gt[1:])])
    assert two["ap"] == pytest.approx(r["ap50"])
    assert match_detections(det, [0.9, 0.8, 0.7], gt).tolist() == [True, False, True]
    assert box_average_precision(gt, [1.0, 1.0], gt)["ap"] == 1.0
    with pytest.raises(InputError, match="interpolation"):
        box_average_precision(det, [1, 1, 1], gt, interpolation="voc07")
    with pytest.raises(InputError, match="scores.*NaN"):
        box_average_precision(det, [np.nan, 0.8, 0.7], gt)
    with pytest.raises(InputError, match="pred_boxes.*reversed"):
        box_average_precision([[10, 10, 0, 0]], [0.9], gt)


# ---------------------------------------------------------------- the network
def _tiny_case(size=48, centres=((12, 12, 6, 4), (14, 34, 5, 7), (34, 16, 7, 5), (36, 36, 5, 5))):
    """Bright ellipses (nuclei) on a dark noisy background and their instance labels."""
    from scipy import ndimage as ndi
    from skimage.draw import ellipse

    lab = np.zeros((size, size), np.int64)
    for i, (r, c, a, b) in enumerate(centres, start=1):
        rr, cc = ellipse(r, c, a, b, shape=lab.shape)
        lab[rr, cc] = i
    img = ndi.gaussian_filter((lab > 0).astype(float), 1.0) + 0.05 * np.random.default_rng(0).normal(size=lab.shape)
    return img, lab


def test_detection_loss_decreases():
    img, lab = _tiny_case()
    x = torch.as_tensor(biomip.segment.normalize_percentile(img), dtype=torch.float32)[None, None]
    boxes = [torch.as_tensor(boxes_from_labels(lab)[0])]
    net = DetectionNet(widths=(8, 16, 32), fpn_channels=16, masks=False, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        parts = detection_loss(net(x), boxes)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(float(parts["loss"].detach()))
    assert parts["positives"] >= len(boxes[0])
    assert losses[-1] < 0.6 * losses[0]


def test_detector_overfits_a_tiny_image_and_round_trips(tmp_path):
    img, lab = _tiny_case()
    det = Detector(widths=(8, 16, 32), fpn_channels=16, seed=0)
    det.fit([img], [lab], epochs=5, iterations_per_epoch=5, batch_size=1, patch_size=48, lr=1e-2, augment=False,
            progress=False)
    assert det.history[-1]["loss"] < 0.7 * det.history[0]["loss"]
    b, s = det.predict(img)
    gt = boxes_from_labels(lab)[0]
    assert box_average_precision(b, s, gt)["ap50"] > 0.95
    inst, info = det.predict_instances(img, score_threshold=0.3)
    assert match_instances(inst, lab, 0.5)["tp"] >= len(gt) - 1
    # the same kind out: torch in -> torch (same device), Image in -> Image with its geometry
    inst_t, _ = det.predict_instances(torch.as_tensor(img), score_threshold=0.3)
    assert torch.is_tensor(inst_t) and np.array_equal(inst_t.numpy(), inst)
    inst_i, _ = det.predict_instances(biomip.Image(img, spacing=(0.5, 0.5), origin=(3.0, 4.0)), score_threshold=0.3)
    assert isinstance(inst_i, biomip.Image) and inst_i.origin == (3.0, 4.0) and inst_i.spacing == (0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(inst_i.numpy()), inst)
    path = det.save(tmp_path / "det")
    again = Detector.load(path)
    b2, s2 = again.predict(img)
    np.testing.assert_allclose(b2, b, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(s2, s, rtol=1e-5, atol=1e-6)


def test_detector_bad_input():
    with pytest.raises(InputError, match="model"):
        Detector(model=torch.nn.Linear(2, 2))
    det = Detector(widths=(8, 16), fpn_channels=8, stride=2, masks=False)
    with pytest.raises(InputError, match="masks=False"):
        det.predict_instances(np.random.default_rng(0).random((16, 16)))
    with pytest.raises(ShapeError, match="image"):
        det.predict(np.random.default_rng(0).random((4, 16, 16)))
    with pytest.raises(InputError, match="score_threshold"):
        Detector(widths=(8, 16), fpn_channels=8, stride=2).predict_instances(np.zeros((16, 16)), score_threshold=-1)
    with pytest.raises(InputError, match="score_threshold"):
        det.predict(np.zeros((16, 16)), score_threshold=2)
    with pytest.raises(InputError, match="epochs"):
        det.fit([np.random.default_rng(0).random((16, 16))], [np.zeros((16, 16), int)], epochs=0)
    with pytest.raises(InputError, match="stride"):
        DetectionNet(widths=(8, 16), stride=8)


# ---------------------------------------------------------------- slower checks
@pytest.mark.slow
def test_hog_detector_finds_simulated_nuclei():
    tr = biomip.data.synthetic_nuclei((128, 128), n_nuclei=15, seed=0)
    te = biomip.data.synthetic_nuclei((128, 128), n_nuclei=15, seed=1)
    hogd = HOGDetector(seed=0).fit([tr.image], [tr.labels])
    b, s = hogd.predict(te.image)
    gt = boxes_from_labels(te.labels.numpy().astype(np.int64))[0]
    assert box_average_precision(b, s, gt, 0.3)["ap"] > 0.5
    lab, _ = hogd.predict_instances(te.image)
    assert lab.shape == (128, 128) and lab.numpy().max() > 5


@pytest.mark.slow
def test_detection_preview_says_when_hog_found_nothing():
    from biomip.pipelines.vision import detection

    img, lab = _tiny_case()
    gt = boxes_from_labels(lab)[0]
    curve = {"recall": [0.0, 1.0], "precision": [1.0, 0.5], "ap50": 0.5}
    methods = {n: {"box_ap50": 0.5, "instance_ap50": 0.5}
               for n in ("one-stage-simulator-only", "one-stage", "detect-then-segment", "hog-svm")}
    hb = np.array([[0.0, 0, 8, 8], [10, 10, 18, 18]], np.float32)
    titles = []
    for hs in (np.array([-0.7, -0.2], np.float32), np.array([0.3, -0.2], np.float32)):
        fig = detection._figure(img, lab, gt, gt, np.ones(len(gt)), lab, hb, hs,
                                {"one-stage": curve, "hog-svm": curve}, methods, [1.0, 0.5], [0.4], 0.5)
        titles.append(fig.axes[2].get_title())
    assert "HOG: no box above 0" in titles[0] and "best score -0.20" in titles[0]
    assert "score >= 0: 1" in titles[1]


@pytest.mark.slow
def test_detection_study_tiny(tmp_path):
    from biomip.pipelines.vision import detection

    r = detection.run(out=tmp_path, mode="tiny", seed=0, progress=False)
    assert r["study"] == "detection" and (tmp_path / "preview.png").exists()
    for name in ("one-stage", "detect-then-segment", "hog-svm"):
        assert name in r["methods"]
    assert 0.0 <= r["methods"]["detect-then-segment"]["instance_ap50"] <= 1.0
