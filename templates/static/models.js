// Model registry pages: confirm before archive / roll back, and the model card's
// Markdown drawn as simple HTML (headings, lists, tables, bold, code) with text nodes
// only, so nothing in a card can run as markup. Without JavaScript the card stays
// preformatted text.
(function () {
  "use strict";

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (e) {
      if (!window.confirm(form.getAttribute("data-confirm"))) e.preventDefault();
    });
  });

  // Appends `text` to `parent`, turning **bold** and `code` into elements.
  function inline(parent, text) {
    var re = /(\*\*[^*]+\*\*|`[^`]+`)/g;
    var last = 0, m;
    while ((m = re.exec(text)) !== null) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      var token = m[0];
      var el = document.createElement(token[0] === "`" ? "code" : "strong");
      el.textContent = token[0] === "`" ? token.slice(1, -1) : token.slice(2, -2);
      parent.appendChild(el);
      last = m.index + token.length;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function cells(line) {
    return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map(function (c) { return c.trim(); });
  }

  function render(source) {
    var out = document.createDocumentFragment();
    var lines = source.replace(/\r\n/g, "\n").split("\n");
    var i = 0;
    while (i < lines.length) {
      var line = lines[i];
      var heading = /^(#{1,6})\s+(.*)$/.exec(line);
      if (heading) {
        var h = document.createElement("h" + Math.min(6, heading[1].length + 2));
        inline(h, heading[2]);
        out.appendChild(h);
        i++;
      } else if (/^\s*\|/.test(line)) {
        var table = document.createElement("table");
        var rows = [];
        while (i < lines.length && /^\s*\|/.test(lines[i])) rows.push(lines[i++]);
        rows.forEach(function (row, n) {
          if (/^\s*\|[\s:|-]+\|\s*$/.test(row)) return; // the separator line
          var tr = document.createElement("tr");
          cells(row).forEach(function (c) {
            var cell = document.createElement(n === 0 ? "th" : "td");
            inline(cell, c);
            tr.appendChild(cell);
          });
          table.appendChild(tr);
        });
        out.appendChild(table);
      } else if (/^\s*[-*]\s+/.test(line)) {
        var ul = document.createElement("ul");
        while (i < lines.length && /^\s*[-*]\s+/.test(lines[i])) {
          var li = document.createElement("li");
          inline(li, lines[i].replace(/^\s*[-*]\s+/, ""));
          ul.appendChild(li);
          i++;
        }
        out.appendChild(ul);
      } else if (/^```/.test(line)) {
        var pre = document.createElement("pre");
        var body = [];
        i++;
        while (i < lines.length && !/^```/.test(lines[i])) body.push(lines[i++]);
        i++;
        pre.textContent = body.join("\n");
        out.appendChild(pre);
      } else if (line.trim() === "") {
        i++;
      } else {
        var p = document.createElement("p");
        var para = [];
        while (i < lines.length && lines[i].trim() !== "" && !/^(#|\s*\||\s*[-*]\s|```)/.test(lines[i])) para.push(lines[i++]);
        inline(p, para.join(" "));
        out.appendChild(p);
      }
    }
    return out;
  }

  document.querySelectorAll("[data-markdown]").forEach(function (el) {
    var source = el.textContent;
    el.textContent = "";
    el.appendChild(render(source));
    el.classList.add("rendered");
  });
})();
