"""Previews a clinician / biologist can read: orientation, windows, units, colour bars,
checkerboards, overlays and titles that do not collide."""

from pathlib import Path

import numpy as np
import pytest

from biomip.core.errors import InputError
from biomip.core.image import Image
from biomip.core.preview import (
    WINDOW_PRESETS,
    checkerboard,
    ct_window,
    difference_style,
    display_unit,
    image_figure,
    image_views,
    jacobian_style,
    label_colormap,
    orientation_code,
    orientation_letters,
    panels_figure,
    render,
    render_panels,
    sinogram_panel,
)

ROT_Z = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])   # index x -> world +y (P), y -> -x (R)


def _same_world(img: Image, flip_x=False, swap_xy=False) -> Image:
    """The same world image stored another way (x index flipped, or x / y index axes swapped)."""
    a, d, sp, org = img.numpy(), img.direction.copy(), list(img.spacing), img.origin
    if flip_x:
        org = img.index_to_world(np.array([[img.shape[2] - 1, 0, 0]]))[0]
        a, d[:, 0] = a[:, :, ::-1], -d[:, 0]
    if swap_xy:
        a, d, sp = np.swapaxes(a, 1, 2), d[:, [1, 0, 2]], [sp[1], sp[0], sp[2]]
    return Image(np.ascontiguousarray(a), spacing=sp, origin=org, direction=d)


def test_orientation_letters_identity_flipped_and_rotated():
    assert orientation_letters(np.eye(3), "axial") == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert orientation_letters(np.eye(3), "coronal") == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert orientation_letters(np.eye(3), "sagittal") == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    # storage differs, the anatomy on screen does not (radiological convention)
    assert orientation_code(np.eye(3)) == "LPS"
    assert orientation_code(np.diag([-1.0, 1, 1])) == "RPS"
    assert orientation_code(ROT_Z) == "PRS"
    assert orientation_code(np.diag([-1.0, -1, 1])) == "RAS"          # a NIfTI RAS file read into LPS
    for d in (np.diag([-1.0, 1, 1]), ROT_Z, np.diag([-1.0, -1, -1])):
        for plane in ("axial", "coronal", "sagittal"):
            assert orientation_letters(d, plane) == orientation_letters(np.eye(3), plane), (d, plane)
    # oblique: 30 degrees about z -> two letters on the left / right edges
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    obl = orientation_letters(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]), "axial")
    assert obl == {"left": "RA", "right": "LP", "top": "AL", "bottom": "PR"}
    with pytest.raises(InputError, match="plane"):
        orientation_letters(np.eye(3), "transverse-ish")


def test_views_reorient_flipped_and_rotated_volumes_to_the_same_display():
    rng = np.random.default_rng(0)
    ref = Image(rng.random((6, 7, 9)).astype(np.float32), spacing=(1.0, 2.0, 3.0), origin=(5, -3, 2))
    base = image_views(ref)
    assert [v.plane for v in base] == ["axial", "coronal", "sagittal"]
    # physical aspect: axial is x (9 x 1 mm) wide, y (7 x 2 mm) high; coronal z (6 x 3 mm) high
    assert base[0].extent == (0.0, 9.0, 14.0, 0.0) and base[1].extent == (0.0, 9.0, 18.0, 0.0)
    for other in (_same_world(ref, flip_x=True), _same_world(ref, swap_xy=True),
                  _same_world(ref, flip_x=True, swap_xy=True)):
        assert orientation_code(other.direction) != "LPS" or other.shape != ref.shape
        for v0, v1 in zip(base, image_views(other)):
            assert v1.plane == v0.plane and v1.letters == v0.letters and v1.extent == v0.extent
            np.testing.assert_array_equal(v1.take(other.numpy()), v0.take(ref.numpy()))
    # a single slice is shown in its own plane (here: normal along world x -> sagittal)
    one = Image(np.zeros((5, 8, 1), np.float32), spacing=(4.0, 0.5, 0.5))
    assert [v.plane for v in image_views(one)] == ["sagittal"]
    # leading (channel) axes are kept by take
    assert base[0].take(np.zeros((3, 6, 7, 9))).shape == (3, 7, 9)


