// biomip serve: the page.  Plain ES module, no build step; the viewer is the vendored NiiVue.
//
// Voxel orders.  The server sends every image as NIfTI in the file's own voxel order
// ("native": index = i + nx * (j + ny * k), numpy order of the image is (k, j, i)).  NiiVue
// reorients volumes to RAS internally: its drawing bitmap (our label layer) is in RAS order.
// Every label map that goes to or comes from the server is converted here with NiiVue's
// img2RASstart / img2RASstep, and a saved label map is written with the image's own NIfTI
// header bytes (same sform / qform), so it lies voxel for voxel on the image grid.
import {
  Niivue, NVImage, NVImageFromUrlOptions, SLICE_TYPE, SHOW_RENDER, MULTIPLANAR_TYPE, cmapper,
} from './vendor/niivue/niivue.js';

const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => Array.from(document.querySelectorAll(sel));

// ------------------------------------------------------------------ API
const TOKEN = new URLSearchParams(location.search).get('token');

class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

function withToken(url) {
  if (!TOKEN) return url;
  return url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(TOKEN);
}

async function api(path, { method = 'GET', json, body, headers = {}, raw = false } = {}) {
  const h = { ...headers };
  if (TOKEN) h.Authorization = `Bearer ${TOKEN}`;
  let payload = body;
  if (json !== undefined) {
    h['Content-Type'] = 'application/json';
    payload = JSON.stringify(json);
  }
  let res;
  try {
    res = await fetch(path, { method, headers: h, body: payload, credentials: 'same-origin' });
  } catch (err) {
    throw new ApiError(0, `the server cannot be reached (${err.message})`);
  }
  if (!res.ok) {
    let detail = res.statusText;
    try {
      const js = await res.json();
      detail = typeof js.detail === 'string' ? js.detail : JSON.stringify(js.detail ?? js);
    } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, detail);
  }
  if (raw) return res;
  const type = res.headers.get('content-type') || '';
  return type.includes('json') ? res.json() : res.arrayBuffer();
}

function showError(err) {
  let msg = err instanceof ApiError ? `Server said ${err.status}: ${err.detail}` : `Error: ${err.message || err}`;
  if (err instanceof ApiError && err.status === 401) {
    msg += ' — open the address `biomip serve` printed, with its ?token=…';
  }
  $('#error-text').textContent = msg;
  $('#error').hidden = false;
  console.error(err);
}
function clearError() { $('#error').hidden = true; $('#error-text').textContent = ''; }

let busyCount = 0;
async function busy(fn) {
  busyCount++;
  $('#busy').hidden = false;
  try {
    return await fn();
  } catch (err) {
    showError(err);
    return undefined;
  } finally {
    if (--busyCount === 0) $('#busy').hidden = true;
  }
}

// ------------------------------------------------------------------ NIfTI
async function gunzip(buf) {
  const u8 = new Uint8Array(buf);
  if (u8[0] !== 0x1f || u8[1] !== 0x8b) return buf;
  const stream = new Blob([u8]).stream().pipeThrough(new DecompressionStream('gzip'));
  return new Response(stream).arrayBuffer();
}
async function gzip(buf) {
  const stream = new Blob([buf]).stream().pipeThrough(new CompressionStream('gzip'));
  return new Response(stream).arrayBuffer();
}

const DTYPES = {
  2: Uint8Array, 4: Int16Array, 8: Int32Array, 16: Float32Array, 64: Float64Array,
  256: Int8Array, 512: Uint16Array, 768: Uint32Array, 1024: BigInt64Array, 1280: BigUint64Array,
};

/** Parse an uncompressed NIfTI-1 / NIfTI-2 buffer (little endian): header fields + native data. */
function parseNifti(buf) {
  const dv = new DataView(buf);
  const size = dv.getInt32(0, true);
  let n;
  if (size === 348) {
    const dims = [];
    for (let i = 0; i < 8; i++) dims.push(dv.getInt16(40 + 2 * i, true));
    n = {
      version: 1, hsize: 348, dims, datatype: dv.getInt16(70, true),
      voxOffset: Math.round(dv.getFloat32(108, true)),
      slope: dv.getFloat32(112, true), inter: dv.getFloat32(116, true),
    };
  } else if (size === 540) {
    const dims = [];
    for (let i = 0; i < 8; i++) dims.push(Number(dv.getBigInt64(16 + 8 * i, true)));
    n = {
      version: 2, hsize: 540, dims, datatype: dv.getInt16(12, true),
      voxOffset: Number(dv.getBigInt64(168, true)),
      slope: dv.getFloat64(176, true), inter: dv.getFloat64(184, true),
    };
  } else {
    throw new Error(`not a little-endian NIfTI file (header size ${size})`);
  }
  const T = DTYPES[n.datatype];
  if (!T) throw new Error(`NIfTI datatype ${n.datatype} is not supported by the page`);
  const nd = Math.max(1, n.dims[0]);
  let count = 1;
  for (let i = 1; i <= nd; i++) count *= Math.max(1, n.dims[i]);
  n.header = buf.slice(0, n.hsize);
  n.nVox3 = Math.max(1, n.dims[1]) * Math.max(1, nd >= 2 ? n.dims[2] : 1) * Math.max(1, nd >= 3 ? n.dims[3] : 1);
  let data;
  if (n.voxOffset % T.BYTES_PER_ELEMENT === 0) data = new T(buf, n.voxOffset, count);
  else data = new T(buf.slice(n.voxOffset, n.voxOffset + count * T.BYTES_PER_ELEMENT));
  if (T === BigInt64Array || T === BigUint64Array) data = Float64Array.from(data, Number);
  n.data = data;
  if (!Number.isFinite(n.slope) || n.slope === 0) n.slope = 1;
  if (!Number.isFinite(n.inter)) n.inter = 0;
  return n;
}

/** A NIfTI label map (uint8 or uint16, gzip) with the reference image's header bytes. */
async function makeLabelNifti(ref, data) {
  const isU16 = data instanceof Uint16Array;
  const hdr = new Uint8Array(ref.header.slice(0));
  const dv = new DataView(hdr.buffer);
  const nd = Math.min(ref.dims[0], 3);
  let maxv = 0;
  for (let i = 0; i < data.length; i++) if (data[i] > maxv) maxv = data[i];
  const offset = ref.version === 1 ? 352 : 544;
  const descrip = new TextEncoder().encode('biomip serve labels');
  if (ref.version === 1) {
    dv.setInt16(40, nd, true);
    for (let i = 4; i < 8; i++) dv.setInt16(40 + 2 * i, 1, true);
    dv.setInt16(68, 1002, true);                       // NIFTI_INTENT_LABEL
    dv.setInt16(70, isU16 ? 512 : 2, true);
    dv.setInt16(72, isU16 ? 16 : 8, true);
    dv.setFloat32(108, offset, true);
    dv.setFloat32(112, 1, true);
    dv.setFloat32(116, 0, true);
    dv.setFloat32(124, maxv, true);
    dv.setFloat32(128, 0, true);
    hdr.fill(0, 148, 228);
    hdr.set(descrip, 148);
  } else {
    dv.setInt16(12, isU16 ? 512 : 2, true);
    dv.setInt16(14, isU16 ? 16 : 8, true);
    dv.setBigInt64(16, BigInt(nd), true);
    for (let i = 4; i < 8; i++) dv.setBigInt64(16 + 8 * i, 1n, true);
    dv.setBigInt64(168, BigInt(offset), true);
    dv.setFloat64(176, 1, true);
    dv.setFloat64(184, 0, true);
    dv.setFloat64(192, maxv, true);
    dv.setFloat64(200, 0, true);
    dv.setInt32(504, 1002, true);
    hdr.fill(0, 240, 320);
    hdr.set(descrip, 240);
  }
  const out = new Uint8Array(offset + data.byteLength);
  out.set(hdr, 0);                                      // bytes hsize..offset stay 0: no extension
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), offset);
  return gzip(out.buffer);
}

// ------------------------------------------------------------------ state
const S = {
  info: null,
  images: [],
  image: null,          // entry of GET /images
  nifti: null,          // parsed NIfTI of the open image (header + native data)
  vol: null,            // NiiVue volume 0
  labels: [],           // [{value, name, color: '#rrggbb'}]
  active: 1,
  tool: 'navigate',
  seeds: [],            // [{vox: [z,y,x] or [y,x], mm}]
  thrBase: null,        // drawing before the threshold preview
  thrPartial: false,    // the preview shows the planes through the cross-hair only (large volumes)
  thrSettleMs: 400,     // ... and the whole volume follows when the value rests this long
  checker: null,        // {fixed, moving, vol}
  lastLocation: null,
  timings: {},
  startup: {},          // ms since navigation: viewer_ms (NiiVue ready), listing_ms (info + images listed)
  job: null,
  events: null,
  lossPoints: [],       // [{step, loss}] from the per-step events
  metricPoints: [],     // [{step, epoch, value}] from the per-epoch events (validation metric)
  stepsTotal: null,
};
window.biomip = S;    // for the browser tests and the curious

const PALETTE = ['#000000', '#ff3b30', '#34c759', '#0a84ff', '#ffd60a', '#bf5af2', '#64d2ff', '#ff9f0a',
  '#ff375f', '#30d158', '#5e5ce6', '#ffcc00', '#ac8e68', '#66d4cf', '#e67e22', '#9b59b6'];
function defaultColor(v) {
  if (v < PALETTE.length) return PALETTE[v];
  const h = (v * 137.508) % 360;                        // golden angle: distinct neighbours
  return hslToHex(h, 0.75, 0.55);
}
function hslToHex(h, s, l) {
  const f = (n) => {
    const k = (n + h / 30) % 12;
    const c = l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1));
    return Math.round(255 * c).toString(16).padStart(2, '0');
  };
  return `#${f(0)}${f(8)}${f(4)}`;
}

// ------------------------------------------------------------------ viewer
const nv = new Niivue({
  backColor: [0.06, 0.065, 0.08, 1],
  crosshairColor: [1, 0.78, 0.2, 0.9],
  crosshairWidth: 1,                // set per image and layout by fitCrosshair(): ~1 screen pixel, with a gap
  crosshairWidthUnit: 'mm',
  crosshairGap: 0,
  fontColor: [0.9, 0.92, 0.96, 1],
  isCornerOrientationText: true,    // letters in the tile corner, never under the cross-hair
  show3Dcrosshair: true,
  isColorbar: false,
  isOrientCube: true,
  isOrientationTextVisible: true,
  isForceMouseClickToVoxelCenters: true,
  multiplanarShowRender: SHOW_RENDER.ALWAYS,
  multiplanarLayout: MULTIPLANAR_TYPE.GRID,
  multiplanarEqualSize: false,
  multiplanarPadPixels: 6,
  dragAndDropEnabled: false,
  loadingText: '',
  logLevel: 'error',
  penSize: 1,
  maxDrawUndoBitmaps: 24,
  isFilledPen: false,
  isRadiologicalConvention: true,   // as 3D Slicer, ITK-SNAP, OHIF; and a 2-D micrograph shows column 0 on the left
  textHeight: 0.05,
  fontMinPx: 14,
});
S.nv = nv;

function volData(v) { return v.img; }

