"""``biomip learn ...``: features -> embed / cluster on a real label image, pixel
classification from scribbles, the window agent, a study, and the refusals."""

import csv
import json

import numpy as np
import pytest

from biomip.cli.main import main
from biomip.io import write


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def nuclei_files(tmp_path_factory):
    import biomip

    d = tmp_path_factory.mktemp("nuc")
    img = biomip.data.load("nuclei2d")
    lab = biomip.data.load("nuclei2d-labels")
    crop = (slice(0, 256), slice(0, 256))
    write(img.with_array(img.numpy()[crop]), d / "img.tif")
    write(lab.with_array(lab.numpy()[crop]), d / "lab.tif")
    return d


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_features_embed_cluster_chain(capsys, nuclei_files, tmp_path):
    from skimage.measure import regionprops

    lab = nuclei_files / "lab.tif"
    rc, out, err = run(capsys, "learn", "features", lab, "--image", nuclei_files / "img.tif", "--out",
                       tmp_path / "t.csv")
    assert rc == 0, err
    rows = _rows(tmp_path / "t.csv")
    head, body = rows[0], rows[1:]
    import biomip

    ref = biomip.data.load("nuclei2d-labels").numpy()[:256, :256]
    props = regionprops(ref)
    assert len(body) == len(props) and head[0] == "label"
    area = {int(r[0]): float(r[head.index("area")]) for r in body}
    assert all(area[p.label] == pytest.approx(p.area) for p in props)      # pixel units: spacing unknown

    rc, out, err = run(capsys, "learn", "embed", tmp_path / "t.csv", "--method", "pca", "--out", tmp_path / "e.csv")
    assert rc == 0, err
    rep = json.loads((tmp_path / "e.report.json").read_text())
    assert 0.5 < rep["trustworthiness"] <= 1 and 0.5 < rep["continuity"] <= 1
    assert (tmp_path / "e.preview.png").stat().st_size > 1000
    emb = np.array([[float(v) for v in r[1:]] for r in _rows(tmp_path / "e.csv")[1:]])
    assert emb.shape == (len(body), 2)
    assert emb[:, 0].var() >= emb[:, 1].var()                                # PC 1 first

    rc, out, err = run(capsys, "learn", "cluster", tmp_path / "t.csv", "--k", "3", "--out", tmp_path / "c.csv")
    assert rc == 0, err
    cl = [int(r[1]) for r in _rows(tmp_path / "c.csv")[1:]]
    assert sorted(set(cl)) == [0, 1, 2]
    rep = json.loads((tmp_path / "c.report.json").read_text())
    assert sum(rep["sizes"].values()) == len(body) and -1 <= rep["silhouette"] <= 1


def test_classify_from_scribbles(capsys, nuclei_files, tmp_path):
    import biomip
    from biomip.data import scribbles_from_labels

    lab = biomip.data.load("nuclei2d-labels").numpy()[:256, :256]
    s = scribbles_from_labels(lab > 0, n_pixels=200, seed=0)
    write(biomip.Image(s.astype(np.uint8)), tmp_path / "s.tif")
    write(biomip.Image((lab > 0).astype(np.uint8) + 1), tmp_path / "truth.tif")
    rc, out, err = run(capsys, "learn", "classify", nuclei_files / "img.tif", "--scribbles", tmp_path / "s.tif",
                       "--out", tmp_path / "pred.tif", "--trees", "30", "--truth", tmp_path / "truth.tif")
    assert rc == 0, err
    rep = json.loads((tmp_path / "pred.report.json").read_text())
    assert sum(rep["scribbled_pixels"].values()) <= 200
    assert rep["dice"]["2"] > 0.8                                          # nuclei (class 2)
    # refusals: one class scribbled; existing output without --overwrite
    write(biomip.Image((s == 1).astype(np.uint8)), tmp_path / "one.tif")
    rc, _, err = run(capsys, "learn", "classify", nuclei_files / "img.tif", "--scribbles", tmp_path / "one.tif",
                     "--out", tmp_path / "p2.tif")
    assert rc == 2 and "--scribbles" in err and "at least 2" in err and not (tmp_path / "p2.tif").exists()
    rc, _, err = run(capsys, "learn", "classify", nuclei_files / "img.tif", "--scribbles", tmp_path / "s.tif",
                     "--out", tmp_path / "pred.tif")
    assert rc == 2 and "--overwrite" in err


def test_window_agent_on_real_ct(capsys, sample_file, tmp_path):
    path = sample_file("ct-head")
    rc, out, err = run(capsys, "learn", "window", path, "--target", "20,45", "--reference", "-5,15",
                       "--out", tmp_path / "w.png")
    assert rc == 0, err
    rep = json.loads((tmp_path / "w.report.json").read_text())
    assert rep["steps"] <= 20 and rep["ratio_to_grid_best"] >= 0.9
    assert rep["dicom_window"]["width"] == pytest.approx(100.0)              # the file's own 40 / 100
    assert rep["score"] > rep["dicom_window"]["score"]
    rc, _, err = run(capsys, "learn", "window", path, "--target", "45,20", "--reference", "-5,15",
                     "--out", tmp_path / "w2.png")
    assert rc == 2 and "--target" in err and not (tmp_path / "w2.png").exists()


