// edge-monitor's page: follow the machine's live data, update the numbers, refresh the chart and the alert table.
// The machine page listens to server-sent events (/api/<id>/events); where they are refused (too many open
// pages, an old browser, a proxy that buffers) it polls /api/<id> every window hop instead. The overview
// polls /api (every machine in one answer) every 2 s. Written for this page only; no library.
(function () {
  "use strict";
  function text(card, field, value) {
    var el = card.querySelector('[data-field="' + field + '"]');
    if (el && el.textContent !== value) { el.textContent = value; }
  }
  function fmt(v) { return (v === null || v === undefined) ? "\u2014" : Number(v).toPrecision(4).replace(/\.?0+$/, ""); }
  function watch(card) {
    var id = card.getAttribute("data-machine");
    var seconds = parseFloat(card.getAttribute("data-poll")) || 2;
    var live = card.hasAttribute("data-live");
    var chart = card.querySelector("img.chart");
    var lastAlerts = null, lastClips = null, lastChart = Date.now();
    function refreshAlerts() {
      var box = document.getElementById("alerts-table");
      if (!box || box.contains(document.activeElement)) { return false; }  // never wipe a note being typed
      fetch("/machine/" + encodeURIComponent(id) + "/alerts", {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) { box.innerHTML = html; } });
      return true;
    }
    function refreshChart() {
      if (chart && Date.now() - lastChart > 10000) {
        lastChart = Date.now();
        chart.src = "/machine/" + encodeURIComponent(id) + "/chart.svg?t=" + lastChart;
      }
    }
    function show(d) {
      var state = card.querySelector('[data-field="state"]');
      if (state) { state.textContent = d.state; state.className = "state state-" + d.state; }
      text(card, "score", fmt(d.score));
      text(card, "threshold", fmt(d.threshold));
      text(card, "alerts_total", String(d.alerts_total));
      text(card, "dropped_frames", String(d.dropped_frames));
      text(card, "health", d.health.length ? d.health.join(", ").replace(/_/g, " ") : "ok");
      text(card, "mqtt", d.mqtt === null ? "off" :
           (d.mqtt.connected ? "connected" : "not connected") + ", outbox " + d.mqtt.outbox_depth);
      if (live && (lastAlerts !== null && (d.alerts_total !== lastAlerts || d.clips !== lastClips))) {
        if (!refreshAlerts()) { return; }  // a note is being typed: try again with the next data
        lastChart = 0;  // redraw the chart with the new alert's span now
      }
      lastAlerts = d.alerts_total; lastClips = d.clips;
    }
    function tick() {
      fetch("/api/" + encodeURIComponent(id), {credentials: "same-origin", cache: "no-store"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (d) { if (d) { show(d); } })
        .catch(function () { /* the daemon restarts or the network blinks: try again next tick */ })
        .then(function () {
          refreshChart();
          setTimeout(tick, seconds * 1000);
        });
    }
    function listen() {
      var events = new EventSource("/api/" + encodeURIComponent(id) + "/events");
      card.setAttribute("data-updates", "events");
      events.onmessage = function (e) {
        var d = null;
        try { d = JSON.parse(e.data); } catch (err) { return; }
        show(d);
      };
      events.onerror = function () {
        // CONNECTING: the browser reconnects by itself (daemon restart, stream renewed). CLOSED: refused.
        if (events.readyState === EventSource.CLOSED) {
          card.setAttribute("data-updates", "polling");
          setTimeout(tick, seconds * 1000);
        }
      };
      setInterval(function () { if (card.getAttribute("data-updates") === "events") { refreshChart(); } }, 1000);
    }
    if (live && window.EventSource) {
      listen();
    } else if (live) {
      card.setAttribute("data-updates", "polling");
      setTimeout(tick, seconds * 1000);
    } else {
      card.setAttribute("data-updates", "overview");
    }
    return {id: id, seconds: seconds, show: show, refreshChart: refreshChart};
  }
  var cards = document.querySelectorAll("[data-machine]");
  var overview = [];
  for (var i = 0; i < cards.length; i++) {
    var watched = watch(cards[i]);
    if (!cards[i].hasAttribute("data-live")) { overview.push(watched); }
  }
  function pollAll() {
    fetch("/api", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (all) {
        if (!all) { return; }
        var byId = {};
        all.machines.forEach(function (d) { byId[d.machine] = d; });
        overview.forEach(function (w) { if (byId[w.id]) { w.show(byId[w.id]); } });
      })
      .catch(function () { /* try again next time */ })
      .then(function () {
        overview.forEach(function (w) { w.refreshChart(); });
        setTimeout(pollAll, overview[0].seconds * 1000);
      });
  }
  if (overview.length) { setTimeout(pollAll, overview[0].seconds * 1000); }
})();