/** Iterate RAS voxels: fn(rasIndex, nativeIndex). Same arithmetic as NiiVue's own reorientation. */
function forRas(fn) {
  const v = S.vol;
  const d = v.dimsRAS, st = v.img2RASstep, s0 = v.img2RASstart;
  let r = 0;
  for (let z = 0; z < d[3]; z++) {
    const zi = s0[2] + z * st[2];
    for (let y = 0; y < d[2]; y++) {
      const yzi = s0[1] + y * st[1] + zi;
      let n = s0[0] + yzi;
      for (let x = 0; x < d[1]; x++, r++, n += st[0]) fn(r, n);
    }
  }
}

// Label values.  NiiVue's drawing bitmap holds 8 bits (0..255).  A label map whose values go above 255
// is shown through a lookup table S.lut (drawing value 1..255 -> the file's value) when it has at most
// 255 distinct labels: a save writes the file's values back, unchanged.  With more distinct labels the
// page cannot hold them: the map is shown read-only (S.readOnly says why) and Save is refused.
const MAX_DRAW_LABELS = 255;
function identityLut() { return Int32Array.from({ length: 256 }, (_, i) => i); }
function origValue(v) { return S.lut ? S.lut[v] : v; }

/** Native-order label map (from the server) -> RAS drawing bitmap + lookup table (lossless when it fits). */
function nativeToRas(native) {
  const out = new Uint8Array(S.vol.dimsRAS[1] * S.vol.dimsRAS[2] * S.vol.dimsRAS[3]);
  let max = 0;
  const seen = new Set();
  const n3 = S.nifti.nVox3;
  for (let i = 0; i < n3; i++) {
    const v = native[i];
    if (v > max) max = v;
    if (v > 0 && seen.size <= MAX_DRAW_LABELS) seen.add(v);
  }
  if (max <= 255) {
    forRas((r, n) => { out[r] = native[n]; });
    return { ras: out, lut: identityLut(), distinct: seen.size, max, readOnly: false };
  }
  if (seen.size <= MAX_DRAW_LABELS) {                   // > 255 but few labels: renumber for display only
    const values = Array.from(seen).sort((a, b) => a - b);
    const lut = identityLut();
    const code = new Map();
    values.forEach((v, k) => { lut[k + 1] = v; code.set(v, k + 1); });
    for (let k = values.length + 1; k < 256; k++) lut[k] = values[values.length - 1] + (k - values.length);
    forRas((r, n) => { const v = native[n]; out[r] = v > 0 ? code.get(v) : 0; });
    return { ras: out, lut, distinct: seen.size, max, readOnly: false };
  }
  let distinct = 0;                                     // too many to hold: count them, show modulo 255
  const all = new Set();
  for (let i = 0; i < n3; i++) if (native[i] > 0) all.add(native[i]);
  distinct = all.size;
  forRas((r, n) => { const v = native[n]; out[r] = v > 255 ? ((v - 1) % 255) + 1 : v; });
  return { ras: out, lut: identityLut(), distinct, max, readOnly: true };
}

/** Show a label map (native order, as the server sends it): lossless, or read-only with a visible reason. */
function showLabelMap(native) {
  const res = nativeToRas(native);
  S.lut = res.lut;
  setReadOnly(res.readOnly
    ? `this label map has ${res.distinct.toLocaleString('en')} labels (max ${res.max}); the page edits up to ` +
      `${MAX_DRAW_LABELS} labels — it is shown read-only (colours repeat). Edit it in Python, or relabel.`
    : null);
  return res;
}

function setReadOnly(msg) {
  S.readOnly = msg;
  const el = $('#labels-readonly');
  el.hidden = !msg;
  el.textContent = msg || '';
  document.body.classList.toggle('labels-readonly', !!msg);
  for (const sel of ['#save-labels', '#add-label', '#thr-apply', '#grow-run']) $(sel).disabled = !!msg;
  $$('.tools [data-tool]').forEach((b) => { b.disabled = !!msg && b.dataset.tool !== 'navigate'; });
  if (msg && S.tool !== 'navigate') setTool('navigate');
}

/** RAS drawing bitmap -> native-order label map with the file's label values (uint8, or uint16 above 255). */
function rasToNative(ras) {
  const lut = S.lut || identityLut();
  const used = new Uint8Array(256);
  for (let i = 0; i < ras.length; i++) used[ras[i]] = 1;
  let maxv = 0;
  for (let v = 1; v < 256; v++) if (used[v] && lut[v] > maxv) maxv = lut[v];
  if (maxv > 65535) throw new Error(`label value ${maxv} does not fit the label file (0..65535)`);
  const out = maxv > 255 ? new Uint16Array(S.nifti.nVox3) : new Uint8Array(S.nifti.nVox3);
  forRas((r, n) => { out[n] = lut[ras[r]]; });
  return out;
}

function ensureDrawing() {
  if (!nv.drawBitmap || nv.drawBitmap.length !== S.vol.dimsRAS[1] * S.vol.dimsRAS[2] * S.vol.dimsRAS[3]) {
    nv.createEmptyDrawing();
  }
}

function setDrawing(ras, { undo = true } = {}) {
  ensureDrawing();
  nv.drawBitmap.set(ras);
  if (undo) nv.drawAddUndoBitmap();
  nv.refreshDrawing(true);
  updateLabelCounts();
}

/** Draw now and wait until the GPU has drawn it (a 1-pixel read-back blocks until then). */
function syncDraw() {
  nv.drawScene();
  const gl = nv.gl;
  gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
  return performance.now();
}

// ------------------------------------------------------------------ images
async function loadInfo() {
  S.info = await api('/info');
  $('#workspace').textContent = S.info.workspace ? `workspace: ${S.info.workspace}` : '';
  $('#version').textContent = `biomip ${S.info.version}`;
  buildMethodMenu();
  buildModelMenu();
}

/** Physical units of an image: the server's "units" when it says, else a guess (a plain 2-D picture
 * with spacing 1 carries no physical size). */
function unitsOf(im) {
  if (!im) return 'mm';
  if (im.units) return im.units === 'mm' ? 'mm' : im.units;
  const sp = im.spacing || [];
  const picture = /tif|png|jpe?g|bmp|gif/i.test(`${im.format || ''} ${im.name || ''}`) && !/ome/i.test(im.format || '');
  return im.ndim === 2 && picture && sp.length && sp.every((x) => Number(x) === 1) ? 'px' : 'mm';
}
function isPixelImage(im = S.image) { return unitsOf(im) !== 'mm'; }

/** "24×96×96 voxels · 2.5×0.8×0.8 mm (z, y, x)": shape and spacing in the same (numpy) order. */
function describeGeometry(im) {
  const nd = im.ndim || Math.min(3, (im.shape || []).length);
  const shape = (im.shape || []).slice(-nd);
  let sp = Array.isArray(im.spacing_zyx) ? im.spacing_zyx : (im.spacing || []).slice().reverse();
  sp = sp.slice(-nd).map((x) => +Number(x).toPrecision(3));
  const axes = nd === 2 ? '(y, x)' : '(z, y, x)';
  const unit = unitsOf(im);
  const size = unit === 'px' ? 'pixel size unknown' : `${sp.join('×')} ${unit}`;
  return `${shape.join('×')} ${nd === 2 ? 'pixels' : 'voxels'} · ${size} ${axes}`;
}

async function loadImages() {
  const got = await api('/images');
  const list = Array.isArray(got) ? got : (got.images || []);
  const extra = Array.isArray(got) ? [] : (got.unreadable || got.errors || []);
  let skipped = [];                          // files that look like images but cannot be read: [{path, reason}]
  try {
    skipped = await api('/images/skipped');
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) throw err;    // an older server: errors in the list only
  }
  S.images = list.filter((im) => !im.error);
  const bad = list.filter((im) => im.error).concat(extra, Array.isArray(skipped) ? skipped : []);
  const ul = $('#image-list');
  ul.replaceChildren();
  for (const im of S.images) {
    const li = document.createElement('li');
    li.dataset.id = im.id;
    li.tabIndex = 0;
    li.innerHTML = '<span class="name"><span class="dir"></span><span class="file"></span></span><span class="meta"></span>';
    const path = String(im.path || '');
    const dir = path.includes('/') ? path.slice(0, path.lastIndexOf('/') + 1) : '';
    li.querySelector('.dir').textContent = dir;                 // "uploads/", a sub-folder
    li.querySelector('.file').textContent = im.name;
    li.title = path || im.name;
    li.querySelector('.meta').textContent = `${im.ndim}-D ${describeGeometry(im)} · ${im.dtype}` +
      (im.channels > 1 ? ` · ${im.channels} ch` : '') + (im.labels?.length ? ` · labels v${Math.max(...im.labels)}` : '') +
      (im.in_training_set ? ' · training' : '');
    if (S.image && S.image.id === im.id) li.classList.add('on');
    li.addEventListener('click', () => openImage(im.id));
    li.addEventListener('keydown', (e) => { if (e.key === 'Enter') openImage(im.id); });
    ul.append(li);
  }
  // files the server lists but cannot read: one line under the list, the reasons on expand / hover
  const box = $('#unreadable');
  box.hidden = !bad.length;
  $('#unreadable-summary').textContent = `${bad.length} file${bad.length === 1 ? '' : 's'} could not be read`;
  const bl = $('#unreadable-list');
  bl.replaceChildren();
  for (const b of bad) {
    const li = document.createElement('li');
    const name = b.path || b.name || b.id || '?';
    const why = b.error || b.reason || b.detail || 'unreadable';
    li.textContent = `${name}: ${why}`;
    li.title = why;
    bl.append(li);
  }
  box.title = bad.map((b) => `${b.path || b.name || b.id}: ${b.error || b.reason || b.detail}`).join('\n');
  for (const sel of [$('#reg-fixed'), $('#reg-moving')]) {
    const keep = sel.value;
    sel.replaceChildren(...S.images.filter((im) => !im.error).map((im) => new Option(im.name, im.id)));
    if (keep) sel.value = keep;
  }
  if (S.images.length > 1 && !$('#reg-moving').dataset.touched) $('#reg-moving').selectedIndex = 1;
}

// Large volumes are shown first at a coarse resolution: the server sends every f-th voxel (same
// field of view and geometry, ~0.5 M voxels, GET /images/{id}?step=f) and the page draws it while
// the full volume is still on its way.  NiiVue's texture preparation costs ~0.5 µs per voxel in
// software WebGL and a 256³ float32 volume is 64 MB, so the preview is on screen in a fraction of
// the time; the full-resolution volume replaces it before any tool is enabled (body[data-state]
// goes 'preview' -> 'ready').
const PREVIEW_ABOVE = 4 * 1024 * 1024;   // voxels
const PREVIEW_VOXELS = 512 * 1024;       // the preview has at most about this many

async function makeVolume(buf, name) {
  const opts = NVImageFromUrlOptions(name);
  opts.buffer = buf;
  opts.name = name;
  const vol = await NVImage.loadFromUrl(opts);
  vol.onColormapChange = nv.onColormapChange;
  return vol;
}

/** Run fn with NiiVue's redraws held back (each costs a whole frame in software WebGL); the caller draws. */
function holdDraws(fn) {
  S.holdDraw = true;
  try { return fn(); } finally { S.holdDraw = false; }
}

