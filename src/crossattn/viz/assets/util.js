/* crossattn viewer: token view, matrix view, image overlay and overview of cross-attention maps.
 *
 * Self-contained: no network, no dependencies. The page builder joins these modules into one
 * function scope (see crossattn.viz._assets.JS_MODULES). Data comes from a JSON script element
 * (class ca-data) inside each .ca-viewer root, or from crossattnViewer.mount(root, data).
 * Weights arrive quantised (8 or 16 bits, one scale per layer and head) and base64-encoded;
 * rows are target tokens, columns source tokens. Tokens are only ever written with textContent.
 *
 * util.js: small helpers shared by every module.
 */
function el(tag, cls, parent) {
  var node = document.createElement(tag);
  if (cls) node.className = cls;
  if (parent) parent.appendChild(node);
  return node;
}

function hexToRgb(hex) {
  var n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// 256-entry colour table from the stops shared with the static pictures.
function buildLut(stops) {
  var lut = new Uint8ClampedArray(256 * 3);
  var rgb = stops.map(function (s) { return [s[0], hexToRgb(s[1])]; });
  for (var i = 0; i < 256; i++) {
    var x = i / 255, k = 0;
    while (k < rgb.length - 2 && x > rgb[k + 1][0]) k++;
    var a = rgb[k], b = rgb[k + 1];
    var t = Math.min(1, Math.max(0, (x - a[0]) / (b[0] - a[0])));
    for (var c = 0; c < 3; c++) lut[i * 3 + c] = Math.round(a[1][c] + t * (b[1][c] - a[1][c]));
  }
  return lut;
}

function decode(b64, bits) {
  var bin = atob(b64);
  var n = bin.length;
  var bytes = new Uint8Array(n);
  for (var i = 0; i < n; i++) bytes[i] = bin.charCodeAt(i);
  return bits === 16 ? new Uint16Array(bytes.buffer) : bytes;
}

function fmt(w) {
  return w >= 0.995 ? w.toFixed(2) : w.toFixed(3);
}

function range(n) {
  var r = [];
  for (var i = 0; i < n; i++) r.push(i);
  return r;
}

// Paint `values` (each in [0, 1]) as a w x h picture, colour from the table; alpha(v) or opaque.
function paintGrid(values, w, h, lut, alpha) {
  var off = document.createElement("canvas");
  off.width = w; off.height = h;
  var octx = off.getContext("2d"), img = octx.createImageData(w, h);
  for (var p = 0; p < w * h; p++) {
    var v = Math.max(0, Math.min(1, values[p])), i = Math.round(v * 255);
    img.data[p * 4] = lut[i * 3]; img.data[p * 4 + 1] = lut[i * 3 + 1];
    img.data[p * 4 + 2] = lut[i * 3 + 2];
    img.data[p * 4 + 3] = alpha ? alpha(v) : 255;
  }
  octx.putImageData(img, 0, 0);
  return off;
}