def test_ct_window_from_dicom_meta_presets_and_values():
    hu = Image(np.linspace(-1024, 1500, 64 * 64).reshape(1, 64, 64).astype(np.int16))
    assert ct_window(hu).name == "soft tissue" and (ct_window(hu).center, ct_window(hu).width) == (40, 400)
    hu.meta.update(modality="CT", unit="HU", body_part="HEAD")
    assert ct_window(hu).name == "brain" and ct_window(hu).label == "W 80 L 40 (brain)"
    hu.meta.update(window_center="35\\700", window_width=["90", "2000"])           # DICOM multi-values: the first
    w = ct_window(hu)
    assert (w.name, w.center, w.width, w.unit) == ("DICOM", 35.0, 90.0, "HU")
    assert ct_window(hu, "lung").label == "W 1500 L -600 (lung)" and ct_window(hu, "Bone").vmax == 1300
    assert (ct_window(hu, (50, 100)).vmin, ct_window(hu, (50, 100)).vmax) == (0.0, 100.0)
    assert set(WINDOW_PRESETS) >= {"brain", "bone", "lung", "soft tissue"}
    with pytest.raises(InputError, match="window"):
        ct_window(hu, "liverish")
    with pytest.raises(InputError, match="width"):
        ct_window(hu, (40, 0))
    mr = Image(np.linspace(-600, 30000, 64).reshape(4, 4, 4), meta={"modality": "MR"})
    assert ct_window(mr) is None
    # the preview uses it: window in the title, HU on the colour bar
    fig = image_figure(hu)
    assert "W 90 L 35 (DICOM)" in fig._suptitle.get_text()
    assert any(ax.get_ylabel() == "HU" for ax in fig.axes)
    im = fig.axes[0].get_images()[0]
    assert im.get_clim() == (-10.0, 80.0)


def test_microscopy_axes_in_micrometres():
    img = Image(np.zeros((40, 50), np.uint16), spacing=(0.0002, 0.0002), meta={"modality": "fluorescence microscopy"})
    assert display_unit(img) == ("µm", 1000.0)
    assert display_unit(Image(np.zeros((4, 4)), spacing=0.7)) == ("mm", 1.0)
    assert display_unit(Image(np.zeros((4, 4)), meta={"spacing_known": False})) == ("px", 1.0)
    fig = image_figure(img)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "µm" and ax.get_xlim()[1] == pytest.approx(50 * 0.2)
    assert "µm" in fig._suptitle.get_text()
    vol = Image(np.zeros((5, 6, 7), np.float32), spacing=(0.0001, 0.0001, 0.0005))
    assert [v.plane for v in image_views(vol)] == ["XY", "XZ", "YZ"] and image_views(vol)[0].letters is None