/** The preview step of a listed image: 0 when it is shown at full resolution at once. */
function previewStep(im) {
  const sh = im.shape || [];
  if (im.axes !== 'zyx' || sh.length !== 3 || Math.min(...sh) < 8) return 0;
  const n = sh[0] * sh[1] * sh[2];
  return n > PREVIEW_ABOVE ? Math.ceil(Math.cbrt(n / PREVIEW_VOXELS)) : 0;
}

async function openImage(id) {
  clearError();
  const im = S.images.find((x) => x.id === id);
  if (!im) { showError(new Error(`no image ${id}`)); return; }
  document.body.dataset.state = 'loading';
  const t0 = performance.now();
  await busy(async () => {
    const url = `/images/${encodeURIComponent(id)}?compress=false`;      // local: no gzip round trip
    const f = previewStep(im);
    // big: the preview first, then the full volume, which downloads while the preview is drawn
    const first = await api(f ? `${url}&step=${f}` : url);
    const pending = f ? api(url) : null;
    const t1 = performance.now();
    clearTimeout(S.thrTimer);
    nv.closeDrawing();
    while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1]);
    Object.assign(S, { checker: null, vol: null, image: im, nifti: null, savedVersion: null, seeds: [],
      thrBase: null, thrPartial: false, lut: null });
    showSeeds();
    setReadOnly(null);
    resetLabels();
    $('#save-result').textContent = '';
    const t = { image: id, fetch_ms: t1 - t0 };
    applyLabelColors();          // the drawing layer itself is made on first use: it slows the 3-D render
    let buf = await gunzip(first);
    if (f) {
      const preview = await makeVolume(buf, `${id}-preview.nii`);
      holdDraws(() => { nv.addVolume(preview); setupViewForImage(preview); });
      const tc = performance.now();
      const tp = syncDraw();
      fitCrosshair();
      Object.assign(t, {
        preview_bytes: first.byteLength, preview_niivue_ms: tc - t1, preview_gpu_ms: tp - tc,
        preview_paint_ms: tp - t0, preview_since_navigation_ms: tp,
        preview_shape: Array.from(preview.hdr.dims.slice(1, 4)), preview_step: f,
      });
      document.body.dataset.state = 'preview';
      $('#timing').textContent = `preview (1/${f} resolution) in ${Math.round(tp - t0)} ms; loading full resolution…`;
      const raw = await pending;
      t.full_fetch_ms = performance.now() - t0;
      buf = await gunzip(raw);
      t.bytes = raw.byteLength;
      const full = await makeVolume(buf, `${id}.nii`);
      full.cal_min = preview.cal_min;              // keep the window the user may already have changed
      full.cal_max = preview.cal_max;
      nv.volumes = [full];
      holdDraws(() => nv.setVolume(full, 0));       // replaces the preview: one texture preparation
    } else {
      t.bytes = first.byteLength;
      const vol = await makeVolume(buf, `${id}.nii`);
      holdDraws(() => nv.addVolume(vol));
    }
    S.nifti = parseNifti(buf);
    S.vol = nv.volumes[0];
    const t3 = performance.now();
    holdDraws(() => setupViewForImage(S.vol));
    const t4 = syncDraw();
    fitCrosshair();
    Object.assign(t, {
      niivue_load_ms: t3 - t1, full_paint_ms: t4 - t0, since_navigation_ms: t4,
      first_paint_ms: f ? t.preview_paint_ms : t4 - t0,
      first_paint_since_navigation_ms: f ? t.preview_since_navigation_ms : t4,
    });
    S.timings = t;
    $('#timing').textContent = f
      ? `preview in ${Math.round(t.preview_paint_ms)} ms, full resolution in ${Math.round(t4 - t0)} ms`
      : `opened in ${Math.round(t4 - t0)} ms`;
    $('#image-title').textContent = `${im.name}  (${im.shape.join('×')})`;
    $$('#image-list li').forEach((li) => li.classList.toggle('on', li.dataset.id === id));
    setupThreshold();
    updateWindowInputs();
    await refreshLabelVersions(true);
    document.body.dataset.state = 'ready';
    document.body.dataset.image = id;
    const u = new URL(location.href);
    u.searchParams.set('image', id);
    history.replaceState(null, '', u);
  });
  if (document.body.dataset.state !== 'ready') document.body.dataset.state = 'error';
}

function is2D() {
  return S.image && (S.image.ndim === 2 || (S.vol && S.vol.dimsRAS[3] === 1 && S.nifti.dims[3] <= 1));
}

function setupViewForImage(vol) {
  const two = is2D();
  $$('#toolbar [data-view]').forEach((b) => { b.disabled = two && b.dataset.view !== 'axial'; });
  setView(two ? 'axial' : (S.view && S.view !== 'axial' ? S.view : 'mpr'));
  const nf = vol.nFrame4D || 1;
  $('#channel-box').hidden = nf <= 1;
  $('#channel').replaceChildren(...Array.from({ length: nf }, (_, k) => new Option(`${k}`, k)));
  nv.setInterpolation(two);    // 2-D micrographs: show the pixels
  // no patient directions for a picture without physical units (R/L/A/P would be made up)
  const px = isPixelImage();
  nv.opts.isOrientationTextVisible = !px;
  nv.opts.isOrientCube = !px && !two;
}

/** Cross-hair about 1 screen pixel wide, with a gap of a voxel around its centre (the voxel under it shows).
 * NiiVue draws it in mm: recomputed from the tiles' scale after each layout change. */
function fitCrosshair() {
  if (!S.vol || !nv.screenSlices?.length) return;
  let mmPerPx = Infinity;
  for (const t of nv.screenSlices) {
    if (t.axCorSag === SLICE_TYPE.RENDER || !t.fovMM || !t.leftTopWidthHeight[2]) continue;
    mmPerPx = Math.min(mmPerPx, Math.abs(t.fovMM[0]) / t.leftTopWidthHeight[2]);
  }
  if (!Number.isFinite(mmPerPx) || mmPerPx <= 0) return;
  const pd = S.vol.pixDims || S.vol.hdr.pixDims;
  const vox = Math.max(pd[1], pd[2], is2D() ? 0 : pd[3]);
  const width = 1.25 * mmPerPx;                                  // mm: ~1.25 screen pixels
  const gapMM = Math.max(0.75 * vox, 5 * mmPerPx);                // half gap: the voxel + a few pixels
  if (Math.abs(width - nv.opts.crosshairWidth) / width < 0.05) return;
  nv.opts.crosshairWidth = width;
  nv.opts.crosshairGap = gapMM / (0.5 * width);                   // NiiVue: gap in units of the radius
  if (nv.crosshairs3D) {
    nv.gl.deleteBuffer(nv.crosshairs3D.indexBuffer);
    nv.gl.deleteBuffer(nv.crosshairs3D.vertexBuffer);
    nv.crosshairs3D = null;
  }
  nv.drawScene();
}
window.addEventListener('resize', () => requestAnimationFrame(fitCrosshair));

function setView(view) {
  S.view = view;
  $$('#toolbar [data-view]').forEach((b) => b.classList.toggle('on', b.dataset.view === view));
  const t = { mpr: SLICE_TYPE.MULTIPLANAR, axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL,
    sagittal: SLICE_TYPE.SAGITTAL, render: SLICE_TYPE.RENDER }[view];
  nv.setSliceType(t);
  fitCrosshair();
}

function updateWindowInputs() {
  if (!S.vol) return;
  windowError(null);
  $('#wl-min').value = +Number(S.vol.cal_min).toPrecision(5);
  $('#wl-max').value = +Number(S.vol.cal_max).toPrecision(5);
}
nv.onIntensityChange = () => updateWindowInputs();

function windowError(msg) {
  const el = $('#wl-error');
  el.hidden = !msg;
  el.textContent = msg || '';
  for (const sel of ['#wl-min', '#wl-max']) {
    $(sel).classList.toggle('invalid', !!msg);
    $(sel).setAttribute('aria-invalid', msg ? 'true' : 'false');
  }
}

function setWindow() {
  if (!S.vol) return;
  const lo = parseFloat($('#wl-min').value), hi = parseFloat($('#wl-max').value);
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) { windowError('min and max must be numbers'); return; }
  if (hi <= lo) { windowError('min must be below max'); return; }
  windowError(null);
  for (const v of nv.volumes) { v.cal_min = lo; v.cal_max = hi; }
  nv.updateGLVolume();
}

nv.onLocationChange = (loc) => {
  S.lastLocation = loc;
  if (S.thrPartial) setTimeout(settleThreshold, 0);   // other planes now show: the whole volume, at once
  let text = '';
  if (loc.mm && !isPixelImage()) {
    // NiiVue works in RAS; biomip, its API and the README use LPS (DICOM / ITK): x and y change sign
    const [x, y, z] = Array.from(loc.mm).slice(0, 3);
    const lps = is2D() ? [-x, -y] : [-x, -y, z];
    text = `LPS ${lps.map((v) => (v === 0 ? 0 : v).toFixed(1)).join(', ')} mm`;
  }
  if (S.vol && loc.mm) {
    const vox = nativeVoxel(loc.mm);
    if (vox) text += `${text ? ' · ' : ''}${is2D() ? 'pixel (y, x)' : 'voxel (z, y, x)'} = (${vox.join(', ')})`;
    const val = loc.values?.[0]?.value;
    if (val !== undefined) text += ` · value ${+Number(val).toPrecision(5)}`;
  }
  $('#location').textContent = text;
};

/** mm (NIfTI world, RAS) -> voxel index of the image in numpy order ([z, y, x] or [y, x]). */
function nativeVoxel(mm) {
  const A = S.vol.hdr.affine;
  const m = [[A[0][0], A[0][1], A[0][2]], [A[1][0], A[1][1], A[1][2]], [A[2][0], A[2][1], A[2][2]]];
  const b = [mm[0] - A[0][3], mm[1] - A[1][3], mm[2] - A[2][3]];
  const ijk = solve3(m, b);
  if (!ijk) return null;
  const idx = ijk.map((x) => Math.round(x));
  const d = S.nifti.dims;
  for (let a = 0; a < 3; a++) if (idx[a] < 0 || idx[a] >= Math.max(1, d[a + 1])) return null;
  return is2D() ? [idx[1], idx[0]] : [idx[2], idx[1], idx[0]];
}
function solve3(m, b) {
  const det = (a) => a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
    + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
  const D = det(m);
  if (Math.abs(D) < 1e-12) return null;
  return [0, 1, 2].map((c) => det(m.map((row, r) => row.map((x, k) => (k === c ? b[r] : x)))) / D);
}

// ------------------------------------------------------------------ labels
function ensureLabel(v, name) {
  let l = S.labels.find((x) => x.value === v);
  if (!l) {
    l = { value: v, name: name || `label ${origValue(v)}`, color: defaultColor(origValue(v)) };
    S.labels.push(l);
    S.labels.sort((a, b) => a.value - b.value);
  } else if (name) l.name = name;
  return l;
}
/** Forget the label names and colours (a new image or label version brings its own). */
function resetLabels(foreground = true) {
  S.labels = [];
  if (foreground) ensureLabel(1, 'foreground');
  S.active = 1;
}
resetLabels();

