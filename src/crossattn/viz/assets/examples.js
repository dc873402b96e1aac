/* examples.js: a page of several examples: a picker (previous, next and a list) above one
 * viewer, which is mounted anew for each example and keeps the reader's choices. */
function mountExamples(root, data) {
  var n = data.examples.length, current = -1, inner = null, api = null;
  var nav = el("nav", "ca-picker", root);
  nav.setAttribute("aria-label", "examples");
  el("span", "ca-picker-title", nav).textContent = data.title || "Cross-attention";
  var prev = el("button", "ca-prev", nav);
  prev.type = "button";
  prev.textContent = "\u2190 Previous";
  var list = el("select", "ca-example", nav);
  list.setAttribute("aria-label", "example");
  data.examples.forEach(function (ex, i) {
    var o = el("option", null, list);
    o.value = String(i);
    o.textContent = (i + 1) + ". " + (ex.title || "example " + i);
  });
  var next = el("button", "ca-next", nav);
  next.type = "button";
  next.textContent = "Next \u2192";
  var count = el("span", "ca-picker-count", nav);
  inner = el("div", "ca-example-view", root);

  function show(i) {
    i = Math.max(0, Math.min(n - 1, i));
    if (i === current) return;
    var keep = api ? {
      view: api.state.view, layer: api.state.layer, head: api.state.head,
      threshold: api.state.threshold, scale: api.state.scale,
    } : null;
    current = i;
    list.value = String(i);
    prev.disabled = i === 0;
    next.disabled = i === n - 1;
    count.textContent = (i + 1) + " / " + n;
    root.setAttribute("data-example", String(i));
    var ex = data.examples[i];
    if (ex.image && ex.image.ref != null) ex.image.src = data.images[ex.image.ref];
    api = mount(inner, ex, keep);
    inner.classList.remove("ca-viewer");  // one root: the page's styles apply once
  }
  prev.addEventListener("click", function () { show(current - 1); });
  next.addEventListener("click", function () { show(current + 1); });
  list.addEventListener("change", function () { show(+list.value); });
  show(data.example || 0);
  root._caDispose = function () { if (inner._caDispose) inner._caDispose(); };
  root.setAttribute("data-ready", "1");
  return {
    show: show,
    current: function () { return current; },
    viewer: function () { return api; },
  };
}
