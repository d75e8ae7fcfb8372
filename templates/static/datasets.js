// Dataset pages: upload with drag and drop and a progress bar, and column-type changes.
// Strings come from data-* attributes that the server filled from the i18n catalog.
(function () {
  "use strict";

  // Bar widths come from data-percent: the page's CSP allows no style="…" attributes.
  document.querySelectorAll(".bar > span[data-percent]").forEach(function (bar) {
    var percent = Math.max(0, Math.min(100, Number(bar.getAttribute("data-percent")) || 0));
    bar.style.width = percent + "%";
  });

  function el(tag, text) {
    var node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Renders a 4xx answer: the message, then the row errors (where, column, reason) if any.
  function showErrors(box, dataset, status, body) {
    box.hidden = false;
    box.textContent = "";
    var error = (body && body.error) || {};
    box.appendChild(el("p", error.message || dataset.msgFailed + " (" + status + ")")).className = "error";
    var rows = error.errors || [];
    if (!rows.length) return;
    box.appendChild(el("h3", dataset.msgErrors));
    box.appendChild(el("p", dataset.msgTotal + ": " + error.error_count)).className = "hint";
    var table = el("table");
    table.className = "row-errors";
    var head = el("tr");
    [dataset.colWhere, dataset.colColumn, dataset.colReason].forEach(function (h) { head.appendChild(el("th", h)); });
    table.appendChild(head);
    rows.forEach(function (r) {
      var tr = el("tr");
      var where = [];
      if (r.file) where.push(r.file);
      if (r.line) where.push("#" + r.line);
      tr.appendChild(el("td", where.join(" ")));
      tr.appendChild(el("td", r.column || ""));
      tr.appendChild(el("td", r.message));
      table.appendChild(tr);
    });
    box.appendChild(table);
  }

  function parse(xhr) {
    try { return JSON.parse(xhr.responseText); } catch (e) { return null; }
  }

  var upload = document.getElementById("upload");
  if (upload) {
    var form = document.getElementById("upload-form");
    var input = document.getElementById("dataset-file");
    var nameInput = document.getElementById("dataset-name");
    var zone = document.getElementById("drop-zone");
    var chosen = document.getElementById("chosen-file");
    var bar = document.getElementById("upload-progress");
    var status = document.getElementById("upload-status");
    var errors = document.getElementById("upload-errors");
    var button = document.getElementById("upload-button");
    var file = null;

    function choose(f) {
      file = f;
      chosen.textContent = f ? f.name + " (" + f.size + " B)" : "";
      if (f && !nameInput.value) nameInput.value = f.name.replace(/\.[^.]+$/, "");
    }
    input.addEventListener("change", function () { choose(input.files[0] || null); });
    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (type) {
      zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.remove("over"); });
    });
    zone.addEventListener("drop", function (e) {
      if (e.dataTransfer && e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
    });

    form.addEventListener("submit", function (e) {
      e.preventDefault();
      errors.hidden = true;
      if (!nameInput.value.trim()) { status.textContent = upload.dataset.msgNameRequired; return; }
      if (!file) { status.textContent = upload.dataset.msgFileRequired; return; }
      var xhr = new XMLHttpRequest();
      var url = "/api/v1/datasets?name=" + encodeURIComponent(nameInput.value.trim()) +
        "&file_name=" + encodeURIComponent(file.name);
      xhr.open("POST", url);
      xhr.setRequestHeader("X-CSRF-Token", upload.dataset.csrf);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      bar.hidden = false;
      bar.value = 0;
      button.disabled = true;
      status.textContent = upload.dataset.msgUploading;
      xhr.upload.onprogress = function (ev) {
        if (ev.lengthComputable) {
          bar.value = Math.round(ev.loaded * 100 / ev.total);
          if (ev.loaded >= ev.total) status.textContent = upload.dataset.msgValidating;
        }
      };
      xhr.onload = function () {
        button.disabled = false;
        var body = parse(xhr);
        if (xhr.status === 201 && body) {
          bar.value = 100;
          window.location.href = "/datasets/" + body.dataset_id + "?version=" + body.version.version;
          return;
        }
        bar.hidden = true;
        status.textContent = "";
        showErrors(errors, upload.dataset, xhr.status, body);
      };
      xhr.onerror = function () {
        button.disabled = false;
        bar.hidden = true;
        status.textContent = upload.dataset.msgFailed;
      };
      xhr.send(file);
    });
  }

  var schemaForm = document.getElementById("schema-form");
  if (schemaForm) {
    schemaForm.addEventListener("submit", function (e) {
      e.preventDefault();
      var columns = [];
      schemaForm.querySelectorAll("select").forEach(function (s) {
        if (s.value !== s.dataset.original) columns.push({ name: s.name, type: s.value });
      });
      var box = document.getElementById("schema-errors");
      box.hidden = true;
      var xhr = new XMLHttpRequest();
      xhr.open("PATCH", schemaForm.dataset.url);
      xhr.setRequestHeader("X-CSRF-Token", schemaForm.dataset.csrf);
      xhr.setRequestHeader("Content-Type", "application/json");
      xhr.onload = function () {
        var body = parse(xhr);
        if (xhr.status === 201 && body) {
          window.location.href = "/datasets/" + body.dataset_id + "?version=" + body.version.version;
          return;
        }
        showErrors(box, schemaForm.dataset, xhr.status, body);
      };
      xhr.send(JSON.stringify({ columns: columns }));
    });
  }
})();