function applyLabelColors() {
  const R = [], G = [], B = [], A = [], I = [], labels = [];
  for (let v = 0; v < 256; v++) {
    const l = S.labels.find((x) => x.value === v);
    const hex = v === 0 ? '#000000' : (l ? l.color : defaultColor(v));
    R.push(parseInt(hex.slice(1, 3), 16)); G.push(parseInt(hex.slice(3, 5), 16)); B.push(parseInt(hex.slice(5, 7), 16));
    A.push(v === 0 ? 0 : 255); I.push(v);
    labels.push(v === 0 ? '' : (l ? l.name : `${origValue(v)}`));
  }
  // nv.setDrawColormap() would rebuild every volume texture (seconds in software WebGL): swap the LUT only
  nv.drawLut = cmapper.makeDrawLut({ R, G, B, A, I, labels });
  if (nv.volumes.length) nv.refreshColormaps();
  nv.drawOpacity = parseFloat($('#label-opacity').value);
  nv.drawScene();
  renderLabelList();
}

function renderLabelList() {
  const ul = $('#label-list');
  ul.replaceChildren();
  const shown = S.labels.slice(0, 64);
  for (const l of shown) {
    const li = document.createElement('li');
    li.dataset.value = l.value;
    li.classList.toggle('on', l.value === S.active);
    const radio = document.createElement('input');
    radio.type = 'radio'; radio.name = 'active-label'; radio.checked = l.value === S.active;
    radio.title = 'paint with this label';
    radio.addEventListener('change', () => setActive(l.value));
    const col = document.createElement('input');
    col.type = 'color'; col.value = l.color; col.title = 'colour';
    col.addEventListener('input', () => { l.color = col.value; applyLabelColors(); });
    const num = document.createElement('span');
    num.className = 'num';
    num.textContent = origValue(l.value);
    if (origValue(l.value) !== l.value) num.title = `label value ${origValue(l.value)} (drawn as ${l.value})`;
    const name = document.createElement('input');
    name.type = 'text'; name.value = l.name; name.title = l.name;
    name.addEventListener('change', () => { l.name = name.value.trim() || `label ${l.value}`; applyLabelColors(); });
    const count = document.createElement('span');
    count.className = 'count';
    li.append(radio, col, num, name, count);
    li.addEventListener('click', (e) => { if (e.target === li || e.target === num) setActive(l.value); });
    ul.append(li);
  }
  if (S.labels.length > shown.length) {
    const li = document.createElement('li');
    li.textContent = `… ${S.labels.length - shown.length} more`;
    ul.append(li);
  }
  updateLabelCounts();
}

function setActive(v) {
  S.active = v;
  $$('#label-list li').forEach((li) => li.classList.toggle('on', +li.dataset.value === v));
  $$('#label-list input[type=radio]').forEach((r) => { r.checked = +r.closest('li').dataset.value === v; });
  setTool(S.tool);
}

function updateLabelCounts() {
  if (!nv.drawBitmap) return;
  const counts = new Map();
  const d = nv.drawBitmap;
  for (let i = 0; i < d.length; i++) if (d[i]) counts.set(d[i], (counts.get(d[i]) || 0) + 1);
  for (const v of counts.keys()) if (!S.labels.find((l) => l.value === v)) ensureLabel(v);
  $$('#label-list li[data-value]').forEach((li) => {
    const c = counts.get(+li.dataset.value) || 0;
    li.querySelector('.count').textContent = c ? c.toLocaleString('en') : '';
  });
  if ($$('#label-list li[data-value]').length !== Math.min(S.labels.length, 64)) renderLabelList();
}

async function refreshLabelVersions(loadLatest = false) {
  const sel = $('#label-version');
  sel.replaceChildren(new Option('(none)', ''));
  if (!S.image) return;
  let versions = [];
  try {
    versions = await api(`/labels/${encodeURIComponent(S.image.id)}/versions`);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) throw err;
  }
  for (const v of versions) {
    const when = v.time ? new Date(v.time) : null;
    const ok = when && !Number.isNaN(when.getTime());
    const hhmm = ok ? when.toTimeString().slice(0, 5) : '';
    const today = ok && when.toDateString() === new Date().toDateString();
    const short = ok ? (today ? hhmm : `${when.toISOString().slice(5, 10)} ${hhmm}`) : '';
    const src = v.source ? String(v.source).replace(/^infer:/, '') : '';
    const opt = new Option(`v${v.version}${short ? ` · ${short}` : ''}${src ? ` · ${src}` : ''}`, v.version);
    opt.title = `version ${v.version} · saved ${ok ? when.toString() : v.time || '?'}` +
      (v.source ? ` · source ${v.source}` : '');
    sel.append(opt);
  }
  S.versions = versions;
  if (versions.length) {
    sel.value = versions[versions.length - 1].version;
    if (loadLatest) await loadLabels(versions[versions.length - 1].version);
  }
}

