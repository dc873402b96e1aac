/* overview.js: every layer x head of one viewer `v` as small multiples (a "model view"); a click
 * on one opens that layer and head in the main view. Text maps show the whole (L, S) matrix;
 * image maps show the active token's map over the image (without one, the mean of the tokens). */
function buildOverview(v) {
  var view = el("section", "ca-overview", v.root);
  view.hidden = true;
  v.els.ovView = view;
  v.els.ovNote = el("p", "ca-overview-note", view);
  var grid = el("div", "ca-overview-grid", view);
  var heads = v.data.headMean ? [-1] : range(v.H);
  grid.style.gridTemplateColumns = "auto repeat(" + heads.length + ", auto)";
  el("span", "ca-overview-corner", grid);
  heads.forEach(function (h) {
    el("span", "ca-overview-head", grid).textContent = h < 0 ? "head mean" : "head " + h;
  });
  v.els.thumbs = [];
  v.data.layers.forEach(function (name, l) {
    el("span", "ca-overview-layer", grid).textContent = name;
    heads.forEach(function (h) {
      var b = el("button", "ca-thumb", grid);
      b.type = "button";
      b.setAttribute("data-layer", String(l));
      b.setAttribute("data-head", String(h));
      b.title = name + ", " + (h < 0 ? "head mean" : "head " + h) + ": click to open";
      b.setAttribute("aria-label", b.title);
      el("canvas", null, b);
      b.addEventListener("click", function () {
        v.setLayer(l);
        v.setHead(h);
        v.setView("tokens");
      });
      v.els.thumbs.push(b);
    });
  });
}

// The map a thumbnail shows over the image: the active token's, else the mean of the tokens.
function thumbImageValues(v, M) {
  var values = tokenMap(v, M, v.active());
  if (values) return values;
  var n = v.patches === "source" ? v.L : v.S, P = v.img.grid[0] * v.img.grid[1];
  var sum = new Float32Array(P);
  for (var i = 0; i < n; i++) {
    var one = tokenMap(v, M, { side: v.patches === "source" ? "target" : "source", i: i });
    for (var p = 0; p < P; p++) sum[p] += one[p] / n;
  }
  return sum;
}

function drawThumb(v, canvas, M) {
  var ctx, w, h;
  if (v.img && v.els.imgEl.naturalWidth) {
    var img = v.els.imgEl;
    w = 96; h = Math.max(1, Math.round((96 * img.naturalHeight) / img.naturalWidth));
    canvas.width = w; canvas.height = h;
    ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, w, h);
    ctx.globalAlpha = 0.5;
    ctx.drawImage(img, 0, 0, w, h);
    ctx.globalAlpha = 1;
    drawOverlay(v, ctx, thumbImageValues(v, M), w, h);
    drawBox(v, ctx, w / img.naturalWidth);
    return;
  }
  var cell = Math.max(1, Math.floor(96 / Math.max(v.L, v.S)));
  w = v.S * cell; h = v.L * cell;
  canvas.width = w; canvas.height = h;
  var scaled = new Float32Array(v.L * v.S), top = M.max || 1;
  for (var j = 0; j < scaled.length; j++) scaled[j] = M[j] / top;
  ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(paintGrid(scaled, v.S, v.L, v.lut, null), 0, 0, w, h);
}

function drawOverview(v) {
  if (v.state.view !== "overview") return;
  var a = v.active();
  var who = a && (!v.img || a.side !== v.patches)
    ? " Shown: " + (a.side === "target" ? targetLabel(v, a.i) : sourceLabel(v, a.i)) + "."
    : "";
  v.els.ovNote.textContent = "Every layer \u00d7 head, each scaled to its own maximum; click " +
    "one to open it." + (v.img ? " Over the image: the pinned word's map, else the mean of " +
    "the words." : "") + who;
  v.els.thumbs.forEach(function (b) {
    var l = +b.getAttribute("data-layer"), h = +b.getAttribute("data-head");
    drawThumb(v, b.firstChild, v.matrix(l, h));
    b.classList.toggle("ca-on", l === v.state.layer && h === v.state.head);
  });
}
