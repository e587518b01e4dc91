// The MCP Apps bridge: JSON-RPC over postMessage with the host that shows this page.
// Inlined into each app page by the server, so every page stays one self-contained file.
"use strict";
const bridge = (() => {
  const PROTOCOL_VERSION = "2026-01-26";
  const pending = new Map();
  const handlers = {};
  let nextId = 1;
  let hostCapabilities = {};

  function post(message) {
    window.parent.postMessage({ jsonrpc: "2.0", ...message }, "*");
  }

  function request(method, params) {
    const id = nextId++;
    post({ id, method, params });
    return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
  }

  function notify(method, params) {
    post({ method, params });
  }

  function on(method, handler) {
    handlers[method] = handler;
  }

  window.addEventListener("message", (event) => {
    const message = event.data;
    if (event.source !== window.parent || !message || message.jsonrpc !== "2.0") return;
    if (!message.method) {
      const waiter = pending.get(message.id);
      if (!waiter) return;
      pending.delete(message.id);
      if (message.error) waiter.reject(new Error(message.error.message || "the host refused"));
      else if (message.result && message.result.isError) waiter.reject(new Error("the host refused"));
      else waiter.resolve(message.result || {});
      return;
    }
    const handler = handlers[message.method];
    if (message.id === undefined) {
      if (handler) handler(message.params || {});
      return;
    }
    if (!handler && !["ping", "ui/resource-teardown"].includes(message.method)) {
      post({ id: message.id, error: { code: -32601, message: `no method ${message.method}` } });
      return;
    }
    Promise.resolve(handler ? handler(message.params || {}) : {}).then(
      (result) => post({ id: message.id, result: result || {} }),
      (error) => post({ id: message.id, error: { code: -32000, message: String(error) } }),
    );
  });

  function applyContext(context) {
    const root = document.documentElement;
    if (context.theme) root.dataset.theme = context.theme;
    const variables = (context.styles && context.styles.variables) || {};
    for (const [name, value] of Object.entries(variables)) {
      if (value) root.style.setProperty(name, value);
    }
  }

  function reportSize() {
    let last = "";
    const observer = new ResizeObserver(() => {
      const size = { width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight };
      const key = `${size.width}x${size.height}`;
      if (key !== last) notify("ui/notifications/size-changed", size);
      last = key;
    });
    observer.observe(document.documentElement);
  }

  async function connect(name) {
    on("ui/notifications/host-context-changed", applyContext);
    const result = await request("ui/initialize", {
      protocolVersion: PROTOCOL_VERSION,
      appInfo: { name, version: "1" },
      appCapabilities: { availableDisplayModes: ["inline"] },
    });
    hostCapabilities = result.hostCapabilities || {};
    applyContext(result.hostContext || {});
    notify("ui/notifications/initialized", {});
    reportSize();
    return result;
  }

  function can(capability) {
    return hostCapabilities[capability] !== undefined;
  }

  return { request, notify, on, connect, can };
})();

// Small helpers both pages use.
function usd(value) {
  if (value === null || value === undefined) return "";
  return value >= 0.1 || value === 0 ? `$${value.toFixed(2)}` : `$${value.toFixed(3)}`;
}

function element(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function say(text) {
  const status = document.getElementById("status");
  if (status) status.textContent = text;
}