async function loadLabels(version) {
  const q = version ? `?version=${version}` : '';
  const buf = await gunzip(await api(`/labels/${encodeURIComponent(S.image.id)}${q}`));
  const lab = parseNifti(buf);
  checkGrid(lab);
  const meta = (S.versions || []).find((v) => v.version === Number(version || S.versions?.at(-1)?.version));
  const { ras, lut } = showLabelMap(lab.data);
  S.labels = [];                                      // this version's names and colours only
  const code = new Map();
  for (let v = 1; v < 256; v++) if (!code.has(lut[v])) code.set(lut[v], v);
  for (const [k, entry] of Object.entries(meta?.names || {})) {
    const v = code.get(Number(k));
    if (v === undefined) continue;                    // a name for a value this map does not hold
    const l = ensureLabel(v, typeof entry === 'string' ? entry : entry?.name);
    if (entry && typeof entry === 'object' && /^#[0-9a-f]{6}$/i.test(entry.color || '')) l.color = entry.color;
  }
  if (!S.labels.length) ensureLabel(1, 'foreground');
  S.active = S.labels[0].value;
  setDrawing(ras);
  applyLabelColors();
  $('#save-result').textContent = '';
  $('#save-result').removeAttribute('data-version');
}

function checkGrid(lab) {
  const a = S.nifti.dims, b = lab.dims;
  for (let i = 1; i <= 3; i++) {
    if (Math.max(1, a[i]) !== Math.max(1, b[i])) {
      throw new Error(`label map of shape ${b.slice(1, 4)} does not match the image ${a.slice(1, 4)}`);
    }
  }
}

/** JSON with every non-ASCII character escaped (HTTP header values must be ASCII). */
function asciiJson(obj) {
  return JSON.stringify(obj).replace(/[\u007f-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

async function saveLabels() {
  if (!S.image) return;
  if (S.readOnly) throw new Error(`not saved: ${S.readOnly}`);
  commitThreshold();
  ensureDrawing();
  const native = rasToNative(nv.drawBitmap);
  const body = await makeLabelNifti(S.nifti, native);
  const names = {};
  for (const l of S.labels) names[origValue(l.value)] = { name: l.name, color: l.color };
  const res = await api(`/labels/${encodeURIComponent(S.image.id)}`, {
    method: 'PUT', body,
    headers: { 'Content-Type': 'application/gzip', 'X-Label-Names': asciiJson(names), 'X-Label-Source': 'page' },
  });
  S.savedVersion = res.version;
  $('#save-result').textContent = `saved as v${res.version}`;
  await refreshLabelVersions(false);
  $('#label-version').value = res.version;
  $('#save-result').dataset.version = res.version;
  await loadImages();
}

async function addToTraining() {
  if (!S.image) return;
  const v = $('#label-version').value || S.savedVersion;
  if (!v) throw new Error('save the labels first: the training set takes a saved label version');
  await api(`/training-set/${encodeURIComponent(S.image.id)}?version=${v}`, { method: 'POST' });
  $('#training-state').textContent = `in training set (labels v${v})`;
  loadImages();
}

// ------------------------------------------------------------------ tools
function setTool(tool) {
  S.tool = tool;
  $('#tool-hint').hidden = true;
  $$('.tools [data-tool]').forEach((b) => b.classList.toggle('on', b.dataset.tool === tool));
  if (!S.vol) return;
  if (tool === 'brush' || tool === 'eraser' || tool === 'fill') {
    commitThreshold();
    nv.setDrawingEnabled(true);
    nv.setPenValue(tool === 'eraser' ? 0 : S.active, tool === 'fill');
  } else {
    nv.setDrawingEnabled(false);
  }
}

function undo() {
  if (S.thrBase) { cancelThreshold(); return; }
  nv.drawUndo();
  updateLabelCounts();
}

// threshold: computed here, on the loaded volume, in RAS order straight into the drawing
function setupThreshold() {
  const v = S.vol;
  const lo = v.global_min, hi = v.global_max;
  const s = $('#thr-slider');
  s.min = lo; s.max = hi;
  s.step = S.nifti.data instanceof Float32Array || S.nifti.data instanceof Float64Array ? (hi - lo) / 1000 : 1;
  const t = v.cal_min + 0.5 * (v.cal_max - v.cal_min);
  s.value = t;
  $('#thr-value').value = '';
  $('#thr-info').textContent = '';
}

function thresholdValueOf(t) {
  // float32 images compare in float32, as numpy does (value > float32(t))
  return S.nifti.data instanceof Float32Array ? Math.fround(t) : t;
}

// The live preview of a large volume (slider drag, typed value) computes and uploads only the three
// planes through the cross-hair -- what the slice tiles show, exactly -- and the 3-D tile keeps the
// picture it had (a copy of its pixels): in software WebGL a whole-volume texture upload and the
// ray-cast of the label layer take 1-2 s a frame, the planes ~0.1 s.  The whole volume follows once
// the value rests for S.thrSettleMs, and at once when anything reads the labels (commitThreshold).
const THR_PARTIAL_ABOVE = 2 * 1024 * 1024;    // voxels; smaller images are thresholded whole at once

/** The threshold's arguments, fixed when the preview starts (the settle step reuses them). */
function thresholdArgs(t) {
  let tt = thresholdValueOf(t);
  const { slope, inter } = S.nifti;
  let flip = $('#thr-below').checked;
  if (slope !== 1 || inter !== 0) {              // compare raw values with the threshold in raw units
    tt = (tt - inter) / slope;
    if (slope < 0) flip = !flip;
  }
  return { t, tt, flip, lab: S.active, frame: (parseInt($('#channel').value, 10) || 0) * S.nifti.nVox3 };
}

/** Threshold the RAS box [x0, x1) x [y0, y1) x [z0, z1) into the drawing (voxels not above t keep the
 * drawing from before the preview); returns the number of voxels set. */
function thresholdBox(a, x0, x1, y0, y1, z0, z1) {
  // the RAS walk of forRas(), written out: this loop is the whole cost of the computation
  const v = S.vol, st = v.img2RASstep, s0 = v.img2RASstart, nx = v.dimsRAS[1], ny = v.dimsRAS[2];
  const img = S.nifti.data, base = S.thrBase, out = nv.drawBitmap, { tt, lab, flip } = a, sx = st[0];
  let n = 0;
  for (let z = z0; z < z1; z++) {
    const zi = s0[2] + z * st[2] + a.frame;
    for (let y = y0; y < y1; y++) {
      let r = (z * ny + y) * nx + x0;
      let i = s0[0] + s0[1] + y * st[1] + zi + x0 * sx;
      for (let x = x0; x < x1; x++, r++, i += sx) {
        if ((img[i] > tt) !== flip) { out[r] = lab; n++; } else out[r] = base[r];
      }
    }
  }
  return n;
}

/** Upload the RAS box of the drawing to NiiVue's label texture (instead of the whole volume). */
function uploadDrawingBox(x0, x1, y0, y1, z0, z1) {
  const gl = nv.gl, d = S.vol.dimsRAS, nx = d[1], ny = d[2];
  const w = x1 - x0, h = y1 - y0, depth = z1 - z0;
  const box = new Uint8Array(w * h * depth), src = nv.drawBitmap;
  let k = 0;
  for (let z = z0; z < z1; z++) {
    for (let y = y0; y < y1; y++, k += w) {
      const r = (z * ny + y) * nx + x0;
      box.set(src.subarray(r, r + w), k);
    }
  }
  const align = gl.getParameter(gl.UNPACK_ALIGNMENT);
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
  gl.activeTexture(gl.TEXTURE7);                   // NiiVue's drawing texture unit
  gl.bindTexture(gl.TEXTURE_3D, nv.drawTexture);
  gl.texSubImage3D(gl.TEXTURE_3D, 0, x0, y0, z0, w, h, depth, gl.RED, gl.UNSIGNED_BYTE, box);
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, align);
}

function previewThreshold(t) {
  if (!S.vol || !Number.isFinite(t)) return;
  if (S.readOnly) { $('#thr-info').textContent = 'the labels are read-only (too many labels)'; return; }
  const ts = performance.now();
  ensureDrawing();                                  // first preview only: the label layer + its undo copy
  if (!S.thrBase) S.thrBase = nv.drawBitmap.slice();
  const t0 = performance.now();
  S.timings.threshold_setup_ms = t0 - ts;
  const a = thresholdArgs(t);
  const d = S.vol.dimsRAS, nx = d[1], ny = d[2], nz = d[3];
  clearTimeout(S.thrTimer);
  if (S.nifti.nVox3 > THR_PARTIAL_ABOVE && nz > 1) {
    if (!S.thrPartial && !renderSnapshotFresh()) takeRenderSnapshot();   // the 3-D tile as it is now
    const c = nv.frac2vox(nv.scene.crosshairPos);
    const [cx, cy, cz] = [Math.min(Math.max(c[0], 0), nx - 1), Math.min(Math.max(c[1], 0), ny - 1),
      Math.min(Math.max(c[2], 0), nz - 1)];
    thresholdBox(a, 0, nx, 0, ny, cz, cz + 1);                     // axial plane
    thresholdBox(a, 0, nx, cy, cy + 1, 0, nz);                     // coronal
    thresholdBox(a, cx, cx + 1, 0, ny, 0, nz);                     // sagittal
    S.thrPartial = true;
    S.thrArgs = a;
    uploadDrawingBox(0, nx, 0, ny, cz, cz + 1);
    uploadDrawingBox(0, nx, cy, cy + 1, 0, nz);
    uploadDrawingBox(cx, cx + 1, 0, ny, 0, nz);
    const t1 = performance.now();
    const t2 = syncDraw();
    Object.assign(S.timings, { threshold_compute_ms: t1 - t0, threshold_preview_ms: t2 - ts, threshold_partial: true });
    $('#thr-info').textContent = `planes shown in ${Math.round(t2 - ts)} ms · whole volume when the value rests`;
    S.thrTimer = setTimeout(() => settleThreshold(), S.thrSettleMs);
  } else {
    S.thrPartial = false;
    S.thrArgs = a;
    const n = thresholdBox(a, 0, nx, 0, ny, 0, nz);
    const t1 = performance.now();
    nv.refreshDrawing(true);
    const t2 = syncDraw();
    Object.assign(S.timings, { threshold_compute_ms: t1 - t0, threshold_preview_ms: t2 - ts, threshold_partial: false,
      threshold_full_ms: t2 - ts });
    S.thrCount = n;
    S.thrSettled = t;
    $('#thr-info').textContent = `${n.toLocaleString('en')} voxels · ${Math.round(t1 - t0)} ms (shown in ${Math.round(t2 - ts)} ms)`;
  }
  $('#thr-value').value = t;
  $('#thr-value').dataset.applied = '';
  S.thrValue = t;
}

/** The whole volume for the previewed threshold (after a planes-only preview): computed, uploaded, drawn. */
function settleThreshold() {
  clearTimeout(S.thrTimer);
  if (!S.thrPartial) return;
  const ts = performance.now();
  const a = S.thrArgs, d = S.vol.dimsRAS;
  const n = thresholdBox(a, 0, d[1], 0, d[2], 0, d[3]);
  S.thrPartial = false;
  const t1 = performance.now();
  nv.refreshDrawing(false);
  const t2 = syncDraw();
  S.thrCount = n;
  S.thrSettled = a.t;
  Object.assign(S.timings, { threshold_full_compute_ms: t1 - ts, threshold_full_ms: t2 - ts });
  $('#thr-info').textContent = `${n.toLocaleString('en')} voxels · whole volume in ${Math.round(t2 - ts)} ms`;
}

function commitThreshold() {
  if (!S.thrBase) return;
  settleThreshold();
  S.thrBase = null;
  nv.drawAddUndoBitmap();
  updateLabelCounts();
}

function cancelThreshold() {
  if (!S.thrBase) return;
  clearTimeout(S.thrTimer);
  S.thrPartial = false;
  nv.drawBitmap.set(S.thrBase);
  S.thrBase = null;
  nv.refreshDrawing(true);
  $('#thr-info').textContent = 'cancelled';
}

// The 3-D tile during a planes-only preview: the pixels it had, drawn back by a textured quad (a blit
// cannot write to an anti-aliased canvas).  They are read after a draw while the threshold panel is in
// use, when the read costs nothing more than the draw; else once when the preview starts.
const SNAP = { pixels: null, ltwh: null, stale: true, prog: null, tex: null, vao: null };

function renderTile() {
  const tile = (nv.screenSlices || []).find((x) => x.axCorSag === SLICE_TYPE.RENDER);
  if (!tile) return null;
  const [l, t, w, h] = tile.leftTopWidthHeight.map(Math.trunc);     // as gl.viewport() takes them
  return w > 0 && h > 0 ? [l, t, w, h] : null;
}

function renderSnapshotFresh() { return !SNAP.stale; }

function takeRenderSnapshot(draw = true) {
  if (draw) nvDrawScene();
  const r = renderTile();
  if (!r) { SNAP.pixels = null; SNAP.stale = false; return; }
  const gl = nv.gl, [l, t, w, h] = r;
  if (!SNAP.pixels || SNAP.pixels.length !== w * h * 4) SNAP.pixels = new Uint8Array(w * h * 4);
  gl.readPixels(l, gl.canvas.height - t - h, w, h, gl.RGBA, gl.UNSIGNED_BYTE, SNAP.pixels);
  SNAP.ltwh = r;
  SNAP.stale = false;
}

function drawRenderSnapshot() {
  const gl = nv.gl, vp = gl.getParameter(gl.VIEWPORT);
  if (!SNAP.pixels || !SNAP.ltwh || Math.abs(vp[2] - SNAP.ltwh[2]) > 2 || Math.abs(vp[3] - SNAP.ltwh[3]) > 2) return;
  if (!SNAP.prog) {
    const vs = `#version 300 es
      const vec2 P[4] = vec2[4](vec2(-1.0, -1.0), vec2(1.0, -1.0), vec2(-1.0, 1.0), vec2(1.0, 1.0));
      out vec2 uv;
      void main() { uv = P[gl_VertexID] * 0.5 + 0.5; gl_Position = vec4(P[gl_VertexID], 0.0, 1.0); }`;
    const fs = `#version 300 es
      precision highp float;
      uniform sampler2D snap;
      in vec2 uv;
      out vec4 color;
      void main() { color = texture(snap, uv); }`;
    const prog = gl.createProgram();
    for (const [type, src] of [[gl.VERTEX_SHADER, vs], [gl.FRAGMENT_SHADER, fs]]) {
      const sh = gl.createShader(type);
      gl.shaderSource(sh, src);
      gl.compileShader(sh);
      gl.attachShader(prog, sh);
    }
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(`snapshot shader: ${gl.getProgramInfoLog(prog)}`);
    SNAP.prog = prog;
    SNAP.tex = gl.createTexture();
    SNAP.vao = gl.createVertexArray();
  }
  const unit = gl.getParameter(gl.ACTIVE_TEXTURE), prog = gl.getParameter(gl.CURRENT_PROGRAM);
  gl.activeTexture(gl.TEXTURE15);
  gl.bindTexture(gl.TEXTURE_2D, SNAP.tex);
  const align = gl.getParameter(gl.UNPACK_ALIGNMENT);
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, 4);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, SNAP.ltwh[2], SNAP.ltwh[3], 0, gl.RGBA, gl.UNSIGNED_BYTE, SNAP.pixels);
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, align);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
  gl.useProgram(SNAP.prog);
  gl.uniform1i(gl.getUniformLocation(SNAP.prog, 'snap'), 15);
  gl.disable(gl.BLEND);
  gl.disable(gl.CULL_FACE);
  gl.bindVertexArray(SNAP.vao);
  gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  gl.bindVertexArray(nv.unusedVAO);
  gl.enable(gl.BLEND);                             // the state NiiVue's own drawImage3D leaves
  gl.enable(gl.CULL_FACE);
  gl.useProgram(prog);
  gl.activeTexture(unit);
}

// every draw: a fresh copy of the 3-D tile while the threshold panel is in use; during a planes-only
// preview the copy stands in for the ray-cast (which would show the half-updated label texture)
const nvDrawScene = nv.drawScene.bind(nv);
const nvDrawImage3D = nv.drawImage3D.bind(nv);
nv.drawScene = function drawScene() {
  if (S.holdDraw) return undefined;               // openImage: one draw once the view is set up
  const r = nvDrawScene();
  if (!S.thrPartial) {
    SNAP.stale = true;
    if ($('#threshold-panel').matches(':hover, :focus-within')) takeRenderSnapshot(false);
  }
  return r;
};
nv.drawImage3D = function drawImage3D(...args) {
  if (S.thrPartial) drawRenderSnapshot();
  else nvDrawImage3D(...args);
};

let thrPending = null;
function scheduleThreshold(t) {
  if (thrPending === null) {
    requestAnimationFrame(() => { const v = thrPending; thrPending = null; previewThreshold(v); });
  }
  thrPending = t;
}

async function autoThreshold() {
  if (!S.image) return;
  const method = $('#thr-method').value;
  const params = { method };
  if ((S.image.channels || 1) > 1) params.channel = parseInt($('#channel').value, 10) || 0;   // the channel shown
  const res = await api(`/infer/threshold`, { method: 'POST', json: { image: S.image.id, params }, raw: true });
  let ts = null;
  try { ts = JSON.parse(res.headers.get('X-Thresholds') || 'null'); } catch (_) { ts = null; }
  if (Array.isArray(ts) && ts.length && Number.isFinite(ts[0])) {
    // the server's value (image units): the slider and the number box follow (the slider goes continuous
    // so that it sits exactly on t), the live preview shows image > t exactly as the server's label map
    const t = ts[0], s = $('#thr-slider');
    if (t < +s.min) s.min = t;
    if (t > +s.max) s.max = t;
    s.step = 'any';
    s.value = t;
    previewThreshold(t);
    $('#thr-value').dataset.auto = method;
    $('#thr-info').textContent += ` · ${method} = ${+Number(t).toPrecision(6)}`;
  } else {                                            // no value sent: show the server's labels
    const lab = parseNifti(await gunzip(await res.arrayBuffer()));
    checkGrid(lab);
    ensureDrawing();
    clearTimeout(S.thrTimer);
    S.thrPartial = false;                            // every voxel is written below
    if (!S.thrBase) S.thrBase = nv.drawBitmap.slice();
    const out = nv.drawBitmap, base = S.thrBase, a = S.active;
    forRas((r, i) => { out[r] = lab.data[i] > 0 ? a : base[r]; });
    nv.refreshDrawing(true);
    $('#thr-info').textContent = `${method} (server)`;
  }
}

