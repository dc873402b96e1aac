/* controls.js: the header, the control bar (view, layer, head, threshold, colours, links), the
 * colour legend and the hint of one viewer `v` (see mount.js). */
function buildHeader(v) {
  var data = v.data, L = v.L, S = v.S, NL = v.NL, H = v.H;
  var head = el("header", "ca-header", v.root);
  el("h1", "ca-title", head).textContent = data.title || "Cross-attention";
  var rows = L + (v.patches === "target" ? " image patches" : v.patches ? " tokens" : " target");
  var cols = v.patches === "source" ? S + " image patches" : S + " source tokens";
  el("div", "ca-meta", head).textContent = rows + " \u00d7 " + cols + " \u00b7 " + NL +
    (NL === 1 ? " layer" : " layers") + " \u00b7 " +
    (data.headMean ? "head mean" : H + (H === 1 ? " head" : " heads"));
  if (data.caption) el("div", "ca-caption", head).textContent = data.caption;
}

function labelled(bar, text, control) {
  var lab = el("label", "ca-field", bar);
  el("span", "ca-field-name", lab).textContent = text;
  lab.appendChild(control);
  return control;
}

function buildViewButtons(v, bar) {
  var views = el("div", "ca-views", bar);
  v.els.viewButtons = {};
  [["tokens", v.img ? "Image" : "Tokens"], ["matrix", "Matrix"], ["overview", "Overview"]]
    .forEach(function (pair) {
      var b = el("button", "ca-view-btn", views);
      b.type = "button";
      b.textContent = pair[1];
      b.setAttribute("data-view", pair[0]);
      b.addEventListener("click", function () { v.setView(pair[0]); });
      v.els.viewButtons[pair[0]] = b;
    });
}

function buildLayerHead(v, bar) {
  var data = v.data, state = v.state;
  var layerSel = labelled(bar, "Layer", el("select", "ca-layer"));
  data.layers.forEach(function (name, i) {
    var o = el("option", null, layerSel);
    o.value = String(i);
    o.textContent = name;
  });
  if (v.NL > 1) {
    var om = el("option", null, layerSel);
    om.value = "-1";
    om.textContent = "mean of layers";
  }
  layerSel.value = String(state.layer);
  layerSel.disabled = v.NL === 1;
  var headSel = labelled(bar, "Head", el("select", "ca-head"));
  var hm = el("option", null, headSel);
  hm.value = "-1";
  hm.textContent = data.headMean ? "head mean" : "mean of heads";
  if (!data.headMean) {
    for (var h = 0; h < v.H; h++) {
      var oh = el("option", null, headSel);
      oh.value = String(h);
      oh.textContent = "head " + h;
    }
  }
  headSel.value = String(data.headMean ? -1 : state.head);
  headSel.disabled = data.headMean || v.H === 1;
  layerSel.addEventListener("change", function () { v.setLayer(+layerSel.value); });
  headSel.addEventListener("change", function () { v.setHead(+headSel.value); });
  v.els.layerSel = layerSel;
  v.els.headSel = headSel;
}

function buildThreshold(v, bar) {
  var state = v.state;
  var wrap = el("label", "ca-field", bar);
  el("span", "ca-field-name", wrap).textContent = "Threshold";
  var thrRange = el("input", "ca-threshold-range", wrap);
  thrRange.type = "range"; thrRange.min = "0"; thrRange.max = "1"; thrRange.step = "0.01";
  var thrNum = el("input", "ca-threshold", wrap);
  thrNum.type = "number"; thrNum.min = "0"; thrNum.max = "1"; thrNum.step = "0.01";
  thrRange.value = thrNum.value = String(state.threshold);
  function setThreshold(x, from) {
    if (!isFinite(x)) return;
    state.threshold = Math.max(0, Math.min(1, x));
    if (from !== thrRange) thrRange.value = String(state.threshold);
    if (from !== thrNum) thrNum.value = String(state.threshold);
    v.refresh();
  }
  thrRange.addEventListener("input", function () { setThreshold(parseFloat(thrRange.value), thrRange); });
  thrNum.addEventListener("input", function () { setThreshold(parseFloat(thrNum.value), thrNum); });
}

function buildControls(v) {
  var bar = el("div", "ca-controls", v.root);
  buildViewButtons(v, bar);
  buildLayerHead(v, bar);
  buildThreshold(v, bar);
  var scaleSel = labelled(bar, "Colours", el("select", "ca-scale"));
  [["abs", "0 \u2013 1"], ["max", "0 \u2013 max"]].forEach(function (s) {
    var o = el("option", null, scaleSel);
    o.value = s[0];
    o.textContent = s[1];
  });
  scaleSel.value = v.state.scale;
  scaleSel.addEventListener("change", function () { v.state.scale = scaleSel.value; v.refresh(); });
  if (v.hasLinks) {
    var lw = el("label", "ca-field ca-check", bar);
    var linksBox = el("input", "ca-all-links", lw);
    linksBox.type = "checkbox";
    el("span", "ca-field-name", lw).textContent = "all links";
    linksBox.addEventListener("change", function () { v.state.allLinks = linksBox.checked; v.refresh(); });
  }
}

function buildLegend(v) {
  var data = v.data;
  var legend = el("div", "ca-legend", v.root);
  el("span", "ca-legend-name", legend).textContent = "weight";
  var scaleBox = el("div", "ca-scale-box", legend);
  var ramp = el("div", "ca-ramp", scaleBox);
  ramp.style.background = "linear-gradient(to right, " + data.colors.map(function (s) {
    return s[1] + " " + (s[0] * 100).toFixed(0) + "%";
  }).join(", ") + ")";
  v.els.thrMark = el("div", "ca-ramp-mark", ramp);
  v.els.thrMark.title = "threshold";
  var ticks = el("div", "ca-ticks", scaleBox);
  v.els.ticks = [0, 0.5, 1].map(function () { return el("span", null, ticks); });
  var key = null;
  if (v.hasLinks || (v.img && v.img.box)) key = el("div", "ca-link-key", legend);
  if (v.hasLinks) {
    if (data.links.some(function (k) { return k[2]; })) el("span", "ca-key-sure", key).textContent = "gold link (sure)";
    if (data.links.some(function (k) { return !k[2]; })) el("span", "ca-key-possible", key).textContent = "gold link (possible)";
    if (data.predicted.length) el("span", "ca-key-pred", key).textContent = "predicted link";
  }
  if (v.img && v.img.box) el("span", "ca-key-box", key).textContent = "object box";
  var hint = el("p", "ca-hint", v.root);
  if (v.patches === "source") {
    hint.textContent = "Hover or focus a word to see where it looks in the image (click or Enter " +
      "to pin, Esc to release); hover a patch of the image to see the words that look at it.";
  } else if (v.patches === "target") {
    hint.textContent = "Hover a word to see where it lands on the image, or a patch of the " +
      "image to see the words it attends to; click to pin, Esc to release.";
  } else {
    hint.textContent = "Hover a token to see what it attends to and what attends to it; click " +
      "to pin, Esc to release. Tokens at or above the threshold take the colour of their weight.";
  }
}

function drawLegend(v) {
  var top = v.vmax();
  v.els.ticks[0].textContent = "0";
  v.els.ticks[1].textContent = String(Number((top / 2).toPrecision(2)));
  v.els.ticks[2].textContent = String(Number(top.toPrecision(2)));
  v.els.thrMark.style.left = Math.min(100, (v.state.threshold / top) * 100) + "%";
}
