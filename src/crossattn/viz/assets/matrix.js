/* matrix.js: the matrix view of one viewer `v`: the (L, S) map as a canvas of cells. */
function patchLabel(v, p) {
  var gw = v.img.grid[1];
  return "patch " + Math.floor(p / gw) + "," + (p % gw);
}
function targetLabel(v, t) { return v.data.target ? v.data.target[t] : patchLabel(v, t); }
function sourceLabel(v, s) { return v.data.source ? v.data.source[s] : patchLabel(v, s); }

function buildMatrix(v) {
  var view = el("section", "ca-matrix-view", v.root);
  view.hidden = true;
  var canvas = el("canvas", "ca-matrix", view);
  v.els.matView = view;
  v.els.matrix = canvas;
  canvas.addEventListener("mousemove", function (ev) {
    var geom = v.geom;
    if (!geom) return;
    var r = canvas.getBoundingClientRect();
    var s = Math.floor((ev.clientX - r.left - geom.x0) / geom.cell);
    var t = Math.floor((ev.clientY - r.top - geom.y0) / geom.cell);
    if (s < 0 || s >= v.S || t < 0 || t >= v.L) {
      canvas.title = "";
      return;
    }
    var w = v.current()[t * v.S + s];
    canvas.title = "target " + t + " " + JSON.stringify(targetLabel(v, t)) + " \u2192 source " +
      s + " " + JSON.stringify(sourceLabel(v, s)) + ": " + fmt(w);
    var h = v.state.hover;
    if (!h || h.side !== "target" || h.i !== t) v.setHover({ side: "target", i: t });
  });
  canvas.addEventListener("mouseleave", function () { v.setHover(null); });
  canvas.addEventListener("click", function () { if (v.state.hover) v.togglePin(v.state.hover); });
}

function clip(t) { return t.length > 18 ? t.slice(0, 17) + "\u2026" : t; }

// Cell size and label margins that fit the view's width.
function matrixGeometry(v, ctx) {
  var L = v.L, S = v.S, family = getComputedStyle(v.root).fontFamily;
  var avail = Math.max(320, (v.els.matView.clientWidth || v.root.clientWidth || 900) - 8);
  var cell = Math.max(1, Math.min(28, Math.floor((avail - 40) / S), Math.floor(900 / L) || 1));
  var labels = cell >= 9, i;
  var font = Math.min(13, Math.max(9, Math.round(cell * 0.62))) + "px " + family;
  ctx.font = font;
  var labW = 36, labH = 30;
  if (labels) {
    var mt = 0, ms = 0;
    for (i = 0; i < L; i++) mt = Math.max(mt, ctx.measureText(clip(targetLabel(v, i))).width);
    for (i = 0; i < S; i++) ms = Math.max(ms, ctx.measureText(clip(sourceLabel(v, i))).width);
    labW = Math.ceil(mt) + 12; labH = Math.ceil(ms) + 12;
  }
  cell = Math.max(1, Math.min(cell, Math.floor((avail - labW - 8) / S)));
  return { x0: labW, y0: labH, cell: cell, labels: labels, font: font, family: family };
}

function drawMatrixLabels(v, ctx, g, dpr) {
  var L = v.L, S = v.S, x0 = g.x0, y0 = g.y0, cell = g.cell, k;
  ctx.fillStyle = "#3c3a36";
  ctx.font = g.font;
  if (g.labels) {
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (k = 0; k < L; k++) ctx.fillText(clip(targetLabel(v, k)), x0 - 6, y0 + (k + 0.5) * cell);
    ctx.save();
    ctx.textAlign = "left";
    for (k = 0; k < S; k++) {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.translate(x0 + (k + 0.5) * cell, y0 - 6);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(clip(sourceLabel(v, k)), 0, 0);
    }
    ctx.restore();
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  } else {
    var every = Math.pow(10, Math.ceil(Math.log10(Math.max(S, L) / 8)));
    ctx.font = "10px " + g.family;
    ctx.textAlign = "center"; ctx.textBaseline = "bottom";
    for (k = 0; k < S; k += every) ctx.fillText(String(k), x0 + (k + 0.5) * cell, y0 - 4);
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (k = 0; k < L; k += every) ctx.fillText(String(k), x0 - 4, y0 + (k + 0.5) * cell);
  }
}

// Alignment links on their cells, and the active row (target) or column (source).
function drawMatrixMarks(v, ctx, g) {
  var x0 = g.x0, y0 = g.y0, cell = g.cell, inset = Math.max(0.5, cell * 0.1);
  ctx.lineWidth = Math.max(1, cell * 0.07);
  v.data.links.forEach(function (lk) {
    var x = x0 + lk[1] * cell, y = y0 + lk[0] * cell;
    ctx.strokeStyle = "#1f6feb";
    if (lk[2]) {
      ctx.setLineDash([]);
      ctx.strokeRect(x + inset, y + inset, cell - 2 * inset, cell - 2 * inset);
    } else {
      ctx.setLineDash([Math.max(1, cell / 6), Math.max(1, cell / 8)]);
      ctx.beginPath();
      ctx.arc(x + cell / 2, y + cell / 2, Math.max(0.5, cell / 2 - inset), 0, 2 * Math.PI);
      ctx.stroke();
    }
  });
  ctx.setLineDash([]);
  ctx.fillStyle = "#0f9d58";
  v.data.predicted.forEach(function (lk) {
    ctx.beginPath();
    ctx.arc(x0 + (lk[1] + 0.5) * cell, y0 + (lk[0] + 0.5) * cell, Math.max(0.7, cell * 0.12), 0, 2 * Math.PI);
    ctx.fill();
  });
  var a = v.active();
  if (a) {
    ctx.strokeStyle = "#111";
    ctx.lineWidth = 1.5;
    if (a.side === "target") ctx.strokeRect(x0 - 0.5, y0 + a.i * cell - 0.5, v.S * cell + 1, cell + 1);
    else ctx.strokeRect(x0 + a.i * cell - 0.5, y0 - 0.5, cell + 1, v.L * cell + 1);
  }
}

function drawMatrix(v) {
  if (v.state.view !== "matrix") return;
  var canvas = v.els.matrix, L = v.L, S = v.S, M = v.current();
  var g = matrixGeometry(v, canvas.getContext("2d"));
  var cw = g.x0 + S * g.cell + 8, ch = g.y0 + L * g.cell + 8;
  var dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(cw * dpr); canvas.height = Math.round(ch * dpr);
  canvas.style.width = cw + "px"; canvas.style.height = ch + "px";
  var ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  v.geom = g;
  canvas.setAttribute("data-x0", String(g.x0));
  canvas.setAttribute("data-y0", String(g.y0));
  canvas.setAttribute("data-cell", String(g.cell));
  var key = v.state.layer + ":" + v.state.head + ":" + v.state.scale;
  if (v.offKey !== key) {
    var top = v.vmax(), scaled = new Float32Array(L * S);
    for (var j = 0; j < L * S; j++) scaled[j] = M[j] / top;
    v.offMatrix = paintGrid(scaled, S, L, v.lut, null);
    v.offKey = key;
  }
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(v.offMatrix, g.x0, g.y0, S * g.cell, L * g.cell);
  drawMatrixLabels(v, ctx, g, dpr);
  drawMatrixMarks(v, ctx, g);
}