// seeds + region growing
function showSeeds() {
  const el = $('#seeds');
  el.dataset.seeds = JSON.stringify(S.seeds.map((s) => s.vox));
  el.textContent = S.seeds.length
    ? S.seeds.map((s) => `(${s.vox.join(', ')})`).join(' ') + ` — voxel ${is2D() ? '(y, x)' : '(z, y, x)'}`
    : 'no seeds — choose the Seed tool and click in the image';
}

function addSeedFromCrosshair() {
  const mm = nv.frac2mm(nv.scene.crosshairPos, 0, true);
  const vox = nativeVoxel(mm);
  if (!vox) { showError(new Error('the seed lies outside the image')); return false; }
  S.seeds.push({ vox, mm: Array.from(mm).slice(0, 3) });
  showSeeds();
  return true;
}

async function growRegion() {
  if (!S.image) return;
  if (S.readOnly) throw new Error(`the labels are read-only: ${S.readOnly}`);
  if (!S.seeds.length) throw new Error('no seed: choose the Seed tool and click in the image');
  commitThreshold();
  const tol = parseFloat($('#grow-tol').value);
  const t0 = performance.now();
  const res = await api('/infer/region_grow', {
    method: 'POST', raw: true,
    json: { image: S.image.id, params: { seeds: S.seeds.map((s) => s.vox), tolerance: tol } },
  });
  const lab = parseNifti(await gunzip(await res.arrayBuffer()));
  checkGrid(lab);
  ensureDrawing();
  const out = nv.drawBitmap, a = S.active;
  let n = 0;
  forRas((r, i) => { if (lab.data[i] > 0) { out[r] = a; n++; } });
  nv.drawAddUndoBitmap();
  nv.refreshDrawing(true);
  updateLabelCounts();
  $('#grow-run').dataset.count = n;
  $('#grow-run').title = `${n} voxels in ${Math.round(performance.now() - t0)} ms`;
  S.timings.region_grow_ms = performance.now() - t0;
}

// ------------------------------------------------------------------ methods menu
function paramInput(p, prefix) {
  const label = document.createElement('label');
  const span = document.createElement('span');
  span.textContent = p.name;
  let input;
  if (p.type === 'bool') {
    input = document.createElement('input');
    input.type = 'checkbox';
    input.checked = !!p.default;
  } else if (p.type === 'choice' || (Array.isArray(p.choices) && p.choices.length)) {
    input = document.createElement('select');
    if (p.default === undefined || p.default === null) input.append(new Option('(default)', ''));
    for (const c of p.choices || []) input.append(new Option(String(c), String(c)));
    if (p.default !== undefined && p.default !== null) input.value = String(p.default);
  } else if (p.type === 'str') {
    input = document.createElement('input');
    input.type = 'text';
    if (p.default !== undefined && p.default !== null) input.value = p.default;
  } else if (p.type === 'seeds') {
    input = document.createElement('span');
    input.className = 'muted';
    input.textContent = 'the seeds you clicked';
  } else {
    input = document.createElement('input');
    input.type = 'number';
    input.step = p.type === 'int' ? '1' : 'any';
    if (p.min !== undefined && p.min !== null) input.min = p.min;
    if (p.max !== undefined && p.max !== null) input.max = p.max;
    if (p.default !== undefined && p.default !== null) input.value = p.default;
  }
  input.id = `${prefix}-${p.name}`;
  input.dataset.param = p.name;
  input.dataset.type = p.type;
  label.append(span, input);
  const frag = document.createDocumentFragment();
  frag.append(label);
  if (p.help) {
    const h = document.createElement('div');
    h.className = 'help';
    h.textContent = p.help;
    frag.append(h);
  }
  return frag;
}

function readParams(form) {
  const params = {};
  for (const el of form.querySelectorAll('[data-param]')) {
    const t = el.dataset.type, name = el.dataset.param;
    if (t === 'bool') params[name] = el.checked;
    else if (t === 'seeds') params[name] = S.seeds.map((s) => s.vox);
    else if (t === 'int' || t === 'float') {
      if (el.value === '') continue;
      const v = Number(el.value);
      if (!Number.isFinite(v)) throw new Error(`${name}: "${el.value}" is not a number`);
      params[name] = t === 'int' ? Math.round(v) : v;
    } else if (el.value !== '') {
      const choice = el.tagName === 'SELECT' && (t === 'int' || t === 'float') ? Number(el.value) : el.value;
      params[name] = choice;
    }
  }
  return params;
}

function buildMethodMenu() {
  const methods = S.info?.methods || {};
  const sel = $('#method-select');
  const keep = sel.value;
  sel.replaceChildren();
  for (const [name, m] of Object.entries(methods)) if (m.kind !== 'register') sel.append(new Option(name, name));
  if (keep && methods[keep]) sel.value = keep;
  buildMethodForm();
  const reg = Object.entries(methods).find(([, m]) => m.kind === 'register');
  S.registerMethod = reg ? reg[0] : 'register';
  const rf = $('#reg-form');
  rf.replaceChildren();
  if (reg) for (const p of reg[1].params || []) rf.append(paramInput(p, 'reg'));
}

function buildMethodForm() {
  const name = $('#method-select').value;
  const m = S.info?.methods?.[name];
  const form = $('#method-form');
  form.replaceChildren();
  $('#method-help').textContent = m ? m.description || '' : '';
  if (!m) return;
  for (const p of m.params || []) form.append(paramInput(p, 'm'));
}

async function runMethod(name, params, { replace = true } = {}) {
  if (!S.image) throw new Error('open an image first');
  commitThreshold();
  const t0 = performance.now();
  const res = await api(`/infer/${encodeURIComponent(name)}`, {
    method: 'POST', raw: true, json: { image: S.image.id, params },
  });
  const lab = parseNifti(await gunzip(await res.arrayBuffer()));
  checkGrid(lab);
  ensureDrawing();
  let native = lab.data;
  if (!replace) {                      // merge with the file values of the current labels, then re-encode
    if (S.readOnly) throw new Error('the current labels are read-only (too many labels): tick "replace the labels"');
    const cur = rasToNative(nv.drawBitmap);
    const T = lab.data.BYTES_PER_ELEMENT >= cur.BYTES_PER_ELEMENT ? lab.data.constructor : cur.constructor;
    native = new T(S.nifti.nVox3);
    for (let i = 0; i < native.length; i++) native[i] = lab.data[i] > 0 ? lab.data[i] : cur[i];
  }
  const oldLut = S.lut;
  const { ras, lut, distinct } = showLabelMap(native);
  const remapped = lut.some((v, i) => v !== i);
  if ((oldLut && oldLut.some((v, i) => v !== i)) || remapped) resetLabels(!remapped);
  setDrawing(ras);
  applyLabelColors();
  const secs = res.headers.get('X-Seconds');
  $('#method-result').textContent = `${name}: done` + (secs ? ` (server ${(+secs).toFixed(2)} s,` : ' (') +
    ` page ${Math.round(performance.now() - t0)} ms) · ${distinct} label(s)`;
  if (S.readOnly) $('#method-result').textContent += ` · read-only: more than ${MAX_DRAW_LABELS} labels`;
}

// ------------------------------------------------------------------ registration
async function register() {
  const out = $('#reg-result');
  out.textContent = '';
  out.classList.remove('failed');
  delete out.dataset.state;
  const fixed = $('#reg-fixed').value, moving = $('#reg-moving').value;
  try {
    if (!fixed || !moving) throw new Error('choose a fixed and a moving image');
    if (fixed === moving) throw new Error('fixed and moving are the same image');
    out.textContent = 'registering…';
    out.dataset.state = 'running';
    await registerRun(fixed, moving);
    out.dataset.state = 'done';
  } catch (err) {
    out.textContent = `failed: ${err instanceof ApiError ? `${err.status} ${err.detail}` : err.message}`;
    out.classList.add('failed');
    out.dataset.state = 'failed';
    throw err;
  }
}

async function registerRun(fixed, moving) {
  const t0 = performance.now();
  const res = await api(`/infer/${encodeURIComponent(S.registerMethod)}`, {
    method: 'POST', raw: true, json: { fixed, moving, params: readParams($('#reg-form')) },
  });
  const movedBuf = await gunzip(await res.arrayBuffer());
  if (!S.image || S.image.id !== fixed) await openImage(fixed);
  const moved = parseNifti(movedBuf);
  checkGrid(moved);
  const secs = res.headers.get('X-Seconds');
  S.checker = { moved, vol: null };
  await showChecker();
  $('#reg-result').textContent = `done` + (secs ? ` · server ${(+secs).toFixed(1)} s` : '') +
    ` · ${Math.round(performance.now() - t0)} ms · labels hidden (show: fixed)`;
}

function robustRange(data, nVox, slope, inter) {
  const step = Math.max(1, Math.floor(nVox / 200000));
  const vals = [];
  for (let i = 0; i < nVox; i += step) vals.push(data[i] * slope + inter);
  vals.sort((a, b) => a - b);
  const lo = vals[Math.floor(0.01 * (vals.length - 1))], hi = vals[Math.floor(0.99 * (vals.length - 1))];
  return [lo, hi > lo ? hi : lo + 1];
}

