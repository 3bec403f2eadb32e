// Kelp dashboard: live logs and a confirmation on forms that ask for one.
// Plain JavaScript, no build step; every page works without it.
"use strict";

// Lines kept in the page; older ones are dropped as new ones arrive, so a
// chatty device does not grow the page without bound.
const MAX_LINES = 2000;
// How often the parts of a page marked `data-live` (device status, service
// states, rollout progress) are fetched again while the page is in view.
const REFRESH_MS = 5000;

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  const list = document.getElementById("log-lines");
  if (list && window.EventSource) followLogs(list);
  if (document.querySelector("[data-live][id]")) setTimeout(refreshLive, REFRESH_MS);
});

// Fetches this page again and swaps in its `data-live` parts, so status
// moves without a reload (and without touching forms or the log).
async function refreshLive() {
  try {
    if (document.visibilityState === "visible") {
      const res = await fetch(location.pathname, { credentials: "same-origin" });
      if (res.redirected || !res.ok) return; // signed out, or gone: stop
      const fresh = new DOMParser().parseFromString(await res.text(), "text/html");
      for (const part of document.querySelectorAll("[data-live][id]")) {
        const next = fresh.getElementById(part.id);
        if (next) part.replaceWith(document.adoptNode(next));
      }
    }
  } catch (e) {
    // The cloud is unreachable for now; try again at the next tick.
  }
  setTimeout(refreshLive, REFRESH_MS);
}

function followLogs(list) {
  const filter = document.getElementById("log-filter");
  const pause = document.getElementById("log-pause");
  const status = document.getElementById("log-status");
  let paused = false;
  let held = [];

  const shown = (li) => !filter.value || li.dataset.service === filter.value;
  const atBottom = () => list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const append = (line) => {
    const stick = atBottom();
    const li = document.createElement("li");
    li.dataset.service = line.service;
    li.dataset.id = String(line.id);
    if (line.stream === "stderr") li.className = "stderr";
    const time = document.createElement("time");
    time.textContent = new Date(line.time).toISOString().replace("T", " ").slice(0, 19) + " UTC";
    const svc = document.createElement("span");
    svc.className = "svc";
    svc.textContent = line.service;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = line.line;
    li.append(time, " ", svc, " ", text);
    li.hidden = !shown(li);
    list.append(li);
    while (list.children.length > MAX_LINES) list.firstElementChild.remove();
    if (stick) list.scrollTop = list.scrollHeight;
  };

  filter.addEventListener("change", () => {
    for (const li of list.children) li.hidden = !shown(li);
    list.scrollTop = list.scrollHeight;
  });
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused) {
      held.forEach(append);
      held = [];
    }
    status.textContent = paused ? "paused" : "live";
  });

  list.scrollTop = list.scrollHeight;
  const source = new EventSource(list.dataset.stream);
  source.addEventListener("open", () => { if (!paused) status.textContent = "live"; });
  source.addEventListener("error", () => { status.textContent = "reconnecting…"; });
  source.addEventListener("line", (event) => {
    const line = JSON.parse(event.data);
    if (paused) {
      held.push(line);
      if (held.length > MAX_LINES) held.shift();
      status.textContent = `paused, ${held.length} new`;
    } else {
      append(line);
    }
  });
}