def test_render_panels_colorbars_with_units_and_png(tmp_path):
    a = np.random.default_rng(1).normal(size=(16, 16))
    fig = panels_figure([("dose", a, {"colorbar": "Gy"}), ("plain", a, None)])
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert len(fig.axes) == 3 and "Gy" in labels                        # two panels + one colour bar
    diff = difference_style(a, -2 * a, unit="HU")
    assert diff["vmin"] == -diff["vmax"] and diff["colorbar"] == "difference (HU)"
    jac = jacobian_style(np.array([0.5, 1.2]), percentile=100)
    assert (jac["vmin"], jac["vmax"], jac["colorbar"]) == (0.5, 1.5, "det J")
    spikes = np.r_[np.ones(999), 40.0]                                  # one extreme voxel does not set the range
    assert jacobian_style(spikes)["vmax"] < 2 and jacobian_style(np.r_[spikes, -0.5])["vmin"] == -0.5
    fig = panels_figure([("before", a, diff), ("after", -2 * a, diff), ("J", a + 1, jac)], cols=3)
    bars = [ax for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert len(bars) == 2                                              # the two differences share one bar
    assert {b.get_ylabel() or b.get_xlabel() for b in bars} == {"det J",
                                                                "difference (HU) (shared by the 2 panels above)"}
    p = render_panels([("EPE", np.abs(a), {"colorbar": "mm", "cmap": "viridis"})], tmp_path / "p.png", title="t")
    assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    t, s, kw = sinogram_panel(np.zeros((90, 64)), {"kind": "parallel", "angles": list(np.linspace(0, np.pi, 90)),
                                                    "n_det": 64, "det_spacing": 0.5, "det_offset": 0.0})
    assert kw["extent"][:2] == (-16.0, 16.0) and kw["extent"][3] < 0 < 180 < kw["extent"][2]


def test_checkerboard_has_the_requested_tiles():
    for shape, tiles in (((64, 48), 8), ((50, 37), 5), ((9, 9), 3)):
        cb = checkerboard(np.zeros(shape), np.ones(shape), tiles=tiles)
        assert cb.shape == shape and cb[0, 0] == 0
        runs = lambda line: 1 + int(np.count_nonzero(np.diff(line)))     # noqa: E731
        assert runs(cb[0]) == tiles and runs(cb[:, 0]) == tiles
        assert all(runs(cb[i]) == tiles for i in range(shape[0]))
    n = checkerboard(np.full((8, 8), 5.0), np.full((8, 8), 900.0), tiles=2, normalize=True)
    assert n.max() <= 900
    fig = panels_figure([("checkerboard", checkerboard(np.zeros((32, 32)), np.ones((32, 32))), {"grid": 8})])
    assert len(fig.axes[0].lines) == 14                                # 7 inner borders each way


def test_labels_on_black_and_overlays_labelled():
    lab = np.zeros((32, 32), np.uint16)
    lab[4:10, 4:10], lab[20:28, 15:30] = 1, 7
    fig = image_figure(Image(lab, meta={"kind": "labels"}))
    assert fig.axes[0].get_facecolor()[:3] == (0.0, 0.0, 0.0) and "2 labels" in fig.axes[0].get_title()
    img = Image(np.random.default_rng(0).random((32, 32)).astype(np.float32))
    fig = image_figure(img, labels=Image(lab))
    axes = [ax for ax in fig.axes if ax.get_images()]
    assert len(axes) == 2 and "overlay" in axes[1].get_title()          # the image alone, then with the overlay
    legend = fig.legends[0]
    assert legend is not None and "overlay" in legend.get_texts()[0].get_text()


def test_long_titles_do_not_collide():
    long = "a rather long panel title that names the method, its parameters and the metric it reached"
    a = np.random.default_rng(0).random((40, 60))
    panels = [(f"panel {i}: {long}", a, {"colorbar": "mm"} if i % 2 else None) for i in range(5)]
    fig = panels_figure(panels, title="A long figure title that goes on about what the figure shows " * 3, cols=5)
    fig.draw_without_rendering()
    r = fig.canvas.get_renderer()
    boxes = [("suptitle", fig._suptitle.get_window_extent(r))]
    axes = [ax for ax in fig.axes if ax.get_images()]
    assert len(axes) == 5
    boxes += [(f"title {i}", ax.title.get_window_extent(r)) for i, ax in enumerate(axes)]
    boxes += [(f"panel {i}", ax.get_window_extent(r)) for i, ax in enumerate(axes)]
    boxes += [(f"bar {i}", ax.get_window_extent(r)) for i, ax in enumerate(fig.axes) if not ax.get_images()]
    W, H = fig.bbox.width, fig.bbox.height
    for i, (n1, b1) in enumerate(boxes):
        assert b1.x0 >= -1 and b1.y0 >= -1 and b1.x1 <= W + 1 and b1.y1 <= H + 1, n1
        for n2, b2 in boxes[i + 1:]:
            assert not b1.overlaps(b2), (n1, n2)


def test_render_keeps_its_signature_and_writes_volumes(tmp_path):
    vol = Image(np.random.default_rng(0).random((12, 20, 16)).astype(np.float32), spacing=(0.8, 0.8, 2.5))
    lab = vol.with_array((vol.numpy() > 0.9).astype(np.uint8))
    p = render(vol, tmp_path / "v.png", "volume", lab, None, 60)
    assert Path(p).read_bytes()[:4] == b"\x89PNG"
    p = render_panels([("a", vol.numpy()[0], {"aspect": "auto", "cmap": "magma"})], tmp_path / "a.png", "t", 60, 2)
    assert Path(p).read_bytes()[:4] == b"\x89PNG"
    fig = image_figure(vol, window=(0.5, 1.0), colorbar="a.u.")
    assert fig.axes[0].get_images()[0].get_clim() == (0.0, 1.0)
    assert [cb.ax.get_xlabel() for cb in _bars(fig)] == ["a.u. (shared by the 3 panels above)"]    # the 3 views
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles[0].startswith("axial") and [t.get_text() for t in fig.axes[0].texts] == ["R", "L", "A", "P"]


def _bars(fig):
    return [ax._colorbar for ax in fig.axes if hasattr(ax, "_colorbar")]


def test_overlay_legend_swatch_is_the_colour_drawn():
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Rectangle

    img = Image(np.random.default_rng(0).random((32, 32)).astype(np.float32))
    one = np.zeros((32, 32), np.uint8)
    one[4:20, 6:25] = 1                                                   # otsu: one label
    legend = image_figure(img, labels=Image(one)).legends[0]
    swatch = [r for r in legend.findobj(Rectangle) if r is not legend.legendPatch]
    drawn = to_rgb(label_colormap()(1))
    assert swatch and all(to_rgb(r.get_edgecolor()) == drawn for r in swatch)
    assert all(to_rgb(r.get_facecolor()) == drawn for r in swatch)
    many = np.zeros((32, 32), np.uint16)
    many[2:8, 2:8], many[10:20, 10:30], many[22:30, 3:9] = 3, 9, 40       # several: their own colours
    legend = image_figure(img, labels=Image(many)).legends[0]
    swatch = {to_rgb(r.get_edgecolor()) for r in legend.findobj(Rectangle) if r is not legend.legendPatch}
    assert swatch == {to_rgb(label_colormap()(i)) for i in (3, 9, 40)}
    assert "3 in view" in legend.get_texts()[0].get_text()


def test_overlay_legend_outside_the_image_and_its_letters():
    vol = Image(np.random.default_rng(0).random((30, 40, 36)).astype(np.float32), spacing=(1.0, 1.0, 1.0))
    lab = vol.with_array(np.digitize(vol.numpy(), [0.5, 0.8]).astype(np.uint8))        # gmm --k 3
    fig = image_figure(vol, labels=lab)
    fig.draw_without_rendering()
    r = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 3
    assert len(fig.legends) == 1 and "3 views" in fig.legends[0].get_texts()[0].get_text()
    box = fig.legends[0].get_window_extent(r)
    assert box.y0 >= -1 and box.x0 >= -1 and box.x1 <= fig.bbox.width + 1
    for ax in panels:
        assert not box.overlaps(ax.get_window_extent(r)), ax.get_title()              # not over the image
        assert all(not box.overlaps(t.get_window_extent(r)) for t in ax.texts)         # nor the letters
        assert not box.overlaps(ax.xaxis.label.get_window_extent(r))


def test_colour_bars_show_clipping_and_jacobian_covers_true_extremes():
    jd = np.ones((64, 64))
    jd[10, 10], jd[50, 40] = 0.62, 2.85
    kw = jacobian_style(jd)
    assert kw["vmin"] <= 0.62 and kw["vmax"] >= 2.85 and kw["vmin"] + kw["vmax"] == pytest.approx(2.0)
    wild = np.r_[np.ones(999), 40.0]                                    # beyond [0, 3]: robust, arrow on the bar
    assert jacobian_style(wild)["vmax"] < 2
    d = np.random.default_rng(0).normal(size=(64, 64))
    d[0, 0] = 50.0
    diff = difference_style(d)                                          # robust: clips the outlier
    fig = panels_figure([("d", d, diff), ("J", wild.reshape(10, 100), jacobian_style(wild)),
                         ("m", np.abs(d), {"colorbar": "mm", "vmin": 0, "vmax": 100})], cols=3)
    assert {cb.ax.get_ylabel(): cb.extend for cb in _bars(fig)} == {"difference": "both", "det J": "max",
                                                                    "mm": "neither"}
    assert [cb.extend for cb in _bars(panels_figure([("J", jd, kw)]))] == ["neither"]


def test_label_maps_named_by_their_number_of_labels():
    seg = np.zeros((20, 20), np.uint8)
    seg[5:15, 5:15] = 1                                                 # a liver SEG: one label
    title = image_figure(Image(seg, meta={"kind": "labels"})).axes[0].get_title()
    assert "1 label (label map)" in title and "instance" not in title
    inst = (np.arange(400).reshape(20, 20) % 40 + 1).astype(np.uint16)  # 40 nuclei
    assert "40 labels (instance map)" in image_figure(Image(inst, meta={"kind": "labels"})).axes[0].get_title()


def test_colorbar_group_shows_one_bar_under_all_its_panels():
    rng = np.random.default_rng(0)
    ref, rec = rng.random((32, 32)), rng.random((32, 32)) * 1.2
    mu = {"colorbar": "μ (1/mm)", "colorbar_group": "mu", "vmin": 0.0, "vmax": 1.0}
    fig = panels_figure([("sinogram", rng.random((40, 32)), {"colorbar": "line integral"}),
                         ("reference", ref, mu), ("reconstruction", rec, mu),
                         ("error", rec - ref, mu | difference_style(rec - ref, unit="1/mm"))], cols=4)
    fig.draw_without_rendering()
    r = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_images() and not hasattr(ax, "_colorbar")]
    bar = next(cb for cb in _bars(fig) if "μ" in (cb.ax.get_xlabel() + cb.ax.get_ylabel()))
    assert bar.orientation == "horizontal" and "shared by the 2 panels" in bar.ax.get_xlabel()
    b = bar.ax.get_window_extent(r)
    ref_box, rec_box = panels[1].get_window_extent(r), panels[2].get_window_extent(r)
    assert b.x0 < ref_box.x1 and b.x1 > rec_box.x0 and b.y1 < min(ref_box.y0, rec_box.y0)   # under both
    assert not b.overlaps(panels[0].get_window_extent(r)) and not b.overlaps(panels[3].get_window_extent(r))
    assert bar.extend == "max"                                          # the reconstruction exceeds the scale
    assert panels[1].get_images()[0].get_clim() == panels[2].get_images()[0].get_clim() == (0.0, 1.0)