async function showChecker() {
  const c = S.checker;
  if (!c) return;
  const mode = $('#reg-show').value;
  const tile = parseInt($('#reg-tile').value, 10);
  const f = S.nifti, m = c.moved;
  const n = f.nVox3;
  const [flo, fhi] = robustRange(f.data, n, f.slope, f.inter);
  const [mlo, mhi] = robustRange(m.data, n, m.slope, m.inter);
  const out = new Float32Array(n);
  const nx = Math.max(1, f.dims[1]), ny = Math.max(1, f.dims[2]), nz = Math.max(1, f.dims[3]);
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        const useMoving = mode === 'moving' || (mode === 'checker' &&
          ((Math.floor(x / tile) + Math.floor(y / tile) + (nz > 1 ? Math.floor(z / tile) : 0)) & 1));
        out[i] = useMoving ? (m.data[i] * m.slope + m.inter - mlo) / (mhi - mlo)
          : (f.data[i] * f.slope + f.inter - flo) / (fhi - flo);
      }
    }
  }
  if (mode === 'fixed') {
    if (c.vol) { nv.removeVolume(c.vol); c.vol = null; }
    nv.drawOpacity = parseFloat($('#label-opacity').value);
    nv.drawScene();
    return;
  }
  // NiiVue draws the label layer under opaque overlays: hide it while the checkerboard is up
  nv.drawOpacity = 0;
  const hdr = new Uint8Array(f.header.slice(0));
  const dv = new DataView(hdr.buffer);
  const off = f.version === 1 ? 352 : 544;
  if (f.version === 1) {
    dv.setInt16(40, Math.min(3, f.dims[0]), true); dv.setInt16(70, 16, true); dv.setInt16(72, 32, true);
    dv.setFloat32(108, off, true); dv.setFloat32(112, 1, true); dv.setFloat32(116, 0, true);
    dv.setFloat32(124, 1, true); dv.setFloat32(128, 0, true);
  } else {
    dv.setBigInt64(16, BigInt(Math.min(3, f.dims[0])), true); dv.setInt16(12, 16, true); dv.setInt16(14, 32, true);
    dv.setBigInt64(168, BigInt(off), true); dv.setFloat64(176, 1, true); dv.setFloat64(184, 0, true);
    dv.setFloat64(192, 1, true); dv.setFloat64(200, 0, true);
  }
  const buf = new Uint8Array(off + out.byteLength);
  buf.set(hdr, 0);
  buf.set(new Uint8Array(out.buffer), off);
  if (c.vol) nv.removeVolume(c.vol);
  await nv.loadFromArrayBuffer(buf.buffer, 'checkerboard.nii');
  c.vol = nv.volumes[nv.volumes.length - 1];
  c.vol.cal_min = 0; c.vol.cal_max = 1;
  nv.setOpacity(nv.volumes.indexOf(c.vol), 1);
  nv.updateGLVolume();
}

// ------------------------------------------------------------------ training
function buildModelMenu() {
  const models = S.info?.models || {};
  const name = $('#train-model').value.trim();
  const m = models[name];
  const sel = $('#train-base');
  sel.replaceChildren(new Option('new', ''));
  if (m) {
    for (const v of m.versions) sel.append(new Option(`v${v}`, v));
    if (m.versions.length) sel.value = m.versions[m.versions.length - 1];
    if (m.kind) $('#train-kind').value = m.kind;
  }
}

async function startTraining() {
  const model = $('#train-model').value.trim();
  if (!model) throw new Error('give the model a name');
  const epochs = parseInt($('#train-epochs').value, 10);
  const base = $('#train-base').value;
  let params = {};
  const text = $('#train-params').value.trim();
  if (text) {
    try { params = JSON.parse(text); } catch (err) { throw new Error(`params: not valid JSON (${err.message})`); }
    if (typeof params !== 'object' || Array.isArray(params) || params === null) throw new Error('params: expected a JSON object');
  }
  const res = await api(`/train/${encodeURIComponent(model)}`, {
    method: 'POST', json: { kind: $('#train-kind').value, epochs, base: base === '' ? null : Number(base), params },
  });
  S.job = { model, id: res.job };
  resetLoss();
  $('#train-metric').textContent = '';
  setTrainStatus('queued', `job ${res.job} queued`);
  $('#train-cancel').disabled = false;
  $('#train-start').disabled = true;
  scrollPanelTo($('#train-metric'));                                // the loss chart + metric in sight
  listen(model);
}

const TERMINAL = ['done', 'cancelled', 'failed'];

function listen(model) {
  if (S.events) S.events.close();
  stopPolling();
  S.lost = null;
  const es = new EventSource(withToken(`/train/${encodeURIComponent(model)}/events`));
  S.events = es;
  es.onopen = () => { if (S.events === es && S.lost) reconnected(); };
  es.onmessage = (e) => {
    if (S.events !== es) return;
    if (S.lost) reconnected();
    let ev;
    try { ev = JSON.parse(e.data); } catch (_) { return; }
    onTrainEvent(ev);
    if (TERMINAL.includes(ev.status)) { es.close(); S.events = null; }
  };
  es.onerror = () => {
    if (S.events !== es) return;
    // the stream broke (server stopped, network): say so at once, then ask GET /train/{model} what became of
    // the job; the browser retries the stream by itself unless it gave up (readyState CLOSED)
    if (!S.lost) {
      S.lost = { model, since: Date.now(), last: $('#train-status').textContent };
      setTrainStatus('lost', 'connection to the server lost — retrying…');
    }
    startPolling(model);
  };
}

function reconnected() {
  S.lost = null;
  stopPolling();
  if ($('#train-status').dataset.status === 'lost' || $('#train-status').dataset.status === 'unreachable') {
    setTrainStatus('running', 'connection to the server restored');
  }
  if (($('#error-text').textContent || '').startsWith('The server cannot be reached')) clearError();
}

function stopPolling() {
  if (S.poll) clearTimeout(S.poll);
  S.poll = null;
  S.polling = false;
}

function startPolling(model) {
  if (S.polling) return;                            // one poll loop at a time
  S.polling = true;
  const tick = async () => {
    S.poll = null;
    if (!S.polling || !S.lost || S.lost.model !== model) { S.polling = false; return; }
    let state = null;
    try {
      state = await api(`/train/${encodeURIComponent(model)}`);
    } catch (err) {
      if (!S.polling) return;
      if (!(err instanceof ApiError) || err.status === 0) {
        const secs = Math.round((Date.now() - S.lost.since) / 1000);
        setTrainStatus('unreachable', `the server cannot be reached (for ${secs} s) — is biomip serve still ` +
          'running? retrying…');
        $('#error-text').textContent = 'The server cannot be reached: training progress is unknown until it answers ' +
          'again (restart `biomip serve` if it stopped; a job that was running when it stopped is lost).';
        $('#error').hidden = false;
        S.poll = setTimeout(tick, 2000);
        return;
      }
      if (err.status !== 404) { S.poll = setTimeout(tick, 2000); return; }     // answers, but not yet usefully
      state = { status: 'failed', message: 'the server has no record of this job (restarted?)' };
    }
    if (!state || state.status === 'idle') {
      state = { status: 'failed', message: 'the server has no record of this job (restarted?)' };
    }
    if (!S.polling) return;
    if (TERMINAL.includes(state.status)) {            // the job ended while the stream was down
      if (S.events) { S.events.close(); S.events = null; }
      S.lost = null;
      S.polling = false;
      onTrainEvent(state);
      return;
    }
    // still running: the server is back; the browser's own retry (or a new stream) resumes the events
    if ($('#train-status').dataset.status === 'unreachable') setTrainStatus('lost', 'server is back — reconnecting…');
    if (!S.events || S.events.readyState === EventSource.CLOSED) { S.polling = false; listen(model); } else {
      S.poll = setTimeout(tick, 2000);
    }
  };
  S.poll = setTimeout(tick, 1000);
}

/** Scroll the right panel (only it, never the page) so that `el` is in sight. */
function scrollPanelTo(el) {
  const panel = $('#right');
  const below = el.getBoundingClientRect().bottom + 8 - panel.getBoundingClientRect().bottom;
  if (below > 0) panel.scrollTop += below;
}

function resetLoss() {
  S.lossPoints = [];
  S.metricPoints = [];
  S.stepsTotal = null;
  drawLoss();
}

function onTrainEvent(ev) {
  // type "step": the loss of one optimiser step; "epoch": the epoch's mean loss + the metric (and what
  // it was measured on: metric.on);
  // a server without "type" sends one event per epoch: its running events are the curve
  const typed = ev.type !== undefined;
  if (Number.isFinite(ev.steps_total)) S.stepsTotal = ev.steps_total;
  const last = S.lossPoints[S.lossPoints.length - 1];
  if ((ev.type === 'step' || (!typed && ev.status === 'running')) && Number.isFinite(ev.loss) &&
      !(last && Number.isFinite(ev.step) && ev.step <= last.step)) {
    S.lossPoints.push({ step: ev.step ?? S.lossPoints.length, loss: ev.loss });
    $('#loss-chart').dataset.points = S.lossPoints.length;        // at once; the drawing waits for a frame
    scheduleDrawLoss();
  }
  if (ev.type === 'epoch' && ev.metric && Number.isFinite(ev.metric.value) && Number.isFinite(ev.step)) {
    S.metricPoints.push({ step: ev.step, epoch: ev.epoch, value: ev.metric.value, name: ev.metric.name });
    scheduleDrawLoss();
  }
  if (ev.type !== 'step' && ev.metric && ev.metric.value !== null && ev.metric.value !== undefined) {
    S.lastMetric = ev.metric;
    const el = $('#train-metric');
    // what the metric was measured on: "held-out image", or "training images" when nothing is held out
    const on = ev.metric.on ? ` on ${ev.metric.on}` : '';
    el.textContent = `${ev.metric.name}${on} = ${Number(ev.metric.value).toFixed(4)}` +
      (ev.epoch !== undefined && ev.epoch !== null ? ` (epoch ${ev.epoch})` : '');
    el.dataset.value = ev.metric.value;
  }
  const parts = [ev.status];
  if (ev.epoch !== undefined && ev.epoch !== null) parts.push(`epoch ${ev.epoch}`);
  if (ev.step !== undefined && ev.step !== null) parts.push(`step ${ev.step}${S.stepsTotal ? `/${S.stepsTotal}` : ''}`);
  if (ev.loss !== null && ev.loss !== undefined) parts.push(`loss ${Number(ev.loss).toPrecision(4)}`);
  if (ev.message) parts.push(ev.message);
  setTrainStatus(ev.status, parts.join(' · '));
  if (['done', 'cancelled', 'failed'].includes(ev.status)) {
    $('#train-cancel').disabled = true;
    $('#train-start').disabled = false;
    if (ev.status === 'failed') showError(new Error(`training failed: ${ev.message || 'no message'}`));
    loadInfo().catch(showError);
  }
}

function setTrainStatus(status, text) {
  const el = $('#train-status');
  el.className = status;
  el.dataset.status = status;
  el.textContent = text;
}

let lossDrawPending = false;
function scheduleDrawLoss() {            // at most one redraw a frame (a replay sends many events at once)
  if (lossDrawPending) return;
  lossDrawPending = true;
  requestAnimationFrame(() => { lossDrawPending = false; drawLoss(); });
}

