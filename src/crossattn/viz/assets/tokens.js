/* tokens.js: the token rows of one viewer `v`, their highlight and the alignment links. */
function tokenRow(v, side, label, tokens) {
  var row = el("div", "ca-row ca-row-" + side, v.els.tokView);
  el("div", "ca-row-label", row).textContent = label;
  var box = el("div", "ca-toks", row);
  box.setAttribute("data-side", side);
  var els = tokens.map(function (t, i) {
    var s = el("span", "ca-tok", box);
    s.textContent = t;
    s.setAttribute("data-side", side);
    s.setAttribute("data-i", String(i));
    s.tabIndex = 0;  // keyboard users focus a token as others hover it
    s.title = side + " " + i;
    return s;
  });
  function tokenAt(ev) {
    var t = ev.target.closest ? ev.target.closest(".ca-tok") : null;
    return t && box.contains(t) ? { side: side, i: +t.getAttribute("data-i") } : null;
  }
  // `act(token, event)` for an event on a token of this row.
  function onToken(type, act) {
    box.addEventListener(type, function (ev) {
      var a = tokenAt(ev);
      if (a) act(a, ev);
    });
  }
  function hover(a) { v.setHover(a); }
  function pin(a) { v.togglePin(a); }
  // Pointer and keyboard alike: hover or focus shows a token, a click, Enter or Space pins it.
  onToken("mouseover", hover);
  onToken("focusin", hover);
  onToken("click", pin);
  onToken("keydown", function (a, ev) {
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      pin(a);
    }
  });
  box.addEventListener("mouseleave", function () { v.setHover(null); });
  box.addEventListener("focusout", function () { v.setHover(null); });
  return els;
}

function buildTokens(v) {
  var data = v.data;
  v.els.tokView = el("section", "ca-token-view" + (data.source ? "" : " ca-no-source"), v.root);
  v.els.src = data.source ? tokenRow(v, "source", "Source", data.source) : [];
  var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "ca-links");
  v.els.tokView.appendChild(svg);
  v.els.linkSvg = svg;
  var label = v.patches === "source" ? "Text" : "Target";
  v.els.tgt = data.target ? tokenRow(v, "target", label, data.target) : [];
}

function paintToken(v, node, w, other) {
  var c = v.rgbAt(w);
  node.style.backgroundColor = "rgb(" + c[0] + ", " + c[1] + ", " + c[2] + ")";
  if (0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2] < 140) node.style.color = "#fff";
  node.setAttribute("data-w", fmt(w));
  node.title = node.getAttribute("data-side") + " " + node.getAttribute("data-i") +
    ": weight " + fmt(w) + " with " + other;
  v.lit.push(node);
}

// Highlight what the active token attends to (or is attended by), on the tokens themselves.
function highlight(v) {
  v.lit.forEach(function (n) {
    n.style.backgroundColor = "";
    n.style.color = "";
    n.removeAttribute("data-w");
    n.title = n.getAttribute("data-side") + " " + n.getAttribute("data-i");
  });
  v.lit = [];
  v.root.querySelectorAll(".ca-active, .ca-pinned").forEach(function (n) {
    n.classList.remove("ca-active", "ca-pinned");
  });
  var a = v.active();
  v.root.setAttribute("data-active", a ? a.side + ":" + a.i : "");
  if (!a) return;
  var M = v.current(), thr = v.state.threshold, S = v.S, i;
  var mark = v.state.pinned ? "ca-pinned" : "ca-active";
  if (a.side === "target") {
    var row = a.i * S, who = "target " + a.i;
    for (i = 0; i < S; i++) {
      if (M[row + i] >= thr && v.els.src[i]) paintToken(v, v.els.src[i], M[row + i], who);
    }
    if (v.els.tgt[a.i]) v.els.tgt[a.i].classList.add(mark);
  } else {
    var whom = "source " + a.i;
    for (i = 0; i < v.L; i++) {
      if (M[i * S + a.i] >= thr && v.els.tgt[i]) paintToken(v, v.els.tgt[i], M[i * S + a.i], whom);
    }
    if (v.els.src[a.i]) v.els.src[a.i].classList.add(mark);
  }
}

function drawLinks(v) {
  var svg = v.els.linkSvg, data = v.data, state = v.state;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  if (!data.target || !data.source || state.view !== "tokens" || !v.hasLinks) return;
  var a = v.active();
  var box = v.els.tokView.getBoundingClientRect();
  svg.setAttribute("width", String(box.width));
  svg.setAttribute("height", String(box.height));
  function keep(k) {
    if (state.allLinks) return true;
    if (!a) return false;
    return a.side === "target" ? k[0] === a.i : k[1] === a.i;
  }
  function line(k, cls, shift) {
    var s = v.els.src[k[1]].getBoundingClientRect(), t = v.els.tgt[k[0]].getBoundingClientRect();
    var x1 = s.left + s.width / 2 - box.left + shift, y1 = s.bottom - box.top;
    var x2 = t.left + t.width / 2 - box.left + shift, y2 = t.top - box.top;
    var p = document.createElementNS("http://www.w3.org/2000/svg", "path");
    var my = (y1 + y2) / 2;
    p.setAttribute("d", "M" + x1 + "," + y1 + " C" + x1 + "," + my + " " + x2 + "," + my +
      " " + x2 + "," + y2);
    p.setAttribute("class", cls);
    svg.appendChild(p);
  }
  // Gold and predicted links side by side, so that a link in both shows both.
  var both = data.links.length > 0 && data.predicted.length > 0;
  data.links.forEach(function (k) {
    if (keep(k)) line(k, k[2] ? "ca-link-sure" : "ca-link-possible", both ? -2 : 0);
  });
  data.predicted.forEach(function (k) { if (keep(k)) line(k, "ca-link-pred", both ? 2 : 0); });
}
