/* vemetric-auth key pages: the Copy buttons. The pages work without this
   script (the key is in a read-only field to select and copy); with it, each
   button[data-copy] is shown and copies the text of the element it names. */
(function () {
  "use strict";

  function textOf(target) {
    return target.tagName === "INPUT" ? target.value : target.textContent;
  }

  function select(target) {
    target.focus();
    if (target.tagName === "INPUT") {
      target.select();
      return;
    }
    var range = document.createRange();
    range.selectNodeContents(target);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function copy(button) {
    var target = document.getElementById(button.getAttribute("data-copy"));
    var status = document.getElementById(button.getAttribute("data-copy-status"));
    if (!target) {
      return;
    }
    function report(copied) {
      if (status) {
        status.textContent = copied
          ? "Copied to the clipboard."
          : "Selected: press Ctrl+C (⌘C on a Mac) to copy.";
      }
    }
    function fallback() {
      select(target);
      var copied = false;
      try {
        copied = document.execCommand("copy");
      } catch (error) {
        copied = false;
      }
      report(copied);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(textOf(target)).then(function () {
        report(true);
      }, fallback);
    } else {
      fallback();
    }
  }

  var buttons = document.querySelectorAll("button[data-copy]");
  Array.prototype.forEach.call(buttons, function (button) {
    button.addEventListener("click", function () {
      copy(button);
    });
    button.hidden = false;
  });

  var fields = document.querySelectorAll("input.secret");
  Array.prototype.forEach.call(fields, function (field) {
    field.addEventListener("focus", function () {
      field.select();
    });
  });
})();
