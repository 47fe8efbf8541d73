// errands dashboard: local times, running clocks, live refresh, confirmations.
// Plain JavaScript, no dependencies; the pages work without it (minus the live parts).
(function () {
  "use strict";

  var body = document.body;
  var serverNow = Date.parse(body.dataset.serverNow || "");
  // Durations are measured against the server's clock, whatever the viewer's clock says.
  var skew = isNaN(serverNow) ? 0 : serverNow - Date.now();
  var refreshMs = Math.max(1, parseFloat(body.dataset.refreshSeconds || "5")) * 1000;

  function now() { return Date.now() + skew; }

  function span(ms) {
    var s = Math.abs(ms) / 1000;
    if (s < 1) return "now";
    if (s < 60) return Math.floor(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 172800) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d";
  }

  function relative(date) {
    var ms = now() - date.getTime();
    var text = span(ms);
    if (text === "now") return "just now";
    return ms >= 0 ? text + " ago" : "in " + text;
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function zoneName(date) {
    // The viewer's zone as their browser names it ("CET", "GMT+1"), else the offset.
    try {
      var parts = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" }).formatToParts(date);
      for (var i = 0; i < parts.length; i++) {
        if (parts[i].type === "timeZoneName") return parts[i].value;
      }
    } catch (e) { /* no Intl: the offset below */ }
    var offset = -date.getTimezoneOffset();
    var sign = offset < 0 ? "-" : "+";
    offset = Math.abs(offset);
    return sign + pad(Math.floor(offset / 60)) + ":" + pad(offset % 60);
  }

  function local(date) {
    // As errands.formatting.display_time writes times: "2026-12-07 12:20:03 CET".
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) +
      " " + pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds()) +
      " " + zoneName(date);
  }

  function localizeTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var date = new Date(el.getAttribute("datetime"));
      if (isNaN(date.getTime())) return;
      el.textContent = local(date) + " · " + relative(date);
      el.title = date.toString();
    });
  }

  function tickElapsed(root) {
    root.querySelectorAll("[data-since]").forEach(function (el) {
      var since = Date.parse(el.dataset.since);
      if (!isNaN(since)) el.textContent = span(now() - since);
    });
  }

  function busy(container) {
    // Do not swap content under someone typing in, or selecting text from, it.
    var active = document.activeElement;
    if (active && active !== body && container.contains(active)) return true;
    var selection = window.getSelection();
    return selection && !selection.isCollapsed && container.contains(selection.anchorNode);
  }

  function refresh(container) {
    if (document.hidden || busy(container)) return;
    fetch(container.dataset.live, {
      headers: { "X-Errands-Fragment": "1" },
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (response) {
      if (response.status === 401 || response.status === 403) {
        window.location.reload();  // the session ended: show the login page
        return null;
      }
      return response.ok ? response.text() : null;
    }).then(function (html) {
      if (html === null || busy(container)) return;
      container.innerHTML = html;
      localizeTimes(container);
      tickElapsed(container);
      container.dispatchEvent(new CustomEvent("errands:refreshed", { bubbles: true }));
    }).catch(function () { /* offline for a moment: try again at the next tick */ });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });

  localizeTimes(document);
  tickElapsed(document);
  setInterval(function () { tickElapsed(document); }, 1000);
  setInterval(function () { localizeTimes(document); }, 30000);
  document.querySelectorAll("[data-live]").forEach(function (container) {
    setInterval(function () { refresh(container); }, refreshMs);
    // Parts still being counted on the server come back sooner than the usual refresh.
    if (container.querySelector("[data-pending]")) {
      var soon = setInterval(function () {
        if (container.querySelector("[data-pending]")) refresh(container);
        else clearInterval(soon);
      }, 700);
    }
  });
})();
