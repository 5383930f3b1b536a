// One task's page: state, progress and rows/s live from /ws/v1/tasks/<id>/ (the existing task socket).
"use strict";
(function () {
  const { liveSocket } = window.consoleDom;
  const root = document.getElementById("task-page");
  const set = (id, text) => { document.getElementById(id).textContent = text ?? ""; };
  const FINAL = ["SUCCESS", "FAILURE", "CANCELLED", "TIMED_OUT", "REVOKED", "LOST"];
  let first = null;  // [time, current] of the first progress seen here: the rate is the average since then

  function progress(current, total) {
    if (!total) return;
    const pct = Math.min(100, Math.round(100 * (current || 0) / total));
    document.getElementById("bar").value = pct;
    set("pct", pct + "%");
    set("counts-progress", `${(current || 0).toLocaleString()} of ${total.toLocaleString()}`);
    const now = Date.now() / 1000;
    if (!first) first = [now, current || 0];
    else if (current > first[1] && now > first[0] + 1) {
      set("rate", `${Math.round((current - first[1]) / (now - first[0])).toLocaleString()}/s since this page opened`);
    }
  }

  function onMessage(m) {
    if (m.name && m.event !== "task-progress") set("task-name", m.name);
    if (m.state) { set("state", m.state); document.getElementById("state").className = "state-" + m.state; }
    if (m.step !== undefined) set("step", m.step);
    if (m.message !== undefined) set("message", m.message);
    if (FINAL.includes(m.state)) { set("step", ""); set("message", ""); }  // "SUCCESS", not "SUCCESS merging"
    if (m.total) progress(m.current, m.total);
    if (m.result) set("result", m.result);
    if (m.error) set("error", m.error);
    if (m.state === "SUCCESS") { document.getElementById("bar").value = 100; set("pct", "100%"); }
    // Finished while watched: reload once for what only the ledger has (traceback, profile link, runtime).
    if (FINAL.includes(m.state) && m.event !== "snapshot" && !FINAL.includes(root.dataset.state)) {
      root.dataset.state = m.state;
      setTimeout(() => location.reload(), 1500);
    }
  }

  // The domain panels (dataset chunks, rows/s) come from the server: re-read them while the task runs.
  async function refreshPanels() {
    if (FINAL.includes(root.dataset.state) || !root.querySelector("section.extension")) return;
    try {
      const html = await (await fetch(location.href, { credentials: "same-origin" })).text();
      const fresh = new DOMParser().parseFromString(html, "text/html");
      for (const section of root.querySelectorAll("section.extension")) {
        const update = fresh.querySelector(`section.extension[data-panel="${section.dataset.panel}"]`);
        if (update) section.replaceWith(update);
      }
    } catch (error) { /* the socket's status line already says when the server is away */ }
  }
  setInterval(refreshPanels, 3000);

  progress(parseFloat(root.dataset.current) || 0, parseFloat(root.dataset.total) || 0);
  liveSocket(`/ws/v1/tasks/${encodeURIComponent(root.dataset.task)}/`, onMessage, (status) => {
    const box = document.getElementById("live-status");
    box.textContent = status; box.className = "status-" + status.split(" ")[0];
  });
})();
