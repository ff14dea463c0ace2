/* taskpipe dashboard: plain JS, no build step. Every view polls the JSON API once a second.
   All job data is put in the page with textContent (never as HTML). */
"use strict";

(function () {
  const POLL_MS = 1000;
  const STATES = ["available", "delayed", "waiting", "claimed", "stalled", "finished", "failed", "timeout"];
  const params = new URLSearchParams(window.location.search);
  if (params.get("token")) sessionStorage.setItem("taskpipe-token", params.get("token"));
  const token = sessionStorage.getItem("taskpipe-token") || "";
  const main = document.getElementById("main");
  let view = null;       // the current view: {refresh(), stop?}
  let timer = null;
  let busy = false;

  // --- helpers -------------------------------------------------------------------------------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "className") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }
  function replace(node, ...children) {
    node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  }
  const enc = encodeURIComponent;
  // Re-render a part only when its data changed, so rows and buttons are not replaced under the
  // pointer every second (relative times refresh at least every 5 s through the tick key).
  const rendered = new WeakMap();
  function same(node, data) {
    const key = JSON.stringify(data);
    if (rendered.get(node) === key) return true;
    rendered.set(node, key);
    return false;
  }
  const tick5 = () => Math.floor(Date.now() / 5000);
  function toast(message, error) {
    const t = document.getElementById("toast");
    t.textContent = message;
    t.className = "show" + (error ? " error" : "");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.className = ""; }, 3000);
  }
  function setLive(ok, why) {
    const live = document.getElementById("live");
    live.className = livePaused ? "live paused" : ok ? "live" : "live off";
    live.textContent = livePaused ? "paused" : ok ? "live" : "offline";
    live.title = livePaused ? "live updates paused: click to resume" : ok ? "live updates: click to pause" : (why || "cannot reach the dashboard API");
    let banner = document.getElementById("offline-banner");
    if (!ok && !banner) {
      banner = el("div", { id: "offline-banner", role: "alert" });
      document.body.insertBefore(banner, document.getElementById("main"));
    }
    if (banner) {
      banner.hidden = ok;
      banner.textContent = ok ? "" : "Offline: " + (why || "cannot reach the broker or the dashboard API") + " (retrying every second)";
    }
  }
  let livePaused = false;  // live updates paused by the user (the toggle in the header)
  async function api(path, method) {
    const headers = { "X-Taskpipe": "1", "Accept": "application/json" };
    if (token) headers["X-Taskpipe-Token"] = token;
    const resp = await fetch("api/" + path, { method: method || "GET", headers, cache: "no-store" });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = { error: resp.statusText }; }
    if (!resp.ok) {
      const err = new Error((data && data.error) || resp.statusText);
      err.status = resp.status;
      throw err;
    }
    return data;
  }
  function fmtTime(ms) {
    if (ms === null || ms === undefined) return "";
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
           `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtRel(ms, now) {
    if (ms === null || ms === undefined) return "";
    const s = Math.round((ms - now) / 1000);
    const a = Math.abs(s);
    if (a === 0) return "now";
    const txt = a < 60 ? `${a}s` : a < 3600 ? `${Math.round(a / 60)}m` : a < 86400 ?
      `${Math.round(a / 3600)}h` : `${Math.round(a / 86400)}d`;
    return s >= 0 ? `in ${txt}` : `${txt} ago`;
  }
  function timeCell(ms, now) {
    return el("td", { title: fmtTime(ms), text: ms ? fmtRel(ms, now || Date.now()) : "" });
  }
  function badge(text, cls) { return el("span", { className: "badge " + (cls || text), text }); }
  function jobLink(channel, id) {
    return el("a", { href: `#/job/${enc(channel)}/${enc(id)}`, text: id });
  }
  function chanLink(channel) { return el("a", { href: `#/channel/${enc(channel)}`, text: channel }); }
  function fmtRate(r) { return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2); }

  // --- throughput ----------------------------------------------------------------------------
  function rates(samples) {   // [[t, published, finished, failed], ...] -> per-second rates
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const dt = (samples[i][0] - samples[i - 1][0]) / 1000;
      if (dt <= 0) continue;
      out.push([samples[i][0], ...[1, 2, 3].map((k) => Math.max(0, (samples[i][k] - samples[i - 1][k]) / dt))]);
    }
    return out;
  }
  function sumHistory(history) {  // add channels up, aligned on sample index from the end
    const series = Object.values(history);
    const len = Math.max(0, ...series.map((s) => s.length));
    const out = [];
    for (let i = 0; i < len; i++) {
      const row = [0, 0, 0, 0];
      for (const s of series) {
        const j = s.length - len + i;
        if (j < 0) continue;
        row[0] = Math.max(row[0], s[j][0]);
        for (let k = 1; k < 4; k++) row[k] += s[j][k];
      }
      out.push(row);
    }
    return out;
  }
  function chart(samples) {
    const r = rates(samples);
    const W = 600, H = 120, pad = 4;
    const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", class: "chart",
                             role: "img", "aria-label": "throughput" });
    for (let i = 1; i < 4; i++) box.appendChild(svg("line", { x1: 0, x2: W, y1: (H * i) / 4, y2: (H * i) / 4, class: "grid" }));
    const peak = Math.max(1, ...r.map((x) => Math.max(x[1], x[2], x[3])));
    ["published", "finished", "failed"].forEach((name, k) => {
      if (r.length < 2) return;
      const pts = r.map((x, i) => `${(i / (r.length - 1)) * W},${H - pad - (x[k + 1] / peak) * (H - 2 * pad)}`);
      box.appendChild(svg("polyline", { points: pts.join(" "), class: name }));
    });
    const last = r.length ? r[r.length - 1] : [0, 0, 0, 0];
    const clock = (ms) => { const d = new Date(ms); const p = (n) => String(n).padStart(2, "0"); return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`; };
    const yAxis = el("div", { className: "y-axis", "aria-label": "jobs per second" },
      [peak, peak / 2, 0].map((v) => el("span", { text: `${fmtRate(v)}/s` })));
    const xAxis = el("div", { className: "x-axis", id: "chart-times" },
      r.length >= 2 ? [r[0][0], r[Math.floor((r.length - 1) / 2)][0], r[r.length - 1][0]].map((t) => el("span", { text: clock(t) })) : el("span", { text: "" }));
    const plot = el("div", { className: "plot" }, yAxis, el("div", { className: "plot-area" }, box, xAxis));
    const legend = el("div", { className: "legend" },
      ["published", "finished", "failed"].map((n, k) =>
        el("span", {}, el("span", { className: "k " + n }), `${n} ${fmtRate(last[k + 1])}/s`)),
      el("span", { text: `scale ${fmtRate(peak)}/s · ${samples.length} sample(s)` }));
    return el("div", { className: "card" }, plot, legend);
  }

  // --- views ---------------------------------------------------------------------------------
  function overviewView() {
    const chartBox = el("div", { id: "throughput" });
    const summary = el("p", { className: "muted", id: "summary" });
    const body = el("tbody", { id: "channel-rows" });
    const cols = ["available", "delayed", "claimed", "stalled", "finished"];
    const totals = [["published_total", "published"], ["finished_total", "finished (all time)"], ["failed_total", "failed"]];
    replace(main, el("h1", { text: "Channels" }), summary, chartBox,
      el("table", { id: "channels" },
        el("thead", {}, el("tr", {}, el("th", { text: "channel" }), cols.map((c) => el("th", { className: "num", text: c })),
          totals.map(([, label]) => el("th", { className: "num", text: label })),
          el("th", { className: "num", text: "finished/s" }), el("th", { text: "oldest waiting" }), el("th", { text: "status" }), el("th", {}))),
        body));
    return {
      async refresh() {
        const data = await api("overview?history=120");
        replace(summary, `${data.channels.length} channel(s) · ${data.workers} live worker(s) · server time ${fmtTime(data.server_time_ms)}`);
        replace(chartBox, chart(sumHistory(data.history)));
        const lastRates = {};
        for (const c of data.channels) {
          const r = rates(data.history[c.channel] || []);
          lastRates[c.channel] = r.length ? r[r.length - 1][2] : 0;
        }
        if (same(body, [data.channels, lastRates, tick5()])) return;
        if (!data.channels.length) {
          replace(body, el("tr", {}, el("td", { colspan: 13, className: "empty", text: "No job channels yet." })));
          return;
        }
        replace(body, data.channels.map((c) => {
          const rate = lastRates[c.channel];
          return el("tr", { "data-channel": c.channel },
            el("td", {}, chanLink(c.channel)),
            cols.map((k) => el("td", { className: "num", "data-col": k, text: c[k] })),
            totals.map(([k]) => el("td", { className: "num", "data-col": k, text: c[k] })),
            el("td", { className: "num", text: fmtRate(rate) }),
            el("td", { "data-col": "oldest_waiting", title: c.oldest_waiting_ms ? fmtTime(c.oldest_waiting_ms) : "",
                       text: c.oldest_waiting_ms ? fmtRel(c.oldest_waiting_ms, data.server_time_ms).replace(" ago", "") : "-" }),
            el("td", { "data-col": "status" }, c.paused ? badge("paused") : badge("active"),
              c.limits ? el("div", { className: "limits", "data-col": "limits", text: c.limits }) : null),
            el("td", {}, pauseButton(c.channel, c.paused)));
        }));
      },
    };
  }

  function pauseButton(channel, paused) {
    return el("button", {
      className: paused ? "primary" : "", "data-action": paused ? "resume" : "pause",
      text: paused ? "Resume" : "Pause",
      onclick: async (ev) => {
        if (!paused && !window.confirm(`Pause ${channel}? Workers stop claiming its jobs until it is resumed.`)) return;
        ev.target.disabled = true;
        try {
          await api(`channels/${enc(channel)}/${paused ? "resume" : "pause"}`, "POST");
          toast(`${channel} ${paused ? "resumed" : "paused"}`);
        } catch (e) { toast(e.message, true); }
        await tick(true);
      },
    });
  }

  function channelView(channel, query) {
    const state = STATES.includes(query.get("state")) ? query.get("state") : "available";
    const cursors = [""];   // cursor of each page seen so far (for "previous")
    let page = 0;
    const title = el("h1", {}, "Channel ", el("span", { text: channel }));
    const status = el("span", { id: "channel-status" });
    const actions = el("span", { id: "channel-actions" });
    title.append(status, actions);
    const tabs = el("div", { className: "tabs", id: "state-tabs" });
    const input = el("input", { id: "job-search", type: "search", placeholder: "Job id in this channel" });
    const search = el("form", { className: "toolbar", onsubmit: (ev) => {
      ev.preventDefault();
      const id = input.value.trim();
      if (id) window.location.hash = `#/job/${enc(channel)}/${enc(id)}`;
    } }, input, el("button", { type: "submit", text: "Open" }));
    const chartBox = el("div");
    const head = el("thead");
    const body = el("tbody", { id: "job-rows" });
    const pager = el("div", { className: "pager" });
    replace(main, title, chartBox, tabs, search, el("table", { id: "jobs" }, head, body), pager);
    const extraCols = { available: ["published"], delayed: ["due"], waiting: ["parents left"], claimed: ["claimed", "worker", "progress", "lease ends"],
                        stalled: ["reason"], finished: ["finished", "outcome", "error"], failed: ["finished", "error"],
                        timeout: ["finished", "error"] };
    replace(head, el("tr", {}, ["id", "task", "args", "attempts", "cancels", ...extraCols[state]].map((c) => el("th", { text: c }))));
    const go = (delta) => { page += delta; tick(true); };
    return {
      async refresh() {
        const [data, ov] = await Promise.all([
          api(`channels/${enc(channel)}/jobs?state=${state}&limit=25&cursor=${enc(cursors[page] || "")}`),
          api("overview?history=120"),
        ]);
        const c = data.counts;
        if (!same(status, c.paused)) {
          replace(status, c.paused ? badge("paused") : badge("active"));
          status.firstChild.id = "paused-badge";
          replace(actions, pauseButton(channel, c.paused));
        }
        if (!same(tabs, c)) {
          replace(tabs, STATES.map((s) => el("a", {
            href: `#/channel/${enc(channel)}?state=${s}`, "data-state": s, className: s === state ? "active" : "",
            text: s === "failed" || s === "timeout" ? s : `${s} (${c[s]})`,
          })), el("a", { href: `#/history/${enc(channel)}`, id: "history-tab", text: "history / search" }));
        }
        replace(chartBox, chart(ov.history[channel] || []));
        const now = ov.server_time_ms;
        if (same(body, [data.rows, data.next_cursor, page, tick5()])) return;
        if (!data.rows.length) {
          replace(body, el("tr", {}, el("td", { colspan: 9, className: "empty", text: `No ${state} jobs.` })));
        } else {
          replace(body, data.rows.map((r) => {
            const cells = [el("td", { className: "id" }, jobLink(channel, r.id)), el("td", { text: r.task || "" }),
              el("td", { className: "args", "data-col": "args", text: r.args || "" }),
              el("td", { className: "num", text: r.attempts }), el("td", { className: "num", text: r.cancels })];
            if (state === "available" || state === "delayed") cells.push(timeCell(r.when_ms, now));
            if (state === "claimed") cells.push(timeCell(r.when_ms, now), el("td", { text: r.worker }),
              el("td", { text: r.progress }), timeCell(r.lease_deadline_ms, now));
            if (state === "stalled") cells.push(el("td", { className: "reason", text: r.reason }));
            if (state === "waiting") cells.push(el("td", { className: "num", text: r.parents_left }));
            if (state === "finished") cells.push(timeCell(r.when_ms, now), el("td", {}, badge(r.outcome, ["failed", "timeout", "aborted", "job_expired"].includes(r.outcome) ? "failed" : "finished")), el("td", { text: r.error }));
            if (state === "failed" || state === "timeout") cells.push(timeCell(r.when_ms, now), el("td", { text: r.error }));
            return el("tr", { "data-job": r.id }, cells);
          }));
        }
        if (data.next_cursor) cursors[page + 1] = data.next_cursor;
        replace(pager,
          el("button", { text: "‹ Previous", disabled: page === 0, onclick: () => go(-1) }),
          el("span", { className: "muted", text: `page ${page + 1}` + (data.total === null ? "" : ` · ${data.total} job(s)`) }),
          el("button", { text: "Next ›", disabled: !data.next_cursor, onclick: () => go(1) }));
      },
    };
  }

  function jobView(channel, id) {
    const box = el("div", { id: "job" });
    const editBox = el("div", { id: "edit-box" });   // kept across refreshes while editing
    const argsIn = el("textarea", { id: "edit-args", rows: 3 });
    const kwargsIn = el("textarea", { id: "edit-kwargs", rows: 3 });
    let editing = false;
    replace(main, el("h1", {}, "Job ", el("span", { className: "id", text: id })), editBox, box);
    return {
      async refresh() {
        let j;
        try {
          j = await api(`channels/${enc(channel)}/jobs/${enc(id)}`);
        } catch (e) {
          if (e.status === 404) {
            if (!same(box, e.message)) replace(box, el("p", { className: "empty", id: "job-missing", text: e.message }));
            return;
          }
          throw e;
        }
        const now = j.server_time_ms;
        if (same(box, [{ ...j, server_time_ms: 0 }, tick5()])) return;
        const rows = [["channel", chanLink(channel)], ["state", badge(j.state)]];
        if (j.task) rows.push(["task", j.task]);
        rows.push(["attempts", j.attempts], ["cancels", j.cancels]);
        if (j.worker) rows.push(["worker", j.worker]);
        if (j.progress) {
          const [cur, tot] = j.progress.split("/").map(Number);
          rows.push(["progress", el("span", {}, el("progress", { max: tot || 100, value: cur || 0 }), " " + j.progress)]);
        }
        if (j.reason) rows.push(["reason", el("span", { className: "reason", id: "job-reason", text: j.reason })]);
        if (j.last_error) rows.push(["last error", el("span", { className: "reason", id: "job-last-error", text: j.last_error + " (will retry)" })]);
        for (const [k, v] of Object.entries(j.timestamps)) {
          if (v) rows.push([k.replace(/_ms$/, "").replace("_", " "), el("span", { title: fmtTime(v), text: `${fmtTime(v)} (${fmtRel(v, now)})` })]);
        }
        if (j.runtime_ms !== null && j.runtime_ms !== undefined) rows.push(["run time", `${(j.runtime_ms / 1000).toFixed(3)} s`]);
        if (j.code) rows.push(["error code", j.code]);
        if (j.requeues) rows.push(["requeued", `${j.requeues} time(s), last ended ${j.previous || "?"}`]);
        if (j.result_ttl_ms) rows.push(["result expires", fmtRel(now + j.result_ttl_ms, now)]);
        const actions = el("div", { className: "toolbar", id: "job-actions" });
        if (j.state === "stalled") {
          actions.append(el("button", { id: "retry-btn", className: "primary", text: "Retry", onclick: async () => {
            try { await api(`channels/${enc(channel)}/jobs/${enc(id)}/retry`, "POST"); toast("job sent back to the queue"); } catch (e) { toast(e.message, true); }
            await tick(true);
          } }));
        }
        if (j.state === "claimed") {
          actions.append(el("button", { id: "abort-btn", className: "danger", text: "Abort", onclick: async () => {
            if (!window.confirm(`Abort running job ${id} in ${channel}? Its task is stopped.`)) return;
            try { await api(`channels/${enc(channel)}/jobs/${enc(id)}/abort`, "POST"); toast("job aborted"); } catch (e) { toast(e.message, true); }
            await tick(true);
          } }));
        }
        if (["failed", "timeout", "aborted"].includes(j.state)) {
          actions.append(el("button", { id: "requeue-btn", className: "primary", text: "Requeue", onclick: async () => {
            // an aborted job was stopped by an operator: requeued only when asked for by name
            if (j.state === "aborted" && !window.confirm(`Job ${id} was aborted. Run it again with its arguments?`)) return;
            const q = j.state === "aborted" ? "?state=aborted" : "";
            try { await api(`channels/${enc(channel)}/jobs/${enc(id)}/requeue${q}`, "POST"); toast("job requeued with its arguments"); } catch (e) { toast(e.message, true); }
            await tick(true);
          } }));
        }
        if (["available", "delayed", "stalled"].includes(j.state) && j.payload && !j.payload.truncated) {
          actions.append(el("button", { id: "edit-btn", text: "Edit arguments", onclick: () => {
            editing = true;
            replace(editBox, el("form", { id: "edit-form", className: "card", onsubmit: async (ev) => {
              ev.preventDefault();
              const q = `args=${enc(argsIn.value)}&kwargs=${enc(kwargsIn.value)}`;
              try {
                await api(`channels/${enc(channel)}/jobs/${enc(id)}/edit?${q}`, "POST");
                toast("arguments saved"); editing = false; replace(editBox);
              } catch (e) { toast(e.message, true); }
              await tick(true);
            } },
            el("label", { text: "args (JSON array)" }), argsIn,
            el("label", { text: "kwargs (JSON object)" }), kwargsIn,
            el("div", { className: "toolbar" }, el("button", { type: "submit", id: "edit-save", className: "primary", text: "Save" }),
              el("button", { type: "button", text: "Cancel", onclick: () => { editing = false; replace(editBox); } }))));
            argsIn.value = JSON.stringify(j.payload.args);
            kwargsIn.value = JSON.stringify(j.payload.kwargs);
          } }));
        }
        if (!["finished", "failed", "timeout", "retracted", "aborted", "expired", "unknown"].includes(j.state)) {
          actions.append(el("button", { id: "retract-btn", className: "danger", text: "Retract", onclick: async () => {
            if (!window.confirm(`Remove job ${id} from ${channel}? This cannot be undone.`)) return;
            try { await api(`channels/${enc(channel)}/jobs/${enc(id)}/retract`, "POST"); toast("job retracted"); } catch (e) { toast(e.message, true); }
            await tick(true);
          } }));
        }
        const parts = [actions,
          el("div", { className: "card" }, el("dl", { className: "kv" }, rows.map(([k, v]) => [el("dt", { text: k }), el("dd", { "data-field": k }, v)])))];
        parts[1].querySelector('[data-field="state"] .badge').id = "job-state";
        // a body over the API's cap comes as {truncated, bytes, preview}: loaded whole on demand only
        const big = (key, title, preId) => {
          const pre = el("pre", { id: preId, text: j[key].preview + " ..." });
          const load = async () => {
            try {
              const full = await api(`channels/${enc(channel)}/jobs/${enc(id)}?full=1`);
              pre.textContent = JSON.stringify(full[key], null, 2);
            } catch (e) { toast(e.message, true); }
          };
          return [el("h2", { text: title }),
            el("p", { className: "muted", text: `${j[key].bytes} bytes: only the start is shown (refreshes skip the rest) ` },
              el("button", { text: "load it whole", onclick: load })), pre];
        };
        const titles = { payload: "Payload", raw_payload: "Raw payload", result: "Result" };
        for (const k of Object.keys(titles)) {
          if (j[k] && j[k].truncated) parts.push(big(k, titles[k], k === "result" ? "job-result" : "job-payload"));
        }
        if (j.payload && !j.payload.truncated) parts.push(el("h2", { text: "Payload" }), el("pre", { id: "job-payload", text: JSON.stringify(j.payload, null, 2) }));
        if (j.raw_payload && !j.raw_payload.truncated) parts.push(el("h2", { text: "Raw payload" }), el("pre", { id: "job-payload", text: j.raw_payload.text !== null ? j.raw_payload.text : "base64: " + j.raw_payload.base64 }));
        if (j.payload_error) parts.push(el("p", { className: "reason", text: j.payload_error }));
        if (j.result && !j.result.truncated) {
          if (j.result.ok) {
            parts.push(el("h2", { text: "Result" }), el("pre", { id: "job-result", text: JSON.stringify(j.result.raw || j.result.value, null, 2) }));
          } else {
            parts.push(el("h2", { text: "Error" }),
              el("pre", { className: "error", id: "job-error", text: `${j.result.exc_type}: ${j.result.exc_message}` }),
              el("h2", { text: "Traceback" }), el("pre", { className: "error", id: "job-traceback", text: j.result.traceback || "(none)" }));
          }
        }
        // the log keeps its scroll position while it refreshes, or follows the tail when the
        // reader is at the bottom
        const old = document.getElementById("job-logs");
        const atBottom = old && old.scrollTop + old.clientHeight >= old.scrollHeight - 4;
        const scrollTop = old ? old.scrollTop : 0;
        parts.push(el("h2", { text: `Log (${j.log_total} line${j.log_total === 1 ? "" : "s"})` }),
          j.logs.length ? el("pre", { id: "job-logs", className: "log", text: j.logs.join("\n") }) : el("p", { className: "muted", text: "No log lines." }));
        replace(box, parts);
        const fresh = document.getElementById("job-logs");
        if (fresh && old) fresh.scrollTop = atBottom ? fresh.scrollHeight : scrollTop;
        if (!editing && editBox.firstChild) replace(editBox);
      },
    };
  }

  // ended jobs of a channel: search by state, task, error text and time; per-task breakdown;
  // bulk requeue (with a count preview and a confirmation)
  function historyView(channel, query) {
    const f = { state: query.get("state") || "", task: query.get("task") || "", error: query.get("error") || "",
                since: query.get("since") || "" };
    const stateIn = el("select", { id: "hist-state" }, ["", "succeeded", "failed", "timeout", "aborted"].map((s) =>
      el("option", { value: s, text: s || "any state", selected: s === f.state })));
    const taskIn = el("input", { id: "hist-task", type: "search", placeholder: "task name", value: f.task });
    const errorIn = el("input", { id: "hist-error", type: "search", placeholder: "error text", value: f.error });
    const sinceIn = el("select", { id: "hist-since" }, [["", "any time"], ["3600", "last hour"], ["86400", "last day"], ["604800", "last week"]]
      .map(([v, t]) => el("option", { value: v, text: t, selected: v === f.since })));
    const form = el("form", { className: "toolbar", id: "hist-form", onsubmit: (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      if (stateIn.value) q.set("state", stateIn.value);
      if (taskIn.value.trim()) q.set("task", taskIn.value.trim());
      if (errorIn.value.trim()) q.set("error", errorIn.value.trim());
      if (sinceIn.value) q.set("since", sinceIn.value);
      window.location.hash = `#/history/${enc(channel)}?${q.toString()}`;
    } }, stateIn, taskIn, errorIn, sinceIn, el("button", { type: "submit", id: "hist-go", text: "Search" }));
    const bulk = el("button", { id: "bulk-requeue", className: "primary", text: "Requeue all failed" + (f.task ? ` of ${f.task}` : ""),
      onclick: async () => {
        const q = `state=failed,timeout${f.task ? "&task=" + enc(f.task) : ""}`;
        try {
          const preview = await api(`channels/${enc(channel)}/requeue?${q}`);
          if (!preview.count) { toast("no failed or timed-out jobs to requeue"); return; }
          if (!window.confirm(`Requeue ${preview.count} failed or timed-out job(s) of ${channel}${f.task ? " (task " + f.task + ")" : ""}?`)) return;
          bulk.disabled = true;
          bulk.textContent = `Requeuing ${preview.count} job(s)…`;
          const out = await api(`channels/${enc(channel)}/requeue?${q}`, "POST");
          toast(`requeued ${out.requeued} job(s)` + (out.skipped ? `, ${out.skipped} skipped` : ""));
        } catch (e) { toast(e.message, true); }
        bulk.disabled = false;
        bulk.textContent = "Requeue all failed" + (f.task ? ` of ${f.task}` : "");
        await tick(true);
      } });
    const breakdown = el("tbody", { id: "task-rows" });
    const body = el("tbody", { id: "hist-rows" });
    const bulkAction = (id, label, cls, path, ask, done) => el("button", { id, className: cls, text: label, onclick: async (ev) => {
      const btn = ev.target;
      try {
        const preview = await api(path);
        if (!preview.count) { toast("nothing to do: 0 job(s)"); return; }
        if (!window.confirm(ask(preview.count))) return;
        btn.disabled = true;
        btn.textContent = `${label}: ${preview.count} job(s)…`;
        toast(done(await api(path, "POST")));
      } catch (e) { toast(e.message, true); }
      btn.disabled = false;
      btn.textContent = label;
      await tick(true);
    } });
    const cleanAge = el("select", { id: "clean-age" }, [["7d", "older than 7 days"], ["1d", "older than 1 day"], ["1h", "older than 1 hour"], ["0", "all"]]
      .map(([v, t]) => el("option", { value: v, text: t })));
    const cleanState = el("select", { id: "clean-state" }, ["finished", "failed", "timeout", "aborted", "stalled"].map((s) => el("option", { value: s, text: s === "finished" ? "succeeded" : s })));
    const cleanBtn = el("button", { id: "clean-btn", text: "Clean", onclick: async (ev) => {
      const path = `channels/${enc(channel)}/clean?state=${cleanState.value}&older_than=${cleanAge.value}`;
      const btn = ev.target;
      try {
        const preview = await api(path);
        if (!preview.count) { toast("nothing to clean"); return; }
        if (!window.confirm(`Clean up to ${preview.count} ${cleanState.value} job(s) of ${channel} (${cleanAge.selectedOptions[0].text})?`)) return;
        btn.disabled = true;
        const out = await api(path, "POST");
        toast(`removed ${out.removed} job(s)` + (out.kept ? `, kept ${out.kept} of another outcome` : ""));
      } catch (e) { toast(e.message, true); }
      btn.disabled = false;
      await tick(true);
    } });
    const empty = bulkAction("empty-btn", "Empty channel", "danger", `channels/${enc(channel)}/empty`,
      (n) => `Retract all ${n} waiting job(s) of ${channel}? Claimed jobs run on. This cannot be undone.`,
      (out) => `retracted ${out.retracted} job(s)`);
    replace(main, el("h1", {}, "History of ", chanLink(channel)), form,
      el("div", { className: "toolbar" }, bulk, " ", cleanState, cleanAge, cleanBtn, " ", empty),
      el("h2", { text: "Per task" }),
      el("table", { id: "task-breakdown" }, el("thead", {}, el("tr", {}, ["task", "succeeded", "failed", "timeout", "aborted"].map((c) => el("th", { text: c })))), breakdown),
      el("h2", { text: "Ended jobs (newest first)" }),
      el("table", { id: "history" }, el("thead", {}, el("tr", {},
        ["id", "task", "state", "finished", "attempts", "worker", "args", "error"].map((c) => el("th", { text: c })))), body));
    return {
      async refresh() {
        const q = new URLSearchParams({ limit: "100" });
        if (f.state) q.set("state", f.state);
        if (f.task) q.set("task", f.task);
        if (f.error) q.set("error", f.error);
        if (f.since) q.set("since", String(Date.now() / 1000 - Number(f.since)));
        const data = await api(`channels/${enc(channel)}/history?${q.toString()}`);
        if (!same(breakdown, data.tasks)) {
          const names = Object.keys(data.tasks);
          replace(breakdown, names.length ? names.map((t) => el("tr", { "data-task": t },
            el("td", {}, el("a", { href: `#/history/${enc(channel)}?task=${enc(t)}`, text: t })),
            ["succeeded", "failed", "timeout", "aborted"].map((k) => el("td", { className: "num", "data-col": k, text: data.tasks[t][k] }))))
            : el("tr", {}, el("td", { colspan: 5, className: "empty", text: "No ended jobs recorded." })));
        }
        if (same(body, [data.jobs, tick5()])) return;
        const now = Date.now();
        replace(body, data.jobs.length ? data.jobs.map((r) => el("tr", { "data-job": r.id },
          el("td", { className: "id" }, jobLink(channel, r.id)), el("td", { text: r.task }),
          el("td", {}, badge(r.outcome, r.outcome === "succeeded" ? "finished" : "failed")),
          timeCell(r.finished_ms, now), el("td", { className: "num", text: r.attempts }), el("td", { text: r.worker }),
          el("td", { className: "args", text: r.args_display }), el("td", { className: "reason", text: r.error })))
          : el("tr", {}, el("td", { colspan: 8, className: "empty", text: "No matching jobs." })));
      },
    };
  }

  function workersView() {
    const body = el("tbody", { id: "worker-rows" });
    replace(main, el("h1", { text: "Workers" }), el("table", { id: "workers" }, el("thead", {}, el("tr", {},
      ["name", "host", "pid", "channels", "pool", "concurrency", "running", "prefetched", "jobs held", "stats", "heartbeat", "status"].map((c) => el("th", { text: c })))), body));
    return {
      async refresh() {
        const data = await api("workers");
        if (!data.workers.length) { replace(body, el("tr", {}, el("td", { colspan: 12, className: "empty", text: "No live workers." }))); return; }
        replace(body, data.workers.map((w) => el("tr", { "data-worker": w.name },
          el("td", { className: "id", text: w.name }), el("td", { text: w.host }), el("td", { text: w.pid }),
          el("td", {}, (w.channels || "").split(",").filter((c) => c).map((c) => [chanLink(c), " "])),
          el("td", { text: w.pool }), el("td", { className: "num", text: w.concurrency }),
          el("td", { className: "num", "data-col": "running", text: w.running ?? "" }),
          el("td", { className: "num", "data-col": "prefetched", text: w.prefetched ?? "" }),
          el("td", {}, (w.jobs || []).slice(0, 10).map((j) => { const i = j.indexOf("/"); return [jobLink(j.slice(0, i), j.slice(i + 1)), " "]; })),
          el("td", { text: Object.entries(w.stats || {}).map(([k, v]) => `${k} ${v}`).join(", ") }),
          el("td", { title: fmtTime(Number(w.heartbeat) * 1000), text: fmtRel(Number(w.heartbeat) * 1000, Date.now()) }),
          el("td", {}, w.stopping === "1" ? badge("stopping", "delayed") : badge("running", "active")))));
      },
    };
  }

  function cronsView() {
    const body = el("tbody", { id: "cron-rows" });
    replace(main, el("h1", { text: "Cron entries" }), el("table", { id: "crons" }, el("thead", {}, el("tr", {},
      ["name", "task", "schedule", "channel", "next fire", "last fire", "last job", "last error"].map((c) => el("th", { text: c })))), body));
    return {
      async refresh() {
        const data = await api("crons");
        if (!data.crons.length) { replace(body, el("tr", {}, el("td", { colspan: 8, className: "empty", text: "No cron entries." }))); return; }
        const now = Date.now();
        replace(body, data.crons.map((c) => {
          const st = c.state || {};
          const ms = (v) => (v && /^\d+$/.test(v) ? Number(v) : null);
          const channel = c.channel || st.channel || "";
          return el("tr", { "data-cron": c.name }, el("td", { text: c.name }), el("td", { text: c.task || st.task || "" }),
            el("td", { text: (c.expr || st.expr || "") + ` (${c.tz || st.tz || "UTC"})` }),
            el("td", {}, channel ? chanLink(channel) : ""),
            timeCell(ms(st.next_fire), now), timeCell(ms(st.last_fire), now),
            el("td", { className: "id" }, st.last_job && channel ? jobLink(channel, st.last_job) : ""),
            el("td", { className: "reason", text: st.last_error || "" }));
        }));
      },
    };
  }

  function findView(id) {
    const box = el("div", { id: "find-result" });
    replace(main, el("h1", {}, "Find job ", el("span", { text: id })), box);
    return {
      async refresh() {
        const data = await api(`find?id=${enc(id)}`);
        if (data.channels.length === 1) { window.location.replace(`#/job/${enc(data.channels[0])}/${enc(id)}`); return; }
        replace(box, data.channels.length
          ? el("ul", {}, data.channels.map((c) => el("li", {}, jobLink(c, id), ` in ${c}`)))
          : el("p", { className: "empty", text: "No channel knows a job with this id." }));
        this.done = true;
      },
    };
  }

  // --- routing and polling ---------------------------------------------------------------------
  function route() {
    const hash = window.location.hash.replace(/^#/, "") || "/";
    const [path, qs] = hash.split("?");
    const query = new URLSearchParams(qs || "");
    const parts = path.split("/").filter((p) => p !== "").map(decodeURIComponent);
    document.querySelectorAll("header nav a").forEach((a) => a.classList.remove("active"));
    const nav = (id) => document.getElementById(id).classList.add("active");
    if (parts[0] === "channel" && parts.length === 2) { nav("nav-channels"); return channelView(parts[1], query); }
    if (parts[0] === "job" && parts.length === 3) { nav("nav-channels"); return jobView(parts[1], parts[2]); }
    if (parts[0] === "history" && parts.length === 2) { nav("nav-channels"); return historyView(parts[1], query); }
    if (parts[0] === "workers") { nav("nav-workers"); return workersView(); }
    if (parts[0] === "crons") { nav("nav-crons"); return cronsView(); }
    if (parts[0] === "find" && parts.length === 2) return findView(parts[1]);
    nav("nav-channels");
    return overviewView();
  }

  async function tick(force) {
    if (!view || view.done || (busy && !force) || (!force && (document.hidden || livePaused))) return;
    busy = true;
    const current = view;
    try {
      await current.refresh();
      setLive(true);
    } catch (e) {
      setLive(false, e.message);
      if (e.status === 401) replace(main, el("p", { className: "empty", id: "auth-error", text: "Authentication required: open the dashboard with ?token=… or sign in." }));
    } finally {
      busy = false;
    }
  }

  function start() {
    view = route();
    tick(true);
  }

  document.getElementById("find-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = document.getElementById("find-input").value.trim();
    if (id) window.location.hash = `#/find/${enc(id)}`;
  });
  window.addEventListener("hashchange", start);
  document.getElementById("live").addEventListener("click", () => {  // pause / resume live updates
    livePaused = !livePaused;
    setLive(true);
    if (!livePaused) tick(true);
  });
  timer = setInterval(() => tick(false), POLL_MS);
  start();
  window.taskpipeDashboard = { tick, stop: () => clearInterval(timer) };
})();
