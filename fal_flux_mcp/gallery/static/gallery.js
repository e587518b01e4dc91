// The web gallery's extras; every page works without them. No framework, no build step.
"use strict";

// Theme: the system's unless chosen here; the choice is remembered.
(() => {
  const root = document.documentElement;
  const saved = localStorage.getItem("fal-flux-theme");
  if (saved) root.dataset.theme = saved;
  const button = document.getElementById("theme");
  if (!button) return;
  const current = () => root.dataset.theme ||
    (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  const label = () => { button.textContent = current() === "dark" ? "Light theme" : "Dark theme"; };
  label();
  button.hidden = false;  // without the script there is nothing to switch: the system's theme applies
  button.addEventListener("click", () => {
    root.dataset.theme = current() === "dark" ? "light" : "dark";
    localStorage.setItem("fal-flux-theme", root.dataset.theme);
    label();
  });
})();

// Keyboard: arrow keys move between the images of the grid, Home and End to the first and last.
(() => {
  const grid = document.getElementById("grid");
  if (!grid) return;
  grid.addEventListener("keydown", (event) => {
    const links = [...grid.querySelectorAll(".card > a")];
    const at = links.indexOf(document.activeElement);
    if (at < 0) return;
    const columns = Math.max(1, Math.round(grid.clientWidth / links[0].closest(".card").offsetWidth));
    const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns, ArrowUp: -columns,
      Home: -at, End: links.length - 1 - at };
    if (!(event.key in moves)) return;
    const target = links[Math.min(links.length - 1, Math.max(0, at + moves[event.key]))];
    event.preventDefault();
    target.focus();
  });
})();

// Live update: a job that finishes appears at the top of the grid, without a reload.
(() => {
  const grid = document.getElementById("grid");
  if (!grid || !window.EventSource) return;
  const live = document.getElementById("live");
  const source = new EventSource(`/gallery/events?since=${encodeURIComponent(grid.dataset.since || "")}`);
  source.addEventListener("job", async (event) => {
    const { job_id: jobId } = JSON.parse(event.data);
    if (grid.querySelector(`[data-job="${CSS.escape(jobId)}"]`)) return;
    const response = await fetch(`/gallery/cards/${encodeURIComponent(jobId)}`);
    if (!response.ok) return;
    const holder = document.createElement("ul");
    holder.innerHTML = await response.text();
    const added = [...holder.children];
    for (const card of [...added].reverse()) { card.classList.add("new"); grid.prepend(card); }
    document.querySelector(".empty")?.remove();
    if (live && added.length) live.textContent = `New: ${added[0].querySelector(".prompt")?.textContent ?? "an image"}`;
  });
})();

// "Copy as tool call" and other copy buttons.
for (const button of document.querySelectorAll("button[data-copy]")) {
  button.addEventListener("click", async () => {
    const text = document.getElementById(button.dataset.copy).textContent;
    const status = button.nextElementSibling;
    try {
      await navigator.clipboard.writeText(text);
      if (status) status.textContent = "Copied";
    } catch {
      if (status) status.textContent = "Copying is not allowed here; select the text above instead";
    }
  });
}
