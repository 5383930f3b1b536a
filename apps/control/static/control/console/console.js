// The console page: fills the live panels from the snapshots on /ws/v1/console/ (apps/control/console).
"use strict";
(function () {
  const { el, ago, liveSocket } = window.consoleDom;
  const root = document.getElementById("console");
  const csrf = root.querySelector("[name=csrfmiddlewaretoken]").value;
  const taskUrl = (id) => root.dataset.taskUrl.replace("TASK_ID", encodeURIComponent(id));

  function fill(panelId, data, render) {
    // A panel whose source failed shows "unavailable: <reason>" and keeps its last rows greyed out.
    const panel = document.getElementById(panelId);
    const note = panel.querySelector(".unavailable");
    if (data && data.unavailable) {
      note.textContent = "unavailable: " + data.unavailable;
      note.hidden = false;
      panel.classList.add("stale");
      return;
    }
    note.hidden = true;
    panel.classList.remove("stale");
    const typing = document.activeElement && document.activeElement.tagName === "INPUT";
    if (typing && panel.contains(document.activeElement)) return;  // keep a reason being typed
    render(data);
  }

  function rows(tableId, items, row) {
    const body = document.querySelector(`#${tableId} tbody`);
    body.replaceChildren(...items.map(row));
  }

  function actionForm(queue, paused) {
    const url = (paused ? root.dataset.resumeUrl : root.dataset.pauseUrl).replace("QUEUE", encodeURIComponent(queue));
    const form = el("form", { method: "post", action: url, class: "inline" },
      el("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrf }));
    if (!paused) form.append(el("input", { name: "reason", placeholder: "reason", size: 10 }));
    form.append(el("button", { type: "submit", class: paused ? "" : "danger", "data-action": paused ? "resume" : "pause" },
      paused ? "Resume" : "Pause"));
    return form;
  }

  const number = (value) => (value === null || value === undefined ? "–" : value.toLocaleString());

  function renderQueues(queues) {
    rows("queues", queues, (q) => el("tr", { "data-queue": q.name, class: q.paused ? "paused" : "" },
      el("td", { class: "name" }, q.name),
      el("td", { class: "ready" }, q.ready === null ? "not declared" : number(q.ready)),
      el("td", { class: "unacked" }, number(q.unacked)),
      el("td", { class: "publish-rate" }, q.publish_rate.toFixed(2)),
      el("td", { class: "deliver-rate" }, q.deliver_rate.toFixed(2)),
      el("td", { class: "oldest" }, q.oldest_age === null ? "" : ago(q.oldest_age)),
      el("td", { class: "dead" }, number(q.dead_letters)),
      el("td", { class: "state" }, q.paused ? `paused${q.paused_reason ? ": " + q.paused_reason : ""}` : "consuming"),
      el("td", {}, actionForm(q.name, q.paused))));
  }

  function renderWorkers(workers) {
    const now = Date.now() / 1000;
    if (!workers.length) { rows("workers", [1], () => el("tr", {}, el("td", { colspan: 10 }, "no worker online"))); return; }
    rows("workers", workers, (w) => el("tr", { "data-worker": w.hostname, class: w.answered ? "" : "silent" },
      el("td", {}, w.hostname), el("td", {}, w.role), el("td", {}, w.pool), el("td", {}, number(w.concurrency)),
      el("td", { class: "busy" }, number(w.busy)),
      el("td", { class: "succeeded" }, number(w.succeeded)), el("td", { class: "failed" }, number(w.failed)),
      el("td", { class: "heartbeat" }, w.last_heartbeat ? ago(now - w.last_heartbeat) + " ago" : "none yet"),
      el("td", {}, w.max_rss_kib ? `${(w.max_rss_kib / 1024).toFixed(0)} MiB` : ""),
      el("td", {}, w.queues.join(", "))));
  }

  // One SVG per queue: a bar per minute, succeeded stacked under failed. Drawn here, no chart library.
  function chart(name, series) {
    const width = 360, height = 70, n = series.done.length, bar = width / n;
    const max = Math.max(1, ...series.done.map((d, i) => d + series.failed[i]));
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width); svg.setAttribute("height", height);
    svg.setAttribute("role", "img");
    const total = series.done.reduce((a, b) => a + b, 0), failed = series.failed.reduce((a, b) => a + b, 0);
    svg.setAttribute("aria-label", `${name}: ${total} succeeded, ${failed} failed in the last hour`);
    const rect = (x, y, h, cls) => {
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      r.setAttribute("x", x); r.setAttribute("y", y); r.setAttribute("width", Math.max(1, bar - 1));
      r.setAttribute("height", h); r.setAttribute("class", cls);
      return r;
    };
    series.done.forEach((done, i) => {
      const hDone = (done / max) * (height - 2), hFailed = (series.failed[i] / max) * (height - 2);
      if (done) svg.append(rect(i * bar, height - hDone, hDone, "done"));
      if (series.failed[i]) svg.append(rect(i * bar, height - hDone - hFailed, hFailed, "failed"));
    });
    return el("figure", { "data-chart": name, "data-total": total, "data-failed": failed },
      el("figcaption", {}, `${name}: ${total} succeeded, ${failed} failed`), svg,
      el("div", { class: "axis" }, el("span", {}, `${n} min ago`), el("span", {}, "now")));
  }

  function renderCharts(data) {
    document.getElementById("charts").replaceChildren(
      ...Object.entries(data.queues).map(([name, series]) => chart(name, series)));
  }

  function renderScheduled(items) {
    if (!items.length) { rows("scheduled", [1], () => el("tr", {}, el("td", { colspan: 6 }, "nothing scheduled"))); return; }
    rows("scheduled", items, (t) => el("tr", { "data-task": t.task_id },
      el("td", {}, t.due ? new Date(t.due).toLocaleString() : "when a worker takes it"),
      el("td", {}, el("a", { href: taskUrl(t.task_id) }, t.name || t.task_id)),
      el("td", {}, t.queue), el("td", {}, t.state), el("td", {}, t.retries), el("td", { class: "detail" }, t.error)));
  }

  function renderCounts(counts) {
    const box = document.getElementById("counts");
    if (counts.unavailable) { box.textContent = "ledger unavailable: " + counts.unavailable; return; }
    box.replaceChildren(...Object.entries(counts).filter(([, n]) => n).map(([state, n]) =>
      el("span", { class: `count state-${state}`, "data-state": state }, `${state} ${n.toLocaleString()}`)));
  }

  const events = document.getElementById("events");
  function addEvents(batch) {
    for (const e of batch.slice(-20)) {
      events.prepend(el("li", {}, `${new Date((e.timestamp || Date.now() / 1000) * 1000).toLocaleTimeString()} `,
        el("a", { href: taskUrl(e.task_id) }, e.name || e.task_id), ` ${e.state}`));
    }
    while (events.children.length > 20) events.lastChild.remove();
  }

  function onMessage(message) {
    if (message.type === "events") { addEvents(message.events); return; }
    if (message.type !== "snapshot") return;
    document.getElementById("snapshot-at").textContent = "as of " + new Date(message.at).toLocaleTimeString();
    fill("queues-panel", message.queues, renderQueues);
    fill("workers-panel", message.workers, renderWorkers);
    fill("charts-panel", message.charts, renderCharts);
    fill("scheduled-panel", message.scheduled, renderScheduled);
    renderCounts(message.counts);
  }

  function onStatus(status) {
    const box = document.getElementById("live-status");
    box.textContent = status;
    box.className = "status-" + status.split(" ")[0];
  }

  document.getElementById("select-all-letters").addEventListener("change", (event) => {
    for (const box of document.querySelectorAll("#letters input[name=ids]")) box.checked = event.target.checked;
  });

  liveSocket(root.dataset.socket, onMessage, onStatus);
})();