function drawLoss() {
  const c = $('#loss-chart');
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth || 280, h = c.clientHeight || 140;
  c.width = w * dpr; c.height = h * dpr;
  const g = c.getContext('2d');
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const pts = S.lossPoints, mets = S.metricPoints;
  c.dataset.points = pts.length;
  c.dataset.metricPoints = mets.length;
  g.fillStyle = '#8b919e';
  g.font = '11px system-ui, sans-serif';
  if (!pts.length) { g.fillText('loss (no data yet)', 8, 16); return; }
  const L = 38, R = mets.length ? 30 : 8, T = 14, B = 20;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;    // no spread: thousands of points
  for (const p of pts) {
    x0 = Math.min(x0, p.step); x1 = Math.max(x1, p.step);
    y0 = Math.min(y0, p.loss); y1 = Math.max(y1, p.loss);
  }
  for (const m of mets) x1 = Math.max(x1, m.step);
  if (S.stepsTotal) x1 = Math.max(x1, S.stepsTotal);                  // the x axis spans the whole run
  x0 = Math.min(x0, 1);
  x1 = Math.max(x1, x0 + 1);
  if (y1 - y0 < 1e-12) { y0 -= 0.5; y1 += 0.5; }
  const X = (x) => L + (w - L - R) * (x - x0) / (x1 - x0);
  const Y = (y) => T + (h - T - B) * (1 - (y - y0) / (y1 - y0));
  g.strokeStyle = '#2d313b';
  g.beginPath(); g.moveTo(L, T); g.lineTo(L, h - B); g.lineTo(w - R, h - B); g.stroke();
  g.fillText(y1.toPrecision(3), 2, T + 4);
  g.fillText(y0.toPrecision(3), 2, h - B);
  g.fillText(`step ${x0}`, L, h - 5);
  g.fillText(`${x1}`, w - R - 20, h - 5);
  g.fillText('loss / step', L + 4, T - 2);
  g.strokeStyle = '#4f9dff';
  g.lineWidth = 1.5;
  g.beginPath();
  pts.forEach((p, k) => { if (k) g.lineTo(X(p.step), Y(p.loss)); else g.moveTo(X(p.step), Y(p.loss)); });
  g.stroke();
  g.fillStyle = '#4f9dff';
  if (pts.length <= 60) for (const p of pts) { g.beginPath(); g.arc(X(p.step), Y(p.loss), 2, 0, 6.3); g.fill(); }
  if (mets.length) {                       // validation metric per epoch: right axis 0..1
    const M = (v) => T + (h - T - B) * (1 - Math.min(1, Math.max(0, v)));
    g.fillStyle = '#ff9f0a';
    g.strokeStyle = '#ff9f0a';
    g.fillText('1', w - R + 4, T + 4);
    g.fillText('0', w - R + 4, h - B);
    g.fillText(mets[0].name || 'metric', w - R - 34, T - 2);
    g.beginPath();
    mets.forEach((m, k) => { if (k) g.lineTo(X(m.step), M(m.value)); else g.moveTo(X(m.step), M(m.value)); });
    g.stroke();
    for (const m of mets) { g.beginPath(); g.arc(X(m.step), M(m.value), 3, 0, 6.3); g.fill(); }
  }
}

/** After a reload: follow the model's job if one is still running (GET /train/{model}; 404 = never trained). */
async function resumeTraining() {
  const model = $('#train-model').value.trim();
  if (!model) return;
  let state;
  try {
    state = await api(`/train/${encodeURIComponent(model)}`);     // 200 {"status": "idle"} when no job ran
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return;     // older servers: 404 = never trained
    throw err;
  }
  if (state && ['queued', 'running'].includes(state.status)) {
    S.job = { model, id: state.job };
    resetLoss();
    $('#train-cancel').disabled = false;
    $('#train-start').disabled = true;
    listen(model);                                   // past events are replayed
  }
}

async function cancelTraining() {
  const model = S.job?.model || $('#train-model').value.trim();
  await api(`/train/${encodeURIComponent(model)}`, { method: 'DELETE' });
  setTrainStatus('cancelling', 'cancelling…');
}

async function predict() {
  const model = $('#train-model').value.trim();
  const methods = S.info?.methods || {};
  // the route is the model's kind (POST /infer/flows or /infer/unet), whatever the model is called:
  // a unet model named "flows" is still run by /infer/unet
  const name = S.info?.models?.[model]?.kind || $('#train-kind').value;
  if (!methods[name]) throw new Error(`the server offers no method "${name}" to predict with`);
  const params = {};
  const versions = S.info?.models?.[model]?.versions || [];
  for (const p of methods[name].params || []) {
    if (p.name === 'model') params.model = model;
    if (p.name === 'version' && versions.length) params.version = versions[versions.length - 1];
  }
  await runMethod(name, params, { replace: true });
  $('#method-result').textContent += versions.length ? ` · model ${model} v${versions[versions.length - 1]}` : '';
}

// ------------------------------------------------------------------ wiring
function on(sel, ev, fn) { $(sel).addEventListener(ev, (e) => { busy(() => fn(e)); }); }

$('#error-close').addEventListener('click', clearError);
on('#refresh-images', 'click', loadImages);
$$('#toolbar [data-view]').forEach((b) => b.addEventListener('click', () => setView(b.dataset.view)));
$('#wl-min').addEventListener('change', setWindow);
$('#wl-max').addEventListener('change', setWindow);
$('#wl-auto').addEventListener('click', () => {
  if (!S.vol) return;
  for (const v of nv.volumes) { v.cal_min = v.robust_min; v.cal_max = v.robust_max; }
  nv.updateGLVolume(); updateWindowInputs();
});
$('#radiological').addEventListener('change', () => nv.setRadiologicalConvention($('#radiological').checked));
$('#colormap').addEventListener('change', () => { if (S.vol) nv.setColormap(S.vol.id, $('#colormap').value); });
$('#channel').addEventListener('change', () => { if (S.vol) nv.setFrame4D(S.vol.id, parseInt($('#channel').value, 10)); });

$('#label-opacity').addEventListener('input', () => nv.setDrawOpacity(parseFloat($('#label-opacity').value)));
$('#add-label').addEventListener('click', () => {
  const v = S.labels.reduce((m, l) => Math.max(m, l.value), 0) + 1;
  if (v > 255) { showError(new Error('at most 255 labels can be drawn')); return; }
  ensureLabel(v);
  applyLabelColors();
  setActive(v);
});
on('#load-labels', 'click', () => loadLabels($('#label-version').value));
$('#clear-labels').addEventListener('click', () => {
  if (!S.vol) return;
  commitThreshold();
  ensureDrawing();
  if (S.readOnly) { S.lut = null; setReadOnly(null); resetLabels(); applyLabelColors(); }
  setDrawing(new Uint8Array(nv.drawBitmap.length));
});
on('#save-labels', 'click', saveLabels);
on('#add-training', 'click', addToTraining);

$$('.tools [data-tool]').forEach((b) => b.addEventListener('click', () => setTool(b.dataset.tool)));
$('#pen-size').addEventListener('input', () => {
  nv.opts.penSize = parseInt($('#pen-size').value, 10);
  $('#pen-size-text').textContent = nv.opts.penSize;
});
$('#undo').addEventListener('click', undo);
document.addEventListener('keydown', (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === 'z' && !['INPUT', 'SELECT'].includes(document.activeElement?.tagName)) {
    e.preventDefault(); undo();
  }
});
nv.onDrawingChanged = () => updateLabelCounts();

$('#thr-slider').addEventListener('input', () => scheduleThreshold(parseFloat($('#thr-slider').value)));
$('#thr-value').addEventListener('change', () => {
  const t = parseFloat($('#thr-value').value);
  if (!Number.isFinite(t)) { showError(new Error(`threshold: "${$('#thr-value').value}" is not a number`)); return; }
  $('#thr-slider').value = t;
  previewThreshold(t);
});
$('#thr-below').addEventListener('change', () => { if (S.thrBase) previewThreshold(S.thrValue); });
on('#thr-auto', 'click', autoThreshold);
$('#thr-apply').addEventListener('click', () => {
  if (!S.thrBase && Number.isFinite(parseFloat($('#thr-value').value))) previewThreshold(parseFloat($('#thr-value').value));
  commitThreshold();
  $('#thr-info').textContent = `applied t = ${S.thrValue} as label ${S.active}`;
  $('#thr-value').dataset.applied = S.thrValue;
});
$('#thr-cancel').addEventListener('click', cancelThreshold);
// about to use the threshold on a large volume: make the label layer and copy the 3-D tile now, so
// that the first preview need not
for (const ev of ['pointerenter', 'focusin']) {
  $('#threshold-panel').addEventListener(ev, () => {
    if (!S.vol || !S.nifti || S.thrPartial || S.readOnly || S.nifti.nVox3 <= THR_PARTIAL_ABOVE) return;
    if (!nv.drawBitmap) { ensureDrawing(); SNAP.stale = true; }
    if (SNAP.stale) takeRenderSnapshot();
  });
}

/** The kind of view tile under a mouse event: 'slice', 'render', or null (between tiles). */
function tileKindAt(e) {
  const c = $('#viewer'), r = c.getBoundingClientRect();
  const dpr = nv.uiData?.dpr || window.devicePixelRatio || 1;
  const x = (e.clientX - r.left) * dpr, y = (e.clientY - r.top) * dpr;
  const i = nv.tileIndex(x, y);
  if (i < 0) return null;
  const t = nv.screenSlices[i];
  return t && t.axCorSag !== SLICE_TYPE.RENDER && t.sliceFrac !== Infinity ? 'slice' : 'render';
}

// Seed / brush / eraser / fill act on slice views only: a press on the 3-D render (or between tiles) would
// use the old cross-hair, or paint through the volume.  It still rotates the render; the tool waits.
S.pressIgnored = false;
$('#viewer-wrap').addEventListener('mousedown', (e) => {
  S.pressIgnored = false;
  if (!S.vol || e.button !== 0 || !['seed', 'brush', 'eraser', 'fill'].includes(S.tool)) return;
  if (tileKindAt(e) === 'slice') return;
  S.pressIgnored = true;
  if (S.tool !== 'seed') nv.opts.drawingEnabled = false;          // this press only
  const verb = S.tool === 'seed' ? 'place a seed' : (S.tool === 'fill' ? 'draw an outline' : `use the ${S.tool}`);
  $('#tool-hint').textContent = `click a slice view to ${verb} (the 3-D render only rotates)`;
  $('#tool-hint').hidden = false;
}, true);
window.addEventListener('mouseup', () => {
  if (S.pressIgnored && ['brush', 'eraser', 'fill'].includes(S.tool)) nv.opts.drawingEnabled = true;
}, true);

// a click with the Seed tool: NiiVue has moved the cross-hair to the voxel centre on mousedown
$('#viewer').addEventListener('click', (e) => {
  if (S.tool !== 'seed' || !S.vol || e.button !== 0) return;
  if (S.pressIgnored) { S.pressIgnored = false; return; }
  $('#tool-hint').hidden = true;
  if (!addSeedFromCrosshair()) return;
  if ($('#grow-auto').checked) busy(growRegion);
});
on('#grow-run', 'click', growRegion);
$('#seeds-clear').addEventListener('click', () => { S.seeds = []; showSeeds(); });

$('#method-select').addEventListener('change', buildMethodForm);
on('#method-run', 'click', () => runMethod($('#method-select').value, readParams($('#method-form')),
  { replace: $('#method-replace').checked }));

on('#reg-run', 'click', register);
$('#reg-moving').addEventListener('change', () => { $('#reg-moving').dataset.touched = '1'; });
on('#reg-tile', 'change', showChecker);
on('#reg-show', 'change', showChecker);

$('#train-model').addEventListener('change', () => { buildModelMenu(); busy(resumeTraining); });
on('#train-start', 'click', startTraining);
on('#train-cancel', 'click', cancelTraining);
on('#predict', 'click', predict);

async function main() {
  // the listing comes over the network while the viewer starts (compiles its shaders)
  const listing = (async () => { await loadInfo(); await loadImages(); S.startup.listing_ms = performance.now(); })();
  listing.catch(() => {});                          // reported by busy() below
  await nv.attachToCanvas($('#viewer'));
  S.startup.viewer_ms = performance.now();
  drawLoss();
  await busy(async () => {
    await listing;
    await resumeTraining();
  });
  document.body.dataset.state = 'idle';
  const want = new URLSearchParams(location.search).get('image');
  if (want && S.images.find((x) => x.id === want)) await openImage(want);
}
main();
