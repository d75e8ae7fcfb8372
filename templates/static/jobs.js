// The job page: follows the job's server-sent events (/api/v1/jobs/{id}/events), keeps
// the state, progress, elapsed and remaining time current, draws the loss and the
// validation-metric curves as plain SVG, and lists every event. No external library.
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root) return;
  var jobId = root.getAttribute("data-job");
  var msg = function (name) { return root.getAttribute("data-msg-" + name) || name; };
  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = { baseline: "#9ca3af", tuned: "#2563eb", validation: "#f59e0b", other: "#10b981" };

  var state = root.getAttribute("data-state");
  var started = root.getAttribute("data-started") ? Date.parse(root.getAttribute("data-started")) : null;
  var finished = root.getAttribute("data-finished") ? Date.parse(root.getAttribute("data-finished")) : null;
  var stepLoss = {};   // phase -> [[step, loss]]
  var epochLoss = {};  // "train"/"validation" -> [[epoch, loss]] (tuned run when there is one)
  var metric = {};     // phase -> [[epoch, value]]
  var metricName = "";
  var lastStep = {};   // phase -> the latest step seen

  function el(id) { return document.getElementById(id); }
  function text(id, value) { var e = el(id); if (e) e.textContent = value; }
  function seconds(s) {
    if (s === null || s === undefined || !isFinite(s)) return "—";
    s = Math.max(0, Math.round(s));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return (h ? h + " h " : "") + (h || m ? m + " min " : "") + r + " s";
  }

  function setState(next) {
    state = next;
    var badge = el("job-state");
    if (badge) {
      badge.textContent = root.getAttribute("data-state-" + next) || next;
      badge.className = "state state-" + next;
    }
    if (next === "running" && !started) started = Date.now();
    if (next === "succeeded" || next === "failed" || next === "cancelled") {
      if (!finished) finished = Date.now();
      var cancel = el("cancel-form");
      if (cancel) cancel.style.display = "none";
      text("job-remaining", "—");
      if (next === "succeeded" && !el("model-version-link")) el("model-version-pending").hidden = false;
    }
  }

  function tick() {
    if (started) text("job-elapsed", seconds(((finished || Date.now()) - started) / 1000));
  }
  setInterval(tick, 1000);

  function push(map, key, point) { (map[key] = map[key] || []).push(point); }

  // A line chart of named series into an <svg viewBox="0 0 480 240">.
  function chart(svg, series, xLabel) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var names = Object.keys(series).filter(function (k) { return series[k].length; });
    var all = [];
    names.forEach(function (k) { all = all.concat(series[k]); });
    all = all.filter(function (p) { return isFinite(p[0]) && isFinite(p[1]); });
    function node(tag, attrs, content) {
      var n = document.createElementNS(SVG, tag);
      Object.keys(attrs).forEach(function (a) { n.setAttribute(a, attrs[a]); });
      if (content !== undefined) n.textContent = content;
      svg.appendChild(n);
      return n;
    }
    if (!all.length) {
      node("text", { x: 240, y: 120, "text-anchor": "middle", "class": "empty" }, msg("no-data"));
      return;
    }
    var L = 48, R = 470, T = 12, B = 208;
    var xs = all.map(function (p) { return p[0]; }), ys = all.map(function (p) { return p[1]; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) { x1 = x0 + 1; }
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    var pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
    var sx = function (x) { return L + (x - x0) / (x1 - x0) * (R - L); };
    var sy = function (y) { return B - (y - y0) / (y1 - y0) * (B - T); };
    node("line", { x1: L, y1: B, x2: R, y2: B, "class": "axis" });
    node("line", { x1: L, y1: T, x2: L, y2: B, "class": "axis" });
    for (var i = 0; i <= 4; i++) {
      var v = y0 + (y1 - y0) * i / 4;
      node("line", { x1: L, y1: sy(v), x2: R, y2: sy(v), "class": "grid" });
      node("text", { x: L - 4, y: sy(v) + 4, "text-anchor": "end", "class": "tick" }, v.toPrecision(3));
    }
    node("text", { x: L, y: B + 16, "class": "tick" }, String(Math.round(x0)));
    node("text", { x: R, y: B + 16, "text-anchor": "end", "class": "tick" }, String(Math.round(x1)));
    node("text", { x: (L + R) / 2, y: B + 28, "text-anchor": "middle", "class": "tick" }, xLabel);
    var legendX = L + 8;
    names.forEach(function (k) {
      var pts = series[k].filter(function (p) { return isFinite(p[0]) && isFinite(p[1]); });
      var color = COLORS[k] || COLORS.other;
      node("polyline", {
        points: pts.map(function (p) { return sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join(" "),
        fill: "none", stroke: color, "stroke-width": 2
      });
      if (pts.length < 30) pts.forEach(function (p) { node("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color }); });
      node("rect", { x: legendX, y: T + 2, width: 10, height: 10, fill: color });
      node("text", { x: legendX + 14, y: T + 11, "class": "legend" }, k);
      legendX += 24 + k.length * 7;
    });
  }

  function redraw() {
    var steps = Object.keys(stepLoss).length ? stepLoss : null;
    if (steps) chart(el("loss-chart"), steps, msg("step"));
    else chart(el("loss-chart"), epochLoss, msg("epoch"));
    chart(el("metric-chart"), metric, msg("epoch"));
    text("metric-name", metricName);
  }

  var progress = {};
  // Keeps the latest epoch, step and phase from step and epoch events alike.
  function progressText(d) {
    ["epoch", "epochs", "step", "total_steps", "phase"].forEach(function (k) {
      if (d[k] !== undefined && d[k] !== null) progress[k] = d[k];
    });
    return describe(progress);
  }

  function describe(d) {
    var parts = [];
    if (d.epoch !== undefined && d.epoch !== null) parts.push(msg("epoch") + " " + d.epoch + (d.epochs ? "/" + d.epochs : ""));
    if (d.step !== undefined && d.step !== null) parts.push(msg("step") + " " + d.step + (d.total_steps ? "/" + d.total_steps : ""));
    if (d.phase) parts.push(d.phase);
    return parts.join(" · ");
  }

  function detail(kind, d) {
    if (kind === "state") return (d.state || "") + (d.reason ? " — " + d.reason : "") + (d.error ? " — " + d.error : "");
    if (kind === "log") return d.message || JSON.stringify(d);
    if (kind === "step") return describe(d) + (isFinite(d.loss) ? " · " + msg("loss") + " " + Number(d.loss).toFixed(4) : "");
    if (kind === "epoch") {
      var s = describe(d);
      if (isFinite(d.train_loss)) s += " · " + msg("train-loss") + " " + Number(d.train_loss).toFixed(4);
      if (isFinite(d.validation_loss)) s += " · " + msg("validation-loss") + " " + Number(d.validation_loss).toFixed(4);
      if (d.metric && isFinite(d.value)) s += " · " + d.metric + " " + Number(d.value).toFixed(4);
      return s;
    }
    if (kind === "checkpoint") return (d.step !== undefined ? msg("step") + " " + d.step : "") + (d.key ? " · " + d.key : "");
    return JSON.stringify(d);
  }

  var logBody = document.querySelector("#event-log tbody");
  function log(event) {
    var tr = document.createElement("tr");
    tr.className = "kind-" + event.kind;
    [new Date(event.at).toLocaleTimeString(), event.kind, detail(event.kind, event.data || {})].forEach(function (c) {
      var td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    });
    logBody.insertBefore(tr, logBody.firstChild);
  }

  var pending = false;
  function later() { if (!pending) { pending = true; setTimeout(function () { pending = false; redraw(); }, 250); } }

  function handle(raw) {
    var event;
    try { event = JSON.parse(raw.data); } catch (e) { return; }
    var d = event.data || {};
    log(event);
    var phase = d.phase || "tuned";
    if (event.kind === "state" && d.state) setState(d.state);
    if (event.kind === "step") {
      if (isFinite(d.step)) lastStep[phase] = Number(d.step);
      if (isFinite(d.loss)) push(stepLoss, phase, [Number(d.step), Number(d.loss)]);
      text("job-progress", progressText(d));
      if (isFinite(d.eta_seconds)) text("job-remaining", seconds(d.eta_seconds));
      if (state === "queued") setState("running");
    }
    if (event.kind === "epoch") {
      if (isFinite(d.value)) push(metric, phase, [Number(d.epoch), Number(d.value)]);
      if (d.metric) metricName = d.metric;
      // Validation loss on the step axis, at the last step of its epoch.
      if (phase !== "baseline" && isFinite(d.validation_loss) && lastStep[phase] !== undefined) {
        push(stepLoss, "validation", [lastStep[phase], Number(d.validation_loss)]);
      }
      if (phase !== "baseline") {
        if (isFinite(d.train_loss)) push(epochLoss, "tuned", [Number(d.epoch), Number(d.train_loss)]);
        if (isFinite(d.validation_loss)) push(epochLoss, "validation", [Number(d.epoch), Number(d.validation_loss)]);
      }
      text("job-progress", progressText(d));
    }
    later();
  }

  redraw();
  if (!window.EventSource) return;
  var source = new EventSource("/api/v1/jobs/" + jobId + "/events");
  ["state", "step", "epoch", "checkpoint", "log"].forEach(function (kind) { source.addEventListener(kind, handle); });
  source.addEventListener("open", function () { if (state !== "succeeded" && state !== "failed" && state !== "cancelled") text("stream-status", msg("live")); });
  source.addEventListener("end", function (e) {
    source.close();
    try { var d = JSON.parse(e.data); if (d.state) setState(d.state); } catch (err) { /* keep the state shown */ }
    text("stream-status", msg("ended"));
    tick();
    // A page drawn while the job ran reloads once, to show what the end brings (the
    // error, the retry button, the model version); a page drawn final never does.
    if (root.getAttribute("data-final") === "false") {
      setTimeout(function () { window.location.reload(); }, 1500);
      return;
    }
    // The error text and the model version link come with the page.
    fetch("/api/v1/jobs/" + jobId, { credentials: "same-origin" }).then(function (r) { return r.ok ? r.json() : null; }).then(function (job) {
      if (!job) return;
      text("job-attempts", job.attempts + "/" + job.max_attempts);
      if (job.error) { var e2 = el("job-error"); e2.textContent = job.error; e2.hidden = false; }
    }).catch(function () {});
  });
  source.addEventListener("error", function () {
    if (source.readyState === EventSource.CLOSED) text("stream-status", msg("lost"));
  });
})();
