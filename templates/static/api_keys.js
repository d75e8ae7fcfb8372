// API key pages: select a newly shown key on focus, confirm before revoking. Handlers are
// attached here because the page's CSP runs no inline event handlers.
(function () {
  "use strict";

  document.querySelectorAll("[data-select-on-focus]").forEach(function (input) {
    input.addEventListener("focus", function () { input.select(); });
  });

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (e) {
      if (!window.confirm(form.getAttribute("data-confirm"))) e.preventDefault();
    });
  });
})();