def test_table_refusals(capsys, tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("label,kind\n1,a\n2,b\n")
    rc, _, err = run(capsys, "learn", "embed", p, "--out", tmp_path / "e.csv")
    assert rc == 2 and "no numeric feature column" in err
    p.write_text("label,area\n1,2\n2\n")
    rc, _, err = run(capsys, "learn", "cluster", p, "--k", "2", "--out", tmp_path / "c.csv")
    assert rc == 2 and "row 3" in err
    p.write_text("label,area,b\n1,2,1\n2,3,1\n3,nan,1\n4,1,2\n")
    rc, _, err = run(capsys, "learn", "cluster", p, "--k", "2", "--out", tmp_path / "c.csv")
    assert rc == 2 and "finite" in err and not (tmp_path / "c.csv").exists()
    rc, _, err = run(capsys, "learn", "study", "nope")
    assert rc == 2 and "NAME" in err and "likelihood" in err


def test_study_tiny_writes_report(capsys, tmp_path):
    rc, out, err = run(capsys, "learn", "study", "likelihood", "--tiny", "--out", tmp_path / "r")
    assert rc == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["study"] == "likelihood" and rep["mode"] == "tiny" and rep["methods"]
    assert (tmp_path / "r" / "preview.png").exists()
    rc, _, err = run(capsys, "learn", "study", "likelihood", "--tiny", "--out", tmp_path / "r")
    assert rc == 2 and "--overwrite" in err


def test_review_refusals_and_single_slice_dicom(capsys, sample_file, tmp_path):
    import biomip

    p = tmp_path / "mixed.csv"
    p.write_text("label,a,b\n1,2,3\n2,,3\n3,1,2\n4,5,6\n")
    rc, _, err = run(capsys, "learn", "cluster", p, "--k", "2", "--out", tmp_path / "c.csv")
    assert rc == 2 and "row 3, column 'a'" in err                    # not a silently dropped column
    p.write_text("label,a\n1,1\n2,1\n3,1\n4,1\n5,1\n")
    rc, _, err = run(capsys, "learn", "embed", p, "--method", "tsne", "--out", tmp_path / "e.csv")
    assert rc == 2 and "TABLE" in err and "same" in err
    rc, _, err = run(capsys, "learn", "embed", p, "--out", tmp_path / "e.png")
    assert rc == 2 and ".csv" in err
    # a single-slice DICOM (1, Y, X) is a 2-D image: classify and features treat it so
    ct = biomip.io.read(sample_file("ct-small"))
    a = ct.numpy()[0]
    s = np.zeros(a.shape, np.uint8)
    s[60:64, 60:70] = 2                                              # inside the body
    s[2:5, 2:12] = 1                                                 # air
    write(biomip.Image(s), tmp_path / "s.tif")
    rc, out, err = run(capsys, "learn", "classify", sample_file("ct-small"), "--scribbles", tmp_path / "s.tif",
                       "--out", tmp_path / "ct.tif", "--trees", "10")
    assert rc == 0, err
    lab = (a > -300).astype(np.uint8)
    write(biomip.Image(lab, spacing=ct.spacing[:2]), tmp_path / "body.tif")
    rc, out, err = run(capsys, "learn", "features", tmp_path / "body.tif", "--out", tmp_path / "f.csv")
    assert rc == 0, err
    head = _rows(tmp_path / "f.csv")[0]
    assert "area" in head and "volume" not in head


def test_features_refuse_an_intensity_image_as_labels(capsys, nuclei_files, tmp_path):
    """The arguments swapped (the picture as LABELS): each grey level was an 'object'."""
    rc, _, err = run(capsys, "learn", "features", nuclei_files / "img.tif", "--out", tmp_path / "f.csv")
    assert rc == 2 and "looks like an intensity image" in err and "--image" in err
    assert not (tmp_path / "f.csv").exists()
    from skimage.segmentation import slic

    import biomip

    img = biomip.io.read(nuclei_files / "img.tif").numpy().astype(float)
    sp = slic(img / img.max(), n_segments=2000, channel_axis=None, start_label=1).astype(np.int32)
    write(biomip.Image(sp), tmp_path / "sp.tif")                    # small superpixels are labels
    rc, _, err = run(capsys, "learn", "features", tmp_path / "sp.tif", "--out", tmp_path / "s.csv")
    assert rc == 0, err


def test_window_overlapping_ranges_and_a_tiny_agent(capsys, sample_file, tmp_path):
    from biomip.learn.reinforce import DQNAgent

    path = sample_file("ct-head")
    rc, _, err = run(capsys, "learn", "window", path, "--target", "20,45", "--reference", "20,45",
                     "--out", tmp_path / "w.png")
    assert rc == 2 and "--reference: got 20,45 HU, which overlaps --target" in err and "target_mask" not in err
    DQNAgent(38, 9, hidden=(8, 8)).save(tmp_path / "agent", meta={"study": "window", "mode": "tiny"})
    rc, _, err = run(capsys, "learn", "window", path, "--target", "20,45", "--reference", "-5,15",
                     "--agent", tmp_path / "agent", "--out", tmp_path / "t.png")
    assert rc == 0, err
    assert "--agent comes from a --tiny study" in err
