// The queue follows the order events of the person's desks (Server-Sent Events from
// data-events, by the session cookie) and fetches its rows again on each, a burst of
// events making one fetch. When the browser cannot keep the stream (no EventSource, or the
// server refused it), the rows are fetched every data-poll-seconds instead.
// #queue's data-live says which: "stream" or "polling".
(function () {
  "use strict";

  function follow(queue) {
    var seconds = Number(queue.dataset.pollSeconds) || 5;
    var polling = null;
    var soon = null;
    var opened = false;

    function refresh() {
      window.htmx.trigger(queue, "orders-changed");
    }
    function refreshSoon() {
      if (soon === null) {
        soon = window.setTimeout(function () { soon = null; refresh(); }, 150);
      }
    }
    function poll() {
      queue.dataset.live = "polling";
      if (polling === null) {
        polling = window.setInterval(refresh, seconds * 1000);
      }
    }

    if (!window.EventSource || !queue.dataset.events) {
      poll();
      return;
    }
    var source = new window.EventSource(queue.dataset.events);
    source.addEventListener("open", function () {
      queue.dataset.live = "stream";
      if (polling !== null) {
        window.clearInterval(polling);
        polling = null;
      }
      if (opened) {
        refreshSoon(); // reconnected: the stream resumes, the rows may be behind
      }
      opened = true;
    });
    source.addEventListener("order_event", refreshSoon);
    source.addEventListener("error", function () {
      // CONNECTING: the browser reconnects on its own (with Last-Event-ID); poll meanwhile.
      // CLOSED: refused for good (signed out, too many streams): poll from now on.
      poll();
    });
  }

  function start() {
    var queue = document.getElementById("queue");
    if (queue && window.htmx) {
      follow(queue);
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
