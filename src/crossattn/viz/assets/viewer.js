/* crossattn viewer: token view, matrix view and image-patch overlay of cross-attention maps.
 *
 * Self-contained: no network, no dependencies. Data comes from a
 * JSON script element (class ca-data) inside each .ca-viewer root, or from
 * crossattnViewer.mount(root, data). Weights arrive quantised (8 or 16 bits, one scale per
 * layer and head) and base64-encoded; rows are target tokens, columns source tokens.
 * Tokens are only ever written with textContent.
 */
(function () {
  "use strict";

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

  function mount(root, data) {
    if (root._caDispose) root._caDispose();
    root.textContent = "";
    root.classList.add("ca-viewer");
    var L = data.L, S = data.S, H = data.heads, NL = data.layers.length;
    var hasTarget = Array.isArray(data.target);
    var hasImage = !!data.image;
    var lut = buildLut(data.colors);
    var q = decode(data.data, data.bits);
    var qmax = data.bits === 16 ? 65535 : 255;
    var LS = L * S;

    var state = {
      layer: data.layer, head: data.head, threshold: data.threshold,
      view: "tokens", hover: null, pinned: null, scale: "abs", allLinks: false,
    };
    var cache = {};

    // The (L, S) map of one layer and head, dequantised; -1 means the mean over layers / heads.
    function matrix(layer, head) {
      var key = layer + ":" + head;
      if (cache[key]) return cache[key];
      var out = new Float32Array(LS);
      var layers = layer < 0 ? range(NL) : [layer];
      var heads = head < 0 ? range(H) : [head];
      var n = layers.length * heads.length;
      layers.forEach(function (l) {
        heads.forEach(function (h) {
          var m = l * H + h, off = m * LS, f = data.scales[m] / qmax / n;
          for (var i = 0; i < LS; i++) out[i] += q[off + i] * f;
        });
      });
      var max = 0;
      for (var j = 0; j < LS; j++) if (out[j] > max) max = out[j];
      out.max = max;
      cache[key] = out;
      return out;
    }
    function current() { return matrix(state.layer, state.head); }
    function range(n) { var r = []; for (var i = 0; i < n; i++) r.push(i); return r; }
    function vmax() { return state.scale === "abs" ? 1 : (current().max || 1); }
    function rgbAt(w) {
      var i = Math.max(0, Math.min(255, Math.round((w / vmax()) * 255)));
      return [lut[i * 3], lut[i * 3 + 1], lut[i * 3 + 2]];
    }

    // ---- header and controls ------------------------------------------------------------
    var head = el("header", "ca-header", root);
    el("h1", "ca-title", head).textContent = data.title || "Cross-attention";
    var meta = el("div", "ca-meta", head);
    meta.textContent = (hasTarget ? L + " target" : L + " image patches") + " \u00d7 " + S +
      " source tokens \u00b7 " + NL + (NL === 1 ? " layer" : " layers") + " \u00b7 " +
      (data.headMean ? "head mean" : H + (H === 1 ? " head" : " heads"));
    if (data.caption) {
      var cap = el("div", "ca-caption", head);
      cap.textContent = data.caption;
    }

    var bar = el("div", "ca-controls", root);
    var views = el("div", "ca-views", bar);
    var viewButtons = {};
    [["tokens", "Tokens"], ["matrix", "Matrix"]].forEach(function (v) {
      var b = el("button", "ca-view-btn", views);
      b.type = "button";
      b.textContent = v[1];
      b.setAttribute("data-view", v[0]);
      b.addEventListener("click", function () { setView(v[0]); });
      viewButtons[v[0]] = b;
    });

    function labelled(text, control) {
      var lab = el("label", "ca-field", bar);
      el("span", "ca-field-name", lab).textContent = text;
      lab.appendChild(control);
      return control;
    }
    var layerSel = labelled("Layer", el("select", "ca-layer"));
    data.layers.forEach(function (name, i) {
      var o = el("option", null, layerSel);
      o.value = String(i);
      o.textContent = name;
    });
    if (NL > 1) {
      var om = el("option", null, layerSel);
      om.value = "-1";
      om.textContent = "mean of layers";
    }
    layerSel.value = String(state.layer);
    layerSel.disabled = NL === 1;
    var headSel = labelled("Head", el("select", "ca-head"));
    var hm = el("option", null, headSel);
    hm.value = "-1";
    hm.textContent = data.headMean ? "head mean" : "mean of heads";
    if (!data.headMean) {
      for (var h = 0; h < H; h++) {
        var oh = el("option", null, headSel);
        oh.value = String(h);
        oh.textContent = "head " + h;
      }
    }
    headSel.value = String(data.headMean ? -1 : state.head);
    headSel.disabled = data.headMean || H === 1;

    var thrWrap = el("label", "ca-field", bar);
    el("span", "ca-field-name", thrWrap).textContent = "Threshold";
    var thrRange = el("input", "ca-threshold-range", thrWrap);
    thrRange.type = "range"; thrRange.min = "0"; thrRange.max = "1"; thrRange.step = "0.01";
    var thrNum = el("input", "ca-threshold", thrWrap);
    thrNum.type = "number"; thrNum.min = "0"; thrNum.max = "1"; thrNum.step = "0.01";
    thrRange.value = thrNum.value = String(state.threshold);

    var scaleSel = labelled("Colours", el("select", "ca-scale"));
    [["abs", "0 \u2013 1"], ["max", "0 \u2013 max"]].forEach(function (s) {
      var o = el("option", null, scaleSel);
      o.value = s[0];
      o.textContent = s[1];
    });

    var linksBox = null;
    var hasLinks = data.links.length > 0 || data.predicted.length > 0;
    if (hasLinks) {
      var lw = el("label", "ca-field ca-check", bar);
      linksBox = el("input", "ca-all-links", lw);
      linksBox.type = "checkbox";
      el("span", "ca-field-name", lw).textContent = "all links";
    }

    var legend = el("div", "ca-legend", root);
    el("span", "ca-legend-name", legend).textContent = "weight";
    var scaleBox = el("div", "ca-scale-box", legend);
    var ramp = el("div", "ca-ramp", scaleBox);
    ramp.style.background = "linear-gradient(to right, " + data.colors.map(function (s) {
      return s[1] + " " + (s[0] * 100).toFixed(0) + "%";
    }).join(", ") + ")";
    var thrMark = el("div", "ca-ramp-mark", ramp);
    thrMark.title = "threshold";
    var ticks = el("div", "ca-ticks", scaleBox);
    var tickEls = [0, 0.5, 1].map(function () { return el("span", null, ticks); });
    if (hasLinks) {
      var key = el("div", "ca-link-key", legend);
      if (data.links.some(function (k) { return k[2]; })) el("span", "ca-key-sure", key).textContent = "gold link (sure)";
      if (data.links.some(function (k) { return !k[2]; })) el("span", "ca-key-possible", key).textContent = "gold link (possible)";
      if (data.predicted.length) el("span", "ca-key-pred", key).textContent = "predicted link";
    }

    var hint = el("p", "ca-hint", root);
    hint.textContent = hasImage
      ? "Hover a word to see where it lands on the image, or a patch of the image to see the " +
        "words it attends to; click to pin, Esc to release."
      : "Hover a token to see what it attends to and what attends to it; click to pin, Esc to " +
        "release. Tokens at or above the threshold take the colour of their weight.";

    // ---- token view ---------------------------------------------------------------------
    var tokView = el("section", "ca-token-view", root);
    function tokenRow(side, label, tokens) {
      var row = el("div", "ca-row ca-row-" + side, tokView);
      el("div", "ca-row-label", row).textContent = label;
      var box = el("div", "ca-toks", row);
      box.setAttribute("data-side", side);
      var els = tokens.map(function (t, i) {
        var s = el("span", "ca-tok", box);
        s.textContent = t;
        s.setAttribute("data-side", side);
        s.setAttribute("data-i", String(i));
        s.title = side + " " + i;
        return s;
      });
      box.addEventListener("mouseover", function (ev) {
        var t = ev.target.closest ? ev.target.closest(".ca-tok") : null;
        if (t && box.contains(t)) setHover({ side: side, i: +t.getAttribute("data-i") });
      });
      box.addEventListener("mouseleave", function () { setHover(null); });
      box.addEventListener("click", function (ev) {
        var t = ev.target.closest ? ev.target.closest(".ca-tok") : null;
        if (t && box.contains(t)) togglePin({ side: side, i: +t.getAttribute("data-i") });
      });
      return els;
    }
    var srcEls = tokenRow("source", "Source", data.source);
    var linkSvg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    linkSvg.setAttribute("class", "ca-links");
    tokView.appendChild(linkSvg);
    var tgtEls = hasTarget ? tokenRow("target", "Target", data.target) : [];

    // ---- image view (text-to-image records) ---------------------------------------------
    var imgCanvas = null, imgEl = null, gh = 0, gw = 0;
    if (hasImage) {
      gh = data.image.grid[0]; gw = data.image.grid[1];
      var imgWrap = el("div", "ca-row ca-row-image", tokView);
      el("div", "ca-row-label", imgWrap).textContent = "Image";
      imgCanvas = el("canvas", "ca-image-canvas", imgWrap);
      imgCanvas.title = "image patches: hover a patch to see the tokens it attends to";
      imgEl = new Image();
      imgEl.onload = drawImage;
      imgEl.src = data.image.src;
      imgCanvas.addEventListener("mousemove", function (ev) {
        var r = imgCanvas.getBoundingClientRect();
        var c = Math.floor(((ev.clientX - r.left) / r.width) * gw);
        var rr = Math.floor(((ev.clientY - r.top) / r.height) * gh);
        if (c >= 0 && c < gw && rr >= 0 && rr < gh) {
          var p = rr * gw + c;
          if (!state.hover || state.hover.i !== p || state.hover.side !== "target") {
            setHover({ side: "target", i: p });
          }
        }
      });
      imgCanvas.addEventListener("mouseleave", function () { setHover(null); });
      imgCanvas.addEventListener("click", function () { if (state.hover) togglePin(state.hover); });
    }

    // ---- matrix view ----------------------------------------------------------------------
    var matView = el("section", "ca-matrix-view", root);
    matView.hidden = true;
    var canvas = el("canvas", "ca-matrix", matView);
    var geom = null;
    canvas.addEventListener("mousemove", function (ev) {
      if (!geom) return;
      var r = canvas.getBoundingClientRect();
      var s = Math.floor((ev.clientX - r.left - geom.x0) / geom.cell);
      var t = Math.floor((ev.clientY - r.top - geom.y0) / geom.cell);
      if (s < 0 || s >= S || t < 0 || t >= L) {
        canvas.title = "";
        return;
      }
      var w = current()[t * S + s];
      canvas.title = "target " + t + " " + JSON.stringify(targetLabel(t)) + " \u2192 source " + s +
        " " + JSON.stringify(data.source[s]) + ": " + fmt(w);
      if (!state.hover || state.hover.side !== "target" || state.hover.i !== t) {
        setHover({ side: "target", i: t });
      }
    });
    canvas.addEventListener("mouseleave", function () { setHover(null); });
    canvas.addEventListener("click", function () { if (state.hover) togglePin(state.hover); });

    function targetLabel(t) {
      return hasTarget ? data.target[t] : "patch " + Math.floor(t / gw) + "," + (t % gw);
    }

    // ---- state changes --------------------------------------------------------------------
    var lit = [];
    function active() { return state.pinned || state.hover; }
    function setHover(h) {
      state.hover = h;
      refresh();
    }
    function togglePin(p) {
      var pin = state.pinned;
      state.pinned = pin && pin.side === p.side && pin.i === p.i ? null : p;
      refresh();
    }
    function setView(v) {
      state.view = v;
      tokView.hidden = v !== "tokens";
      matView.hidden = v !== "matrix";
      Object.keys(viewButtons).forEach(function (k) {
        viewButtons[k].classList.toggle("ca-on", k === v);
        viewButtons[k].setAttribute("aria-pressed", String(k === v));
      });
      refresh();
    }

    function paint(node, w, other) {
      var c = rgbAt(w);
      node.style.backgroundColor = "rgb(" + c[0] + ", " + c[1] + ", " + c[2] + ")";
      if (0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2] < 140) node.style.color = "#fff";
      node.setAttribute("data-w", fmt(w));
      node.title = node.getAttribute("data-side") + " " + node.getAttribute("data-i") +
        ": weight " + fmt(w) + " with " + other;
      lit.push(node);
    }

    // Highlight what the active token attends to (or is attended by), on the tokens themselves.
    function highlight() {
      for (var k = 0; k < lit.length; k++) {
        var n = lit[k];
        n.style.backgroundColor = "";
        n.style.color = "";
        n.removeAttribute("data-w");
        n.title = n.getAttribute("data-side") + " " + n.getAttribute("data-i");
      }
      lit = [];
      root.querySelectorAll(".ca-active, .ca-pinned").forEach(function (n) {
        n.classList.remove("ca-active", "ca-pinned");
      });
      var a = active();
      root.setAttribute("data-active", a ? a.side + ":" + a.i : "");
      if (!a) return;
      var M = current(), thr = state.threshold, i;
      if (a.side === "target") {
        var row = a.i * S, who = "target " + a.i;
        for (i = 0; i < S; i++) if (M[row + i] >= thr) paint(srcEls[i], M[row + i], who);
        if (tgtEls[a.i]) tgtEls[a.i].classList.add(state.pinned ? "ca-pinned" : "ca-active");
      } else {
        var whom = "source " + a.i;
        for (i = 0; i < L; i++) {
          if (M[i * S + a.i] >= thr && tgtEls[i]) paint(tgtEls[i], M[i * S + a.i], whom);
        }
        srcEls[a.i].classList.add(state.pinned ? "ca-pinned" : "ca-active");
      }
    }

    function drawLinks() {
      while (linkSvg.firstChild) linkSvg.removeChild(linkSvg.firstChild);
      if (!hasTarget || state.view !== "tokens" || !hasLinks) return;
      var a = active();
      var box = tokView.getBoundingClientRect();
      linkSvg.setAttribute("width", String(box.width));
      linkSvg.setAttribute("height", String(box.height));
      function keep(k) {
        if (state.allLinks) return true;
        if (!a) return false;
        return a.side === "target" ? k[0] === a.i : k[1] === a.i;
      }
      function line(k, cls, shift) {
        var s = srcEls[k[1]].getBoundingClientRect(), t = tgtEls[k[0]].getBoundingClientRect();
        var x1 = s.left + s.width / 2 - box.left + shift, y1 = s.bottom - box.top;
        var x2 = t.left + t.width / 2 - box.left + shift, y2 = t.top - box.top;
        var p = document.createElementNS("http://www.w3.org/2000/svg", "path");
        var my = (y1 + y2) / 2;
        p.setAttribute("d", "M" + x1 + "," + y1 + " C" + x1 + "," + my + " " + x2 + "," + my +
          " " + x2 + "," + y2);
        p.setAttribute("class", cls);
        linkSvg.appendChild(p);
      }
      // Gold and predicted links side by side, so that a link in both shows both.
      var both = data.links.length > 0 && data.predicted.length > 0;
      data.links.forEach(function (k) {
        if (keep(k)) line(k, k[2] ? "ca-link-sure" : "ca-link-possible", both ? -2 : 0);
      });
      data.predicted.forEach(function (k) { if (keep(k)) line(k, "ca-link-pred", both ? 2 : 0); });
    }

    function drawLegend() {
      var top = vmax();
      tickEls[0].textContent = "0";
      tickEls[1].textContent = String(Number((top / 2).toPrecision(2)));
      tickEls[2].textContent = String(Number(top.toPrecision(2)));
      thrMark.style.left = Math.min(100, (state.threshold / top) * 100) + "%";
    }

    function drawImage() {
      if (!imgCanvas || !imgEl.complete || !imgEl.naturalWidth) return;
      var maxSide = 440;
      var k = Math.min(1, maxSide / Math.max(imgEl.naturalWidth, imgEl.naturalHeight)) || 1;
      if (imgEl.naturalWidth * k < 320) k = 320 / imgEl.naturalWidth;
      var w = Math.round(imgEl.naturalWidth * k), h = Math.round(imgEl.naturalHeight * k);
      var dpr = window.devicePixelRatio || 1;
      imgCanvas.width = w * dpr; imgCanvas.height = h * dpr;
      imgCanvas.style.width = w + "px"; imgCanvas.style.height = h + "px";
      var ctx = imgCanvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      var a = active();
      var overlay = a && a.side === "source";
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, w, h);
      ctx.globalAlpha = overlay ? 0.5 : 1;  // fade the image under a token's attention
      ctx.drawImage(imgEl, 0, 0, w, h);
      ctx.globalAlpha = 1;
      if (overlay) {
        // One text token's attention over the patches, stretched to its own maximum.
        var M = current(), top = 0, p;
        for (p = 0; p < L; p++) top = Math.max(top, M[p * S + a.i]);
        var off = document.createElement("canvas");
        off.width = gw; off.height = gh;
        var octx = off.getContext("2d"), img = octx.createImageData(gw, gh);
        for (p = 0; p < L; p++) {
          var v = top > 0 ? M[p * S + a.i] / top : 0, i = Math.round(v * 255);
          img.data[p * 4] = lut[i * 3]; img.data[p * 4 + 1] = lut[i * 3 + 1];
          img.data[p * 4 + 2] = lut[i * 3 + 2]; img.data[p * 4 + 3] = Math.round(215 * Math.sqrt(v));
        }
        octx.putImageData(img, 0, 0);
        ctx.imageSmoothingEnabled = true;
        ctx.drawImage(off, 0, 0, w, h);
      } else if (a && a.side === "target") {
        var pr = Math.floor(a.i / gw), pc = a.i % gw;
        ctx.strokeStyle = "#111";
        ctx.lineWidth = 2;
        ctx.strokeRect(pc * w / gw, pr * h / gh, w / gw, h / gh);
      }
    }

    var offMatrix = null, offKey = "";
    function drawMatrix() {
      if (state.view !== "matrix") return;
      var M = current(), key = state.layer + ":" + state.head + ":" + state.scale;
      var avail = Math.max(320, (matView.clientWidth || root.clientWidth || 900) - 8);
      var ctx = canvas.getContext("2d");
      ctx.font = "12px " + getComputedStyle(root).fontFamily;
      var cell = Math.max(1, Math.min(28, Math.floor((avail - 40) / S), Math.floor(900 / L) || 1));
      var labels = cell >= 9;
      var fontPx = Math.min(13, Math.max(9, Math.round(cell * 0.62)));
      var font = fontPx + "px " + getComputedStyle(root).fontFamily;
      ctx.font = font;
      function clip(t) { return t.length > 18 ? t.slice(0, 17) + "\u2026" : t; }
      var labW = 36, labH = 30;
      if (labels) {
        var mt = 0, ms = 0, i;
        for (i = 0; i < L; i++) mt = Math.max(mt, ctx.measureText(clip(targetLabel(i))).width);
        for (i = 0; i < S; i++) ms = Math.max(ms, ctx.measureText(clip(data.source[i])).width);
        labW = Math.ceil(mt) + 12; labH = Math.ceil(ms) + 12;
      }
      cell = Math.max(1, Math.min(cell, Math.floor((avail - labW - 8) / S)));
      var x0 = labW, y0 = labH, cw = x0 + S * cell + 8, ch = y0 + L * cell + 8;
      var dpr = window.devicePixelRatio || 1;
      canvas.width = Math.round(cw * dpr); canvas.height = Math.round(ch * dpr);
      canvas.style.width = cw + "px"; canvas.style.height = ch + "px";
      ctx = canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      geom = { x0: x0, y0: y0, cell: cell };
      canvas.setAttribute("data-x0", String(x0));
      canvas.setAttribute("data-y0", String(y0));
      canvas.setAttribute("data-cell", String(cell));
      if (offKey !== key) {
        offMatrix = document.createElement("canvas");
        offMatrix.width = S; offMatrix.height = L;
        var octx = offMatrix.getContext("2d"), img = octx.createImageData(S, L), top = vmax();
        for (var j = 0; j < LS; j++) {
          var v = Math.max(0, Math.min(255, Math.round((M[j] / top) * 255)));
          img.data[j * 4] = lut[v * 3]; img.data[j * 4 + 1] = lut[v * 3 + 1];
          img.data[j * 4 + 2] = lut[v * 3 + 2]; img.data[j * 4 + 3] = 255;
        }
        octx.putImageData(img, 0, 0);
        offKey = key;
      }
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(offMatrix, x0, y0, S * cell, L * cell);
      ctx.fillStyle = "#3c3a36";
      ctx.font = font;
      var k;
      if (labels) {
        ctx.textAlign = "right"; ctx.textBaseline = "middle";
        for (k = 0; k < L; k++) ctx.fillText(clip(targetLabel(k)), x0 - 6, y0 + (k + 0.5) * cell);
        ctx.save();
        ctx.textAlign = "left";
        for (k = 0; k < S; k++) {
          ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
          ctx.translate(x0 + (k + 0.5) * cell, y0 - 6);
          ctx.rotate(-Math.PI / 2);
          ctx.fillText(clip(data.source[k]), 0, 0);
        }
        ctx.restore();
        ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      } else {
        var every = Math.pow(10, Math.ceil(Math.log10(Math.max(S, L) / 8)));
        ctx.font = "10px " + getComputedStyle(root).fontFamily;
        ctx.textAlign = "center"; ctx.textBaseline = "bottom";
        for (k = 0; k < S; k += every) ctx.fillText(String(k), x0 + (k + 0.5) * cell, y0 - 4);
        ctx.textAlign = "right"; ctx.textBaseline = "middle";
        for (k = 0; k < L; k += every) ctx.fillText(String(k), x0 - 4, y0 + (k + 0.5) * cell);
      }
      // Alignment links on their cells.
      var inset = Math.max(0.5, cell * 0.1);
      ctx.lineWidth = Math.max(1, cell * 0.07);
      data.links.forEach(function (lk) {
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
      data.predicted.forEach(function (lk) {
        ctx.beginPath();
        ctx.arc(x0 + (lk[1] + 0.5) * cell, y0 + (lk[0] + 0.5) * cell, Math.max(0.7, cell * 0.12), 0, 2 * Math.PI);
        ctx.fill();
      });
      // The active row (target) or column (source).
      var a = active();
      if (a) {
        ctx.strokeStyle = "#111";
        ctx.lineWidth = 1.5;
        if (a.side === "target") ctx.strokeRect(x0 - 0.5, y0 + a.i * cell - 0.5, S * cell + 1, cell + 1);
        else ctx.strokeRect(x0 + a.i * cell - 0.5, y0 - 0.5, cell + 1, L * cell + 1);
      }
    }

    function refresh() {
      highlight();
      drawLinks();
      drawLegend();
      drawMatrix();
      drawImage();
    }

    // ---- control events ---------------------------------------------------------------------
    layerSel.addEventListener("change", function () { state.layer = +layerSel.value; refresh(); });
    headSel.addEventListener("change", function () { state.head = +headSel.value; refresh(); });
    function setThreshold(v, from) {
      if (!isFinite(v)) return;
      state.threshold = Math.max(0, Math.min(1, v));
      if (from !== thrRange) thrRange.value = String(state.threshold);
      if (from !== thrNum) thrNum.value = String(state.threshold);
      refresh();
    }
    thrRange.addEventListener("input", function () { setThreshold(parseFloat(thrRange.value), thrRange); });
    thrNum.addEventListener("input", function () { setThreshold(parseFloat(thrNum.value), thrNum); });
    scaleSel.addEventListener("change", function () { state.scale = scaleSel.value; refresh(); });
    if (linksBox) linksBox.addEventListener("change", function () { state.allLinks = linksBox.checked; refresh(); });
    function onKey(ev) {
      if (ev.key === "Escape" && state.pinned) { state.pinned = null; refresh(); }
    }
    function onResize() { drawLinks(); drawMatrix(); }
    document.addEventListener("keydown", onKey);
    window.addEventListener("resize", onResize);
    root._caDispose = function () {
      document.removeEventListener("keydown", onKey);
      window.removeEventListener("resize", onResize);
    };

    setView("tokens");
    root.setAttribute("data-ready", "1");
    return {
      state: state,
      matrix: matrix,
      setView: setView,
      setLayer: function (l) { layerSel.value = String(l); state.layer = l; refresh(); },
      setHead: function (h) { headSel.value = String(h); state.head = h; refresh(); },
    };
  }

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
})();
