/* mount.js: one viewer of one example. `v` holds its data, state and elements; every other
 * module draws from it. `keep` carries choices (view, layer, head, threshold, colours) over from
 * the example shown before, where they apply. */
function initialState(data, keep) {
  var state = {
    layer: data.layer, head: data.head, threshold: data.threshold,
    view: "tokens", hover: null, pinned: null, scale: "abs", allLinks: false,
  };
  if (!keep) return state;
  ["view", "threshold", "scale"].forEach(function (k) { if (k in keep) state[k] = keep[k]; });
  if ("layer" in keep && keep.layer < data.layers.length) state.layer = keep.layer;
  if ("head" in keep && keep.head < data.heads && !(data.headMean && keep.head >= 0)) {
    state.head = keep.head;
  }
  return state;
}

function makeViewer(root, data, keep) {
  var v = {
    root: root, data: data, L: data.L, S: data.S, H: data.heads, NL: data.layers.length,
    lut: buildLut(data.colors), matrix: makeMaps(data), state: initialState(data, keep),
    img: data.image || null, els: {}, lit: [], geom: null, offKey: "", offMatrix: null,
    hasLinks: data.links.length > 0 || data.predicted.length > 0,
  };
  v.patches = v.img ? v.img.patches || "target" : null;
  v.current = function () { return v.matrix(v.state.layer, v.state.head); };
  v.vmax = function () { return v.state.scale === "abs" ? 1 : (v.current().max || 1); };
  v.rgbAt = function (w) {
    var i = Math.max(0, Math.min(255, Math.round((w / v.vmax()) * 255)));
    return [v.lut[i * 3], v.lut[i * 3 + 1], v.lut[i * 3 + 2]];
  };
  v.active = function () { return v.state.pinned || v.state.hover; };
  return v;
}

function addActions(v) {
  var state = v.state;
  v.refresh = function () {
    highlight(v);
    drawLinks(v);
    drawLegend(v);
    drawMatrix(v);
    if (v.img) drawImage(v);
    drawOverview(v);
  };
  v.setHover = function (h) { state.hover = h; v.refresh(); };
  v.togglePin = function (p) {
    var pin = state.pinned;
    state.pinned = pin && pin.side === p.side && pin.i === p.i ? null : p;
    v.refresh();
  };
  v.setView = function (name) {
    state.view = name;
    v.els.tokView.hidden = name !== "tokens";
    v.els.matView.hidden = name !== "matrix";
    v.els.ovView.hidden = name !== "overview";
    Object.keys(v.els.viewButtons).forEach(function (k) {
      v.els.viewButtons[k].classList.toggle("ca-on", k === name);
      v.els.viewButtons[k].setAttribute("aria-pressed", String(k === name));
    });
    v.refresh();
  };
  v.setLayer = function (l) { v.els.layerSel.value = String(l); state.layer = l; v.refresh(); };
  v.setHead = function (h) { v.els.headSel.value = String(h); state.head = h; v.refresh(); };
}

function mount(root, data, keep) {
  if (root._caDispose) root._caDispose();
  root.textContent = "";
  root.classList.add("ca-viewer");
  if (data.examples) return mountExamples(root, data);
  var v = makeViewer(root, data, keep);
  addActions(v);
  buildHeader(v);
  buildControls(v);
  buildLegend(v);
  buildTokens(v);
  if (v.img) buildImage(v);
  buildMatrix(v);
  buildOverview(v);
  function onKey(ev) {
    if (ev.key === "Escape" && v.state.pinned) { v.state.pinned = null; v.refresh(); }
  }
  function onResize() { drawLinks(v); drawMatrix(v); }
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", onResize);
  root._caDispose = function () {
    document.removeEventListener("keydown", onKey);
    window.removeEventListener("resize", onResize);
  };
  v.setView(v.state.view);
  root.setAttribute("data-ready", "1");
  return {
    state: v.state,
    matrix: v.matrix,
    setView: v.setView,
    setLayer: v.setLayer,
    setHead: v.setHead,
  };
}
