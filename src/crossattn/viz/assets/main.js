/* main.js: mount every viewer of the page, and the public entry point. */
function mountAll() {
  var roots = document.querySelectorAll(".ca-viewer[data-ca-auto]");
  for (var i = 0; i < roots.length; i++) {
    var r = roots[i];
    if (r.getAttribute("data-ready")) continue;
    var src = r.querySelector("script.ca-data");
    if (!src) continue;
    var data = JSON.parse(src.textContent);
    r._caViewer = mount(r, data);
  }
}

window.crossattnViewer = { mount: mount, mountAll: mountAll };
mountAll();
