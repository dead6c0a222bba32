// zerogate admin panel conveniences; every page works without this file.
(function () {
  "use strict";
  // "Add a rule": clone an empty row in place instead of a round trip to the server.
  document.querySelectorAll("button.add-rule").forEach(function (button) {
    button.addEventListener("click", function (event) {
      var section = button.closest("fieldset.section");
      var rows = section.querySelector(".rows");
      var template = rows.querySelector(".rule");
      if (!template) { return; }  // let the form do it
      event.preventDefault();
      var row = template.cloneNode(true);
      row.classList.remove("has-error");
      row.querySelectorAll(".field-error").forEach(function (e) { e.remove(); });
      row.querySelector("select").value = "";
      row.querySelector("input").value = "";
      rows.appendChild(row);
      row.querySelector("select").focus();
    });
  });
  // Ask before a destructive POST.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
  // Show only the fields of the chosen option: data-show="field=value".
  function refresh() {
    document.querySelectorAll("[data-show]").forEach(function (el) {
      var parts = el.getAttribute("data-show").split("=");
      var form = el.closest("form");
      var field = form && form.elements[parts[0]];
      if (!field) { return; }
      var value = field.value;
      if (field.length !== undefined && field.tagName !== "SELECT") {
        value = "";
        Array.prototype.forEach.call(field, function (r) { if (r.checked) { value = r.value; } });
      }
      el.hidden = value !== parts[1];
    });
  }
  document.addEventListener("change", refresh);
  refresh();
  // Select a one-time secret on focus, for copying.
  document.querySelectorAll(".copy").forEach(function (el) {
    el.addEventListener("focus", function () { el.select(); });
  });
})();
