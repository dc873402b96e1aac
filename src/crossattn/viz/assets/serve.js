/* serve.js: the `crossattn serve` page: send the typed sentence, mount the viewer on the answer. */
(function () {
  "use strict";
  var form = document.querySelector(".ca-ask");
  var input = document.getElementById("ca-sentence");
  var status = document.querySelector(".ca-status");
  var live = document.getElementById("ca-live");
  var seq = 0;
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var mine = ++seq;
    status.className = "ca-status";
    status.textContent = "Translating\u2026";
    fetch("/api/translate", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({sentence: input.value})
    }).then(function (r) {
      return r.json().then(function (body) { return {ok: r.ok, body: body}; });
    }).then(function (res) {
      if (mine !== seq) return;
      if (!res.ok) throw new Error(res.body.error || "the server refused the sentence");
      status.textContent = "";
      document.body.setAttribute("data-translation", res.body.translation);
      if (res.body.view) {
        window.crossattnViewer.mount(live, res.body.view);
      } else {
        live.textContent = "";
        status.textContent = "The model produced no words.";
      }
    }).catch(function (err) {
      if (mine !== seq) return;
      status.className = "ca-status ca-error";
      status.textContent = err.message;
    });
  });
})();
