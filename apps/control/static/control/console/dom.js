// Small DOM helpers shared by the console pages (no library: the console must work offline).
"use strict";
window.consoleDom = (function () {
  // el("td", {class: "x"}, "text", child): children are text (never parsed as HTML) or nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }
  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }
  function socketUrl(path) {
    return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
  }
  // A WebSocket that comes back after a restart of the web process (every 2 s while it is away).
  function liveSocket(path, onMessage, onStatus) {
    let socket;
    function open() {
      socket = new WebSocket(socketUrl(path));
      socket.onopen = () => onStatus("live");
      socket.onmessage = (event) => onMessage(JSON.parse(event.data));
      socket.onclose = (event) => {
        if (event.code >= 4000) { onStatus(`refused (${event.code})`); return; }
        onStatus("reconnecting");
        setTimeout(open, 2000);
      };
    }
    open();
  }
  return { el, ago, liveSocket };
})();
