// Blueprint pages. The assembly page builds a blueprint without code: the blueprint (a
// plain object, `spec`) is the one source of truth; the column table, the settings, and the
// JSON and YAML views are drawn from it and write back into it. Every change is checked
// on the server (debounced POST /api/v1/blueprints/validate) and each error is shown beside
// the element whose `data-error-for` matches the error's field (`outputs[0].decoder.module`),
// or of its nearest parent field; anything left over is listed under "Check".
(function () {
  "use strict";

  // The list page: confirm deletions.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (e) {
      if (!window.confirm(form.dataset.confirm)) e.preventDefault();
    });
  });

  var root = document.getElementById("assembly");
  if (!root) return;

  var catalog = JSON.parse(document.getElementById("catalog-data").textContent);
  var T = JSON.parse(document.getElementById("i18n-data").textContent);
  var spec = JSON.parse(document.getElementById("spec-data").textContent);
  var csrf = root.dataset.csrf;
  var canWrite = root.dataset.canWrite === "true";
  var blueprintId = root.dataset.blueprintId || null;

  var els = {
    name: document.getElementById("bp-name"),
    description: document.getElementById("bp-description"),
    dataset: document.getElementById("bp-dataset"),
    columns: document.querySelector("#columns tbody"),
    model: document.getElementById("model-settings"),
    lora: document.getElementById("lora-settings"),
    targets: document.getElementById("lora-targets"),
    training: document.getElementById("training-settings"),
    status: document.getElementById("check-status"),
    other: document.getElementById("other-errors"),
    estimate: document.getElementById("estimate"),
    estimateSummary: document.getElementById("estimate-summary"),
    estimateDetail: document.getElementById("estimate-detail"),
    json: document.getElementById("bp-json"),
    yaml: document.getElementById("bp-yaml"),
    file: document.getElementById("bp-file"),
    textError: document.getElementById("text-error"),
    save: document.getElementById("save"),
    saveStatus: document.getElementById("save-status"),
    start: document.getElementById("start"),
    startReason: document.getElementById("start-reason"),
    startVersion: document.getElementById("start-version"),
  };

  function t(key, vars) {
    var s = T[key] !== undefined ? T[key] : key;
    return s.replace(/\{(\w+)\}/g, function (_, k) {
      return vars && vars[k] !== undefined ? vars[k] : "";
    });
  }
  function clone(v) { return JSON.parse(JSON.stringify(v)); }
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "value") e.value = attrs[k];
      else if (attrs[k] !== undefined && attrs[k] !== null && attrs[k] !== false) e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  function errorSlot(field) { return el("span", { "class": "field-error", "data-error-for": field }); }
  function modules(kind) { return catalog.modules.filter(function (m) { return m.kind === kind; }); }
  function moduleById(id) { return catalog.modules.find(function (m) { return m.id === id; }); }
  function settingSpec(field) { return catalog.settings.find(function (s) { return s.field === field; }); }

  // ---- the blueprint ----

  function normalise(s) {
    if (!s || typeof s !== "object" || Array.isArray(s)) s = {};
    if (typeof s.name !== "string") s.name = "";
    if (!Array.isArray(s.inputs)) s.inputs = [];
    if (!Array.isArray(s.outputs)) s.outputs = [];
    return s;
  }
  spec = normalise(spec);
  if (!spec.fusion) spec.fusion = { kind: "concat" };
  if (!spec.adaptation) spec.adaptation = { method: "lora" };

  function getPath(obj, path) {
    return path.split(".").reduce(function (o, k) { return o && o[k] !== undefined ? o[k] : undefined; }, obj);
  }
  function setPath(obj, path, value) {
    var keys = path.split(".");
    var parents = [];
    var o = obj;
    for (var i = 0; i < keys.length - 1; i++) {
      if (!o[keys[i]] || typeof o[keys[i]] !== "object") o[keys[i]] = {};
      parents.push([o, keys[i]]);
      o = o[keys[i]];
    }
    var last = keys[keys.length - 1];
    if (value === undefined) delete o[last]; else o[last] = value;
    // Drop objects left empty (an unset early_stopping is the default, not `{}`).
    for (var j = parents.length - 1; j >= 0; j--) {
      var p = parents[j][0], k = parents[j][1];
      if (p[k] && typeof p[k] === "object" && Object.keys(p[k]).length === 0 && k !== "training") delete p[k];
    }
  }

  // ---- dataset columns ----

  var columns = []; // [{name, type, modality}]
  var versionId = els.dataset.value || null;

  function loadColumns() {
    versionId = els.dataset.value || null;
    els.startVersion.value = versionId || "";
    var option = els.dataset.selectedOptions[0];
    if (!versionId || !option || !option.dataset.dataset) {
      columns = [];
      return Promise.resolve();
    }
    return fetch("/api/v1/datasets/" + option.dataset.dataset + "/versions/" + option.dataset.version, {
      credentials: "same-origin",
    })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (v) {
        columns = ((v.profile && v.profile.columns) || []).map(function (c) {
          return { name: c.name, type: c.type, modality: c.modality || null };
        });
      })
      .catch(function () { columns = []; });
  }

  function modalityOf(column) {
    if (!column) return "text";
    if (column.type === "file") return column.modality || "image";
    if (column.type === "number") return "tabular";
    return "text";
  }
  function taskFor(column) {
    if (!column) return "classification";
    return { number: "regression", multi_label: "multi_label" }[column.type] || "classification";
  }
  function encoderFor(modality) {
    var e = modules("encoder").find(function (m) { return m.modality === modality; });
    return e ? e.id : "";
  }
  function decoderFor(task) {
    var d = modules("decoder").find(function (m) { return m.tasks.indexOf(task) >= 0; });
    return d ? d.id : "";
  }

  // ---- drawing the form ----

  function paramInputs(prefix, ref, module) {
    var wrap = el("div", { "class": "params" });
    (module ? module.params : []).forEach(function (p) {
      var field = prefix + "." + p.name;
      var value = ref[p.name];
      var input;
      if (p.type === "choice") {
        input = el("select", {}, p.options.map(function (o) {
          return el("option", { value: o, text: o + (o === p.default ? " ✓" : "") });
        }));
        input.value = value !== undefined ? value : p.default;
      } else if (p.type === "integer" || p.type === "number") {
        input = el("input", {
          type: "number", min: p.min, max: p.max, step: p.type === "integer" ? 1 : "any",
          placeholder: String(p.default), value: value !== undefined ? value : "",
        });
      } else if (p.type === "boolean") {
        input = el("input", { type: "checkbox" });
        input.checked = value !== undefined ? !!value : p.default;
      } else {
        input = el("input", { type: "text", value: value !== undefined ? value : "", placeholder: p.default || "" });
      }
      input.dataset.field = field;
      input.title = p.description;
      input.addEventListener("change", function () {
        var v;
        if (p.type === "integer") v = input.value === "" ? undefined : parseInt(input.value, 10);
        else if (p.type === "number") v = input.value === "" ? undefined : Number(input.value);
        else if (p.type === "boolean") v = input.checked;
        else if (p.type === "choice") v = input.value === p.default ? undefined : input.value;
        else v = input.value === "" ? undefined : input.value;
        if (v === undefined) delete ref[p.name]; else ref[p.name] = v;
        changed();
      });
      wrap.appendChild(el("label", {}, [
        document.createTextNode(t("param_" + p.name) === "param_" + p.name ? p.name : t("param_" + p.name)),
        input, errorSlot(field),
      ]));
    });
    return wrap;
  }

  function moduleSelect(field, options, value, onChange) {
    var select = el("select", { "data-field": field }, options.map(function (m) {
      return el("option", { value: m.id, text: m.title + " (" + m.id + ")" });
    }));
    if (value && !options.some(function (m) { return m.id === value; })) {
      // Keep what the blueprint names, so the compiler's message (and suggestion) shows.
      select.appendChild(el("option", { value: value, text: value }));
    }
    select.value = value || "";
    select.addEventListener("change", function () { onChange(select.value); });
    return select;
  }

  function roleSelect(name, role) {
    var select = el("select", { "aria-label": t("use_as") }, [
      el("option", { value: "none", text: t("not_used") }),
      el("option", { value: "input", text: t("as_input") }),
      el("option", { value: "output", text: t("as_output") }),
    ]);
    select.value = role;
    select.addEventListener("change", function () { setRole(name, select.value); });
    return select;
  }

  function setRole(name, role) {
    var column = columns.find(function (c) { return c.name === name; });
    spec.inputs = spec.inputs.filter(function (i) { return i.name !== name; });
    spec.outputs = spec.outputs.filter(function (o) { return o.name !== name; });
    if (role === "input") {
      var modality = modalityOf(column);
      spec.inputs.push({ name: name, modality: modality, encoder: { module: encoderFor(modality) } });
    } else if (role === "output") {
      var task = taskFor(column);
      spec.outputs.push({ name: name, task: task, decoder: { module: decoderFor(task) } });
    }
    changed(true);
  }

  function rename(kind, index, to) {
    spec[kind][index].name = to;
    changed(true);
  }

  function inputCell(i) {
    var input = spec.inputs[i];
    var at = "inputs[" + i + "]";
    if (!input.encoder || typeof input.encoder !== "object") input.encoder = { module: "" };
    var modality = el("select", { "data-field": at + ".modality" },
      ["text", "image", "audio", "video", "sensor", "pointcloud", "tabular"].map(function (m) {
        return el("option", { value: m, text: m });
      }));
    modality.value = input.modality;
    modality.addEventListener("change", function () {
      input.modality = modality.value;
      input.encoder = { module: encoderFor(modality.value) };
      changed(true);
    });
    var fits = modules("encoder").filter(function (m) { return m.modality === input.modality; });
    var encoder = moduleSelect(at + ".encoder.module", fits, input.encoder.module, function (v) {
      input.encoder = { module: v };
      changed(true);
    });
    return el("div", {}, [
      el("label", {}, [document.createTextNode(t("modality")), modality, errorSlot(at + ".modality")]),
      el("label", {}, [document.createTextNode(t("encoder")), encoder, errorSlot(at + ".encoder.module")]),
      paramInputs(at + ".encoder", input.encoder, moduleById(input.encoder.module)),
      errorSlot(at + ".encoder"),
    ]);
  }

  function outputCell(i) {
    var output = spec.outputs[i];
    var at = "outputs[" + i + "]";
    if (!output.decoder || typeof output.decoder !== "object") output.decoder = { module: "" };
    var task = el("select", { "data-field": at + ".task" },
      ["classification", "multi_label", "regression", "tagging"].map(function (k) {
        return el("option", { value: k, text: t("task_" + k) });
      }));
    if (["classification", "multi_label", "regression", "tagging"].indexOf(output.task) < 0) {
      task.appendChild(el("option", { value: output.task, text: output.task }));
    }
    task.value = output.task;
    task.addEventListener("change", function () {
      output.task = task.value;
      var current = moduleById(output.decoder.module);
      if (!current || current.tasks.indexOf(task.value) < 0) output.decoder = { module: decoderFor(task.value) };
      changed(true);
    });
    var fits = modules("decoder").filter(function (m) { return m.tasks.indexOf(output.task) >= 0; });
    var decoder = moduleSelect(at + ".decoder.module", fits, output.decoder.module, function (v) {
      output.decoder = { module: v };
      changed(true);
    });
    return el("div", {}, [
      el("label", {}, [document.createTextNode(t("task")), task, errorSlot(at + ".task")]),
      el("label", {}, [document.createTextNode(t("decoder")), decoder, errorSlot(at + ".decoder.module")]),
      paramInputs(at + ".decoder", output.decoder, moduleById(output.decoder.module)),
      errorSlot(at + ".decoder"),
    ]);
  }

  function drawColumns() {
    els.columns.textContent = "";
    var used = {};
    spec.inputs.forEach(function (i) { used[i.name] = true; });
    spec.outputs.forEach(function (o) { used[o.name] = true; });
    // Columns the blueprint reads that the dataset lacks: say which column to map.
    var known = {};
    columns.forEach(function (c) { known[c.name] = true; });
    ["inputs", "outputs"].forEach(function (kind) {
      spec[kind].forEach(function (item, i) {
        if (known[item.name]) return;
        var at = kind + "[" + i + "]";
        var cell = [];
        if (columns.length) {
          var choose = el("select", { "aria-label": t("choose_column") }, [el("option", { value: "", text: t("choose_column") })]
            .concat(columns.filter(function (c) { return !used[c.name]; }).map(function (c) {
              return el("option", { value: c.name, text: c.name + " (" + t("type_" + c.type) + ")" });
            })));
          choose.addEventListener("change", function () { if (choose.value) rename(kind, i, choose.value); });
          cell.push(el("p", { "class": "missing-note", text: t("missing_column", { name: item.name }) }), choose);
        } else {
          cell.push(el("p", { "class": "hint", text: t("no_dataset_columns") }));
        }
        cell.push(errorSlot(at + ".name"));
        els.columns.appendChild(el("tr", { "class": "missing" }, [
          el("td", {}, [el("strong", { "class": "mono", text: item.name })]),
          el("td", {}, cell),
          el("td", { text: kind === "inputs" ? t("as_input") : t("as_output") }),
          el("td", {}, [kind === "inputs" ? inputCell(i) : outputCell(i)]),
        ]));
      });
    });
    columns.forEach(function (c) {
      var i = spec.inputs.findIndex(function (x) { return x.name === c.name; });
      var o = spec.outputs.findIndex(function (x) { return x.name === c.name; });
      var role = i >= 0 ? "input" : o >= 0 ? "output" : "none";
      var at = i >= 0 ? "inputs[" + i + "]" : o >= 0 ? "outputs[" + o + "]" : null;
      els.columns.appendChild(el("tr", {}, [
        el("td", {}, [el("span", { "class": "mono", text: c.name })]),
        el("td", { text: t("type_" + c.type) + (c.modality ? " · " + c.modality : "") }),
        el("td", {}, [roleSelect(c.name, role), at ? errorSlot(at + ".name") : null]),
        el("td", {}, [i >= 0 ? inputCell(i) : o >= 0 ? outputCell(o) : null]),
      ]));
    });
  }

  function settingInput(s) {
    var value = getPath(spec, s.field);
    var input;
    if (s.type === "choice") {
      var options = s.auto ? [el("option", { value: "", text: t("auto") })] : [];
      input = el("select", {}, options.concat(s.options.map(function (o) {
        return el("option", { value: o, text: o + (!s.auto && o === s.default ? " ✓" : "") });
      })));
      input.value = value !== undefined ? value : s.auto ? "" : s.default;
    } else {
      input = el("input", {
        type: "number", min: s.min, max: s.max, step: s.type === "integer" ? 1 : "any",
        placeholder: s.auto ? t("auto") : String(s.default), value: value !== undefined ? value : "",
      });
    }
    input.dataset.field = s.field;
    input.addEventListener("change", function () {
      var v;
      if (input.value === "") v = undefined;
      else if (s.type === "integer") v = parseInt(input.value, 10);
      else if (s.type === "number") v = Number(input.value);
      else v = input.value;
      if (s.type === "choice" && !s.auto && v === s.default && getPath(spec, s.field) === undefined) v = undefined;
      setPath(spec, s.field, v);
      changed(s.field === "adaptation.method");
    });
    var label = T["setting." + s.field] || s.field;
    return el("label", {}, [
      document.createTextNode(label), el("span", { "class": "setting-help", text: T["help." + s.field] || s.description }),
      input, errorSlot(s.field),
    ]);
  }

  function drawSettings() {
    els.model.textContent = "";
    var fusion = el("select", { "data-field": "fusion.kind" }, modules("fusion").map(function (m) {
      return el("option", { value: m.id, text: m.title });
    }));
    var kind = spec.fusion && spec.fusion.kind;
    if (kind && !moduleById(kind)) fusion.appendChild(el("option", { value: kind, text: kind }));
    fusion.value = kind || "concat";
    fusion.addEventListener("change", function () { spec.fusion = { kind: fusion.value }; changed(); });
    els.model.appendChild(el("label", {}, [document.createTextNode(t("fusion")), fusion, errorSlot("fusion.kind")]));
    els.model.appendChild(el("label", {}, [
      document.createTextNode(T["setting.adaptation.method"] || "adaptation.method"),
      (function () {
        var s = settingSpec("adaptation.method");
        var select = el("select", { "data-field": "adaptation.method" }, s.options.map(function (o) {
          return el("option", { value: o, text: t("method_" + o) });
        }));
        select.value = getPath(spec, "adaptation.method") || s.default;
        select.addEventListener("change", function () { setPath(spec, "adaptation.method", select.value); changed(true); });
        return select;
      })(),
      errorSlot("adaptation.method"),
    ]));

    els.lora.textContent = "";
    els.training.textContent = "";
    var lora = (getPath(spec, "adaptation.method") || "lora") === "lora";
    catalog.settings.forEach(function (s) {
      if (s.field === "adaptation.method") return;
      if (s.field.indexOf("adaptation.") === 0) {
        if (lora) els.lora.appendChild(settingInput(s));
      } else {
        els.training.appendChild(settingInput(s));
      }
    });

    // LoRA targets: the layers of the (first) encoder, its defaults checked when unset.
    els.targets.textContent = "";
    var first = spec.inputs[0] && spec.inputs[0].encoder && moduleById(spec.inputs[0].encoder.module);
    var encoder = first || modules("encoder")[0];
    var chosen = getPath(spec, "adaptation.targets");
    var shown = encoder.lora_targets.slice();
    (chosen || []).forEach(function (x) { if (shown.indexOf(x) < 0) shown.push(x); });
    els.targets.parentNode.hidden = !lora;
    shown.forEach(function (name, index) {
      var box = el("input", { type: "checkbox", value: name, "data-field": "adaptation.targets[" + index + "]" });
      box.checked = (chosen || encoder.default_lora_targets).indexOf(name) >= 0;
      box.addEventListener("change", function () {
        var picked = Array.prototype.slice.call(els.targets.querySelectorAll("input:checked")).map(function (b) { return b.value; });
        setPath(spec, "adaptation.targets", picked);
        changed();
      });
      els.targets.appendChild(el("label", {}, [box, el("span", { "class": "mono", text: name })]));
      els.targets.appendChild(errorSlot("adaptation.targets[" + index + "]"));
    });
  }

  function drawText() {
    if (document.activeElement !== els.json) els.json.value = JSON.stringify(spec, null, 2);
  }

  function drawForm() {
    if (document.activeElement !== els.name) els.name.value = spec.name || "";
    if (document.activeElement !== els.description) els.description.value = spec.description || "";
    drawColumns();
    drawSettings();
    drawText();
    showErrors(lastErrors);
  }

  // ---- validation ----

  var lastResult = null;
  var lastErrors = [];
  var sequence = 0;
  var timer = null;
  var savedText = blueprintId ? JSON.stringify(spec) : null;

  function changed(redraw) {
    if (redraw) drawForm(); else drawText();
    lastResult = null;
    updateStart();
    schedule();
  }

  function schedule(delay) {
    clearTimeout(timer);
    els.status.textContent = t("checking");
    els.status.className = "hint";
    timer = setTimeout(function () { validate(spec); }, delay === undefined ? 400 : delay);
  }

  function post(url, body, method) {
    return fetch(url, {
      method: method || "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    }).then(function (r) {
      return r.text().then(function (text) {
        var json = null;
        try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
        return { status: r.status, ok: r.ok, body: json };
      });
    });
  }

  // `source` is the blueprint object, or YAML/JSON text typed or uploaded.
  function validate(source) {
    var mine = ++sequence;
    return post("/api/v1/blueprints/validate", { spec: source, dataset_version_id: versionId })
      .then(function (r) {
        if (mine !== sequence) return;
        if (r.ok) {
          lastResult = r.body;
          if (typeof source === "string") {
            // Text was the source: the form follows it.
            spec = normalise(r.body.blueprint);
            drawForm();
          }
          if (document.activeElement !== els.yaml) els.yaml.value = r.body.yaml;
          els.textError.hidden = true;
          showErrors(r.body.errors);
          showEstimate(r.body.estimate);
        } else {
          lastResult = null;
          var e = (r.body && r.body.error) || { field: "spec", message: String(r.status) };
          if (e.field === "spec") {
            els.textError.textContent = e.message;
            els.textError.hidden = false;
          }
          showErrors(e.details && e.details.length ? e.details : [{ field: e.field || "", message: e.message }]);
          showEstimate(null);
        }
        updateStart();
      })
      .catch(function (err) {
        if (mine !== sequence) return;
        els.status.textContent = t("request_failed", { message: String(err) });
      });
  }

  // The element for `field`, or for its nearest parent (`a.b[2].c` → `a.b[2]` → `a.b` → `a`).
  function slotFor(field) {
    var f = field;
    while (f) {
      var slot = root.querySelector('[data-error-for="' + CSS.escape(f) + '"]');
      if (slot) return slot;
      var cut = Math.max(f.lastIndexOf("."), f.lastIndexOf("["));
      f = cut > 0 ? f.slice(0, cut) : "";
    }
    return null;
  }

  function showErrors(errors) {
    lastErrors = errors || [];
    root.querySelectorAll(".field-error").forEach(function (s) { s.textContent = ""; });
    root.querySelectorAll('[aria-invalid="true"]').forEach(function (e) { e.removeAttribute("aria-invalid"); });
    els.other.textContent = "";
    lastErrors.forEach(function (e) {
      var slot = slotFor(e.field);
      var control = root.querySelector('[data-field="' + CSS.escape(e.field) + '"]');
      if (control) control.setAttribute("aria-invalid", "true");
      if (slot) {
        slot.textContent = (slot.textContent ? slot.textContent + " " : "") + e.message;
      } else {
        els.other.appendChild(el("li", {}, [
          el("span", { "class": "mono", text: (e.field || "spec") + ": " }), document.createTextNode(e.message),
        ]));
      }
    });
    if (!lastErrors.length && lastResult) {
      els.status.textContent = t("valid");
      els.status.className = "ok";
    } else if (lastErrors.length) {
      els.status.textContent = t("problems", { n: lastErrors.length });
      els.status.className = "error";
    }
  }

  function duration(seconds) {
    var s = Math.max(1, Math.round(seconds));
    if (s < 90) return t("seconds", { n: s });
    var m = Math.round(s / 60);
    if (m < 90) return t("minutes", { n: m });
    return t("hours", { h: Math.floor(m / 60), m: m % 60 });
  }
  function bytes(n) {
    var mib = n / (1024 * 1024);
    return mib < 1024 ? Math.round(mib) + " MiB" : (mib / 1024).toFixed(1) + " GiB";
  }

  function showEstimate(e) {
    if (!e) {
      els.estimate.hidden = !versionId ? false : true;
      if (!versionId) {
        els.estimateSummary.textContent = "";
        els.estimateDetail.textContent = t("estimate_none");
      }
      return;
    }
    els.estimate.hidden = false;
    els.estimateSummary.textContent = t("estimate_summary", {
      time: duration(e.total_seconds), memory: bytes(e.peak_memory_bytes),
    });
    els.estimateDetail.textContent = t("estimate_detail", {
      baseline: duration(e.baseline_seconds), tuned: duration(e.tuned_seconds),
      evaluation: duration(e.evaluation_seconds), train: e.train_rows, validation: e.validation_rows,
      test: e.test_rows, epochs: e.epochs, steps: e.steps_per_epoch, tokens: e.tokens_per_row,
    });
  }

  // ---- saving and starting ----

  function dirty() { return savedText !== JSON.stringify(spec); }

  function updateStart() {
    var reason = "";
    if (!canWrite) reason = t("reason_viewer");
    else if (!versionId) reason = t("reason_no_dataset");
    else if (!lastResult) reason = t("reason_checking");
    else if (!lastResult.valid) reason = t("reason_errors");
    else if (!blueprintId || dirty()) reason = t("reason_unsaved");
    els.start.disabled = reason !== "";
    els.startReason.textContent = reason;
    if (els.saveStatus && blueprintId && dirty() && !els.saveStatus.dataset.busy) els.saveStatus.textContent = t("unsaved");
  }

  if (els.save) {
    els.save.addEventListener("click", function () {
      els.saveStatus.textContent = t("saving");
      els.saveStatus.dataset.busy = "1";
      var body = { spec: spec, dataset_version_id: versionId };
      var request = blueprintId
        ? post("/api/v1/blueprints/" + blueprintId, body, "PUT")
        : post("/api/v1/blueprints", body);
      request.then(function (r) {
        delete els.saveStatus.dataset.busy;
        if (r.status === 201) {
          window.location.href = "/blueprints/" + r.body.id + (versionId ? "?dataset_version_id=" + versionId : "");
          return;
        }
        if (r.ok) {
          savedText = JSON.stringify(spec);
          els.saveStatus.textContent = t("saved");
          updateStart();
          return;
        }
        var e = (r.body && r.body.error) || { message: String(r.status) };
        els.saveStatus.textContent = t("save_failed", { message: e.message });
        if (e.field) showErrors(e.details && e.details.length ? e.details : [{ field: e.field, message: e.message }]);
      }).catch(function (err) {
        delete els.saveStatus.dataset.busy;
        els.saveStatus.textContent = t("save_failed", { message: String(err) });
      });
    });
  }

  document.getElementById("start-form").addEventListener("submit", function (e) {
    if (els.start.disabled) { e.preventDefault(); return; }
    els.startVersion.value = versionId || "";
    // One submission per rendering: the idempotency key makes a second one the same job.
    setTimeout(function () { els.start.disabled = true; }, 0);
  });

  // ---- events ----

  els.name.addEventListener("input", function () { spec.name = els.name.value; changed(); });
  els.description.addEventListener("input", function () {
    if (els.description.value) spec.description = els.description.value; else delete spec.description;
    changed();
  });
  els.dataset.addEventListener("change", function () {
    loadColumns().then(function () { changed(true); });
  });

  document.querySelectorAll("[data-preset]").forEach(function (button) {
    button.addEventListener("click", function () {
      var preset = catalog.presets.find(function (p) { return p.id === button.dataset.preset; });
      if (!preset) return;
      var name = spec.name;
      spec = normalise(clone(preset.blueprint));
      if (blueprintId && name) spec.name = name;
      changed(true);
    });
  });

  var jsonTimer = null;
  els.json.addEventListener("input", function () {
    clearTimeout(jsonTimer);
    jsonTimer = setTimeout(function () {
      var parsed;
      try {
        parsed = JSON.parse(els.json.value);
      } catch (err) {
        els.textError.textContent = t("json_invalid", { message: err.message });
        els.textError.hidden = false;
        return;
      }
      els.textError.hidden = true;
      spec = normalise(parsed);
      drawForm();
      lastResult = null;
      updateStart();
      schedule(0);
    }, 300);
  });

  var yamlTimer = null;
  function fromText(text) {
    clearTimeout(timer);
    lastResult = null;
    updateStart();
    els.status.textContent = t("checking");
    validate(text);
  }
  els.yaml.addEventListener("input", function () {
    clearTimeout(yamlTimer);
    yamlTimer = setTimeout(function () { fromText(els.yaml.value); }, 500);
  });

  els.file.addEventListener("change", function () {
    var file = els.file.files[0];
    if (!file) return;
    file.text().then(function (text) {
      var yaml = !text.trim().startsWith("{");
      showTab(yaml ? "yaml" : "json");
      if (yaml) els.yaml.value = text; else els.json.value = text;
      fromText(text);
    }).catch(function () {
      els.textError.textContent = t("file_failed");
      els.textError.hidden = false;
    });
    els.file.value = "";
  });

  function showTab(name) {
    document.querySelectorAll(".tab").forEach(function (b) {
      b.setAttribute("aria-selected", String(b.dataset.tab === name));
    });
    els.json.hidden = name !== "json";
    els.yaml.hidden = name !== "yaml";
  }
  document.querySelectorAll(".tab").forEach(function (b) {
    b.addEventListener("click", function () { showTab(b.dataset.tab); });
  });

  loadColumns().then(function () {
    drawForm();
    updateStart();
    schedule(0);
  });
})();
