/* image.js: the image of one viewer `v`, a token's map drawn over it, and the object's box.
 *
 * The image's patches are one side of the (L, S) map: the rows (v.patches "target": an image
 * reading a prompt) or the columns (v.patches "source": a question's tokens reading the image).
 * A token of the other side draws its map over the patches; a patch outlines itself. */
function buildImage(v) {
  var gh = v.img.grid[0], gw = v.img.grid[1];
  var wrap = el("div", "ca-row ca-row-image", v.els.tokView);
  el("div", "ca-row-label", wrap).textContent = "Image";
  var canvas = el("canvas", "ca-image-canvas", wrap);
  canvas.title = "image patches: hover a patch to see the tokens that attend to it";
  var img = new Image();
  img.onload = function () { drawImage(v); };
  img.src = v.img.src;
  v.els.imgCanvas = canvas;
  v.els.imgEl = img;
  canvas.addEventListener("mousemove", function (ev) {
    var r = canvas.getBoundingClientRect();
    var c = Math.floor(((ev.clientX - r.left) / r.width) * gw);
    var rr = Math.floor(((ev.clientY - r.top) / r.height) * gh);
    if (c < 0 || c >= gw || rr < 0 || rr >= gh) return;
    var p = rr * gw + c, h = v.state.hover;
    if (!h || h.i !== p || h.side !== v.patches) v.setHover({ side: v.patches, i: p });
  });
  canvas.addEventListener("mouseleave", function () { v.setHover(null); });
  canvas.addEventListener("click", function () { if (v.state.hover) v.togglePin(v.state.hover); });
}

// The map of token `a` over the patches (length gh * gw), or null when `a` is no such token.
function tokenMap(v, M, a) {
  if (!a || a.side === v.patches) return null;
  var P = v.img.grid[0] * v.img.grid[1], S = v.S, out = new Float32Array(P), p;
  if (v.patches === "source") for (p = 0; p < P; p++) out[p] = M[a.i * S + p];
  else for (p = 0; p < P; p++) out[p] = M[p * S + a.i];
  return out;
}

// Draw `values` over the patches of a w x h picture, each scaled to the map's own maximum.
function drawOverlay(v, ctx, values, w, h) {
  var top = 0, peak = 0, P = values.length, scaled = new Float32Array(P), p;
  for (p = 0; p < P; p++) if (values[p] > top) { top = values[p]; peak = p; }
  for (p = 0; p < P; p++) scaled[p] = top > 0 ? values[p] / top : 0;
  var off = paintGrid(scaled, v.img.grid[1], v.img.grid[0], v.lut, function (x) {
    return Math.round(215 * Math.sqrt(x));
  });
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(off, 0, 0, w, h);
  return peak;
}

function drawBox(v, ctx, k) {
  var b = v.img.box;
  if (!b) return;
  ctx.save();
  ctx.setLineDash([6, 3]);
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#fff";
  ctx.strokeRect(b[0] * k, b[1] * k, (b[2] - b[0]) * k, (b[3] - b[1]) * k);
  ctx.lineDashOffset = 6;
  ctx.strokeStyle = "#111";
  ctx.strokeRect(b[0] * k, b[1] * k, (b[2] - b[0]) * k, (b[3] - b[1]) * k);
  ctx.restore();
}

function drawImage(v) {
  var canvas = v.els.imgCanvas, img = v.els.imgEl;
  if (!canvas || !img.complete || !img.naturalWidth || v.state.view !== "tokens") return;
  var gh = v.img.grid[0], gw = v.img.grid[1];
  var k = Math.min(1, 440 / Math.max(img.naturalWidth, img.naturalHeight)) || 1;
  if (img.naturalWidth * k < 320) k = 320 / img.naturalWidth;
  var w = Math.round(img.naturalWidth * k), h = Math.round(img.naturalHeight * k);
  var dpr = window.devicePixelRatio || 1;
  canvas.width = w * dpr; canvas.height = h * dpr;
  canvas.style.width = w + "px"; canvas.style.height = h + "px";
  var ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  var a = v.active(), values = tokenMap(v, v.current(), a);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, h);
  ctx.globalAlpha = values ? 0.5 : 1;  // fade the image under a token's attention
  ctx.drawImage(img, 0, 0, w, h);
  ctx.globalAlpha = 1;
  canvas.setAttribute("data-overlay", values ? a.side + ":" + a.i : "");
  canvas.removeAttribute("data-peak");
  if (values) {
    canvas.setAttribute("data-peak", String(drawOverlay(v, ctx, values, w, h)));
  } else if (a) {
    var pr = Math.floor(a.i / gw), pc = a.i % gw;
    ctx.strokeStyle = "#111";
    ctx.lineWidth = 2;
    ctx.strokeRect(pc * w / gw, pr * h / gh, w / gw, h / gh);
  }
  drawBox(v, ctx, w / img.naturalWidth);
  canvas.setAttribute("data-box", v.img.box ? v.img.box.join(",") : "");
}
