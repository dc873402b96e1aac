/* maps.js: the weights of one example, dequantised on demand, with layer and head means. */
function makeMaps(data) {
  var L = data.L, S = data.S, H = data.heads, NL = data.layers.length, LS = L * S;
  var q = decode(data.data, data.bits);
  var qmax = data.bits === 16 ? 65535 : 255;
  var cache = {};

  // The (L, S) map of one layer and head; -1 means the mean over layers / heads.
  return function matrix(layer, head) {
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
  };
}
