// The nearline console: polls this worker's /v1 API and draws what it says. No build step.
"use strict";

const state = {
  config: null,
  token: sessionStorage.getItem("nearline-token"),
  member: null,
  candidates: [],
  seenEvents: new Set(),
  lastApplied: undefined,
  ranking: null,       // [{item_id, score, category}, ...] shown as "now"
  before: null,        // the ranking before the last change
  lag: [],             // total lag at each poll since the page opened
  generation: 0,       // bumped when polling stops (token refused): stale timers end
};

const $ = (id) => document.getElementById(id);

class AuthError extends Error {}

async function api(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const response = await fetch(path, { headers });
  if (response.status === 401) throw new AuthError("the API token was refused");
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function hue(text) {
  let h = 0;
  for (const c of String(text)) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}

function chip(text, className) {
  const node = el("span", `chip ${className || ""}`, text);
  if (!className) node.style.setProperty("--hue", hue(text));
  return node;
}

function clock(ts) {
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  return `${Math.round(seconds / 60)} min`;
}

function setText(node, text) {
  if (node.textContent !== String(text)) node.textContent = String(text);
}

function status(text, bad) {
  const node = $("status");
  setText(node, text);
  node.className = bad ? "bad" : "muted";
}

// -- the member view ---------------------------------------------------------------------

function renderFeatures(features) {
  const actions = features.recent_actions || [];
  const unchanged =
    features.last_applied_at === state.renderedApplied && actions.length === state.seenEvents.size;
  state.renderedApplied = features.last_applied_at;
  setText($("timeline-count"), actions.length);
  // An erased member is not an unknown one: say so, and when.
  const erased = $("erased");
  erased.hidden = !features.erased;
  if (features.erased) {
    setText(erased, `erased at ${new Date(features.erased.erased_at * 1000).toLocaleString()}` +
      ` (erasure ${features.erased.erasure_id}); only what came after is shown`);
  }
  setText($("last-event"), features.last_event_ts
    ? `${clock(features.last_event_ts)} (${duration(Date.now() / 1000 - features.last_event_ts)} ago)`
    : "—");
  setText($("last-freshness"),
    features.last_event_ts && features.last_applied_at
      ? duration(Math.max(0, features.last_applied_at - features.last_event_ts))
      : "—");

  const windows = Object.keys(features.counts || {});
  const names = windows.length ? Object.keys(features.counts[windows[0]]) : [];
  table($("counts"), ["window", ...names], windows.map((w) => [w, ...names.map((n) => features.counts[w][n])]));

  if (unchanged) return; // the counts and timeline are already on the page
  // Rows already shown are kept: only the new actions' rows are made and put on top, and
  // those that left the member's recent actions are removed (less for the browser to lay
  // out and paint than the whole list, twice a second for an active member).
  const timeline = $("timeline");
  const first = state.seenEvents.size === 0;
  const wanted = new Set(actions.map((a) => a.event_id));
  const shown = new Map();
  for (const row of [...timeline.children]) {
    if (wanted.has(row.dataset.event)) shown.set(row.dataset.event, row);
    else row.remove();
  }
  let previous = null;
  for (const action of actions) {
    let row = shown.get(action.event_id);
    if (row) row.classList.remove("new");
    else {
      row = timelineRow(action);
      if (!first) row.classList.add("new");
    }
    const expected = previous ? previous.nextSibling : timeline.firstChild;
    if (row !== expected) timeline.insertBefore(row, expected);
    previous = row;
  }
  state.seenEvents = wanted;
}

function timelineRow(action) {
  const row = el("li");
  row.dataset.event = action.event_id;
  const attributes = el("span");
  for (const [name, value] of Object.entries(action.attributes || {})) {
    if (name === "embedding") attributes.append(chip(`embedding·${value.length}`, "plain"));
    else if (name === "geo") attributes.append(chip(value.region || `${value.lat},${value.lon}`, "plain"));
    else attributes.append(chip(value));
  }
  for (const name of action.missing || []) attributes.append(chip(`missing ${name}`, "missing"));
  if (action.joined === false) attributes.append(chip("not joined", "missing"));
  row.append(
    el("span", "time", clock(action.ts)),
    el("span", `action ${action.action}`, action.action),
    el("span", "", action.item_id),
    attributes,
  );
  return row;
}

function sameOrder(a, b) {
  return a && b && a.length === b.length && a.every((item, i) => item.item_id === b[i].item_id);
}

// Rows of each ranking shown; moves are counted over the whole ranking.
const SHOWN = 12;

function renderRanking() {
  const now = state.ranking || [];
  const before = state.before;
  const previous = new Map((before || []).map((item, i) => [item.item_id, i]));
  const rows = (list, marks) =>
    list.slice(0, SHOWN).map((item, i) => {
      const row = el("li");
      row.dataset.item = item.item_id;
      row.dataset.category = item.category || "";
      let move = el("span", "move", "");
      if (marks && before) {
        const was = previous.get(item.item_id);
        if (was === undefined) move = el("span", "move new", "new");
        else if (was > i) move = el("span", "move up", `▲${was - i}`);
        else if (was < i) move = el("span", "move down", `▼${i - was}`);
        if (was !== i) row.classList.add("moved");
      }
      row.append(
        el("span", "pos", i + 1),
        el("span", "", item.item_id),
        el("span", "", ""),
        el("span", "score", item.score.toFixed(3)),
        move,
      );
      if (item.category) row.children[2].append(chip(item.category));
      if (item.unknown) row.children[2].append(chip("unknown", "missing"));
      return row;
    });
  $("ranking-now").replaceChildren(...rows(now, true));
  $("ranking-before").replaceChildren(...(before ? rows(before, false) : [el("li", "muted", "no change yet")]));
}

async function refreshRanking(features) {
  const query = encodeURIComponent(state.candidates.join(","));
  const path = `/v1/console/members/${encodeURIComponent(state.member)}/ranking?candidates=${query}`;
  const ranked = await api(path);
  const arm = ranked.experiment ? ` · arm ${ranked.experiment.arm}` : "";
  setText($("ranking-model"), `${ranked.ranker} · ${ranked.model_version}${arm}`);
  if (state.ranking && !sameOrder(state.ranking, ranked.items)) {
    state.before = state.ranking;
    setText($("ranking-changed"), `changed at ${clock(Date.now() / 1000)}`);
  }
  state.ranking = ranked.items;
  renderRanking();
}

async function refreshMember() {
  if (!state.member) return;
  const features = await api(`/v1/members/${encodeURIComponent(state.member)}/features`);
  renderFeatures(features);
  // Re-rank only when the member's state changed: a ranking costs the worker far more
  // than a features read, and an unchanged member ranks the same.
  if (features.last_applied_at !== state.lastApplied || !state.ranking) {
    await refreshRanking(features);
    state.lastApplied = features.last_applied_at;
  }
}

function watch(member) {
  state.member = member;
  state.seenEvents = new Set();
  state.lastApplied = state.renderedApplied = undefined;
  state.ranking = state.before = null;
  setText($("ranking-changed"), "");
  $("member-input").value = member;
  const url = new URL(location.href);
  url.searchParams.set("member", member);
  history.replaceState(null, "", url);
  return refreshMember();
}

// -- the system view ---------------------------------------------------------------------

function drawChart(canvas, series, { ymin = 0, format = (v) => String(Math.round(v)) } = {}) {
  if (!changed(canvas, series)) return;
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
    canvas.width = width * ratio;
    canvas.height = height * ratio;
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const values = series.flatMap((s) => s.values.filter((v) => v !== null));
  const top = Math.max(ymin + 1e-9, ...values);
  const left = 44, bottom = height - 4;
  g.strokeStyle = "#e3e6ea";
  g.fillStyle = "#6b7280";
  g.font = "10px system-ui, sans-serif";
  g.beginPath();
  g.moveTo(left, 4); g.lineTo(width, 4);
  g.moveTo(left, bottom); g.lineTo(width, bottom);
  g.stroke();
  g.fillText(format(top), 2, 12);
  g.fillText(format(ymin), 2, bottom);
  for (const s of series) {
    const n = s.values.length;
    if (n < 2) continue;
    g.strokeStyle = s.color;
    g.lineWidth = 1.5;
    g.beginPath();
    let drawing = false;
    s.values.forEach((v, i) => {
      if (v === null) { drawing = false; return; }
      const x = left + ((width - left) * i) / (n - 1);
      const y = bottom - ((bottom - 4) * (v - ymin)) / (top - ymin);
      if (drawing) g.lineTo(x, y); else g.moveTo(x, y);
      drawing = true;
    });
    g.stroke();
  }
}

// Replaces the element's children only when what it shows changed: an unchanged page
// costs the browser no layout or paint.
function changed(node, content) {
  const key = JSON.stringify(content, (k, v) => (v instanceof Node ? v.textContent : v));
  if (node.dataset.shown === key) return false;
  node.dataset.shown = key;
  return true;
}

function table(node, header, rows) {
  if (!changed(node, [header, rows])) return;
  const head = el("tr");
  head.append(...header.map((h) => el("th", "", h)));
  node.replaceChildren(head, ...rows.map((cells) => {
    const row = el("tr");
    row.append(...cells.map((c) => (c instanceof Node ? (() => { const td = el("td"); td.append(c); return td; })() : el("td", "", c))));
    return row;
  }));
  if (!rows.length) {
    const row = el("tr");
    row.append(el("td", "muted", "none"));
    node.append(row);
  }
}

function ms(seconds) {
  return seconds === null || seconds === undefined ? "—" : `${Math.round(seconds * 1000)} ms`;
}

function renderSystem(s) {
  setText($("worker"), s.worker);
  const serving = $("serving");
  if (s.serving) {
    const stale = Object.entries(s.serving.stale_ms).filter(([, v]) => v !== null);
    setText(serving, stale.length
      ? `${s.serving.processes} serving processes; worker down or restoring: answers up to ${Math.max(...stale.map(([, v]) => v))} ms stale`
      : `${s.serving.processes} serving processes, within ${s.serving.max_staleness_ms} ms of the worker (this page from pid ${s.serving.answered_by})`);
    serving.className = `muted ${stale.length ? "bad" : ""}`;
  } else {
    setText(serving, "the worker serves the API itself");
  }
  const ready = $("ready");
  const healthy = s.ready && s.alive;
  setText(ready, !s.alive ? s.liveness : s.ready ? "ready" : s.reason);
  ready.className = `pill ${healthy ? "good" : "bad"}`;
  setText($("model-pill"), `${s.model.ranker} · ${s.model.version}`);

  const rate = s.ingest.per_s;
  setText($("ingest-rate"), rate >= 100 ? Math.round(rate).toLocaleString() : rate.toFixed(1));
  if ($("ingest-rate").dataset.value !== String(rate)) $("ingest-rate").dataset.value = rate;
  setText($("fresh-p50"), ms(s.freshness["1m"].p50));
  setText($("fresh-p99"), ms(s.freshness["1m"].p99));
  setText($("fresh-5m"), `${ms(s.freshness["5m"].p50)} / ${ms(s.freshness["5m"].p99)}`);
  const totalLag = s.lag.reduce((sum, p) => sum + p.lag, 0);
  setText($("lag-total"), totalLag.toLocaleString());
  const dlq = Object.entries(s.dead_letters);
  setText($("dlq-total"), dlq.reduce((sum, [, v]) => sum + v, 0).toLocaleString());

  state.lag.push(totalLag);
  if (state.lag.length > 120) state.lag.shift();
  drawChart($("chart-ingest"), [{ values: s.series.ingest_per_s, color: "#2f6fed" }]);
  const toMs = (values) => values.map((v) => (v === null ? null : v * 1000));
  drawChart($("chart-freshness"), [
    { values: toMs(s.series.freshness_p50), color: "#2f6fed" },
    { values: toMs(s.series.freshness_p99), color: "#b45309" },
  ]);
  drawChart($("chart-lag"), [{ values: state.lag, color: "#7c3aed" }]);

  // Lag of each topic this worker consumes, by partition; a stalled one (nothing applied
  // for NEARLINE_STALL_TIMEOUT while lagging, what turns liveness red) says for how long.
  const topics = [...new Set(s.lag.map((p) => p.topic))];
  const lagOf = new Map(s.lag.map((p) => [`${p.topic}/${p.partition}`, p]));
  const lagCell = (topic, partition) => {
    const p = lagOf.get(`${topic}/${partition}`);
    if (!p) return "—";
    if (p.stalled_seconds < s.stall_timeout) return String(p.lag);
    return el("span", "bad", `${p.lag} (stalled ${Math.round(p.stalled_seconds)} s)`);
  };
  table($("partitions"), ["partition", "owner", ...topics.map((t) => `lag, ${s.topics[t] || t}`)], s.partitions.map((p) => {
    let owner;
    if (p.here) owner = el("span", "good", "this worker");
    else if (p.owner) {
      owner = el("a", "", p.owner);
      owner.href = `${p.owner}/console`;
    } else owner = el("span", "muted", "unassigned");
    return [String(p.partition), owner, ...topics.map((t) => lagCell(t, p.partition))];
  }));
  table($("dead-letters"), ["reason", "records"], dlq.map(([k, v]) => [k, v]));
  table($("dropped"), ["reason", "actions"], Object.entries(s.ingest.dropped).map(([k, v]) => [k, v]));
  const erasures = s.erasures;
  table($("erasures"), ["", "count", "request → done, p99"], [
    ...Object.entries(erasures.outcomes).map(([k, v]) => [k, v, ""]),
    ["events ignored", erasures.events_ignored, ""],
    ...Object.entries(erasures.stores).map(([k, v]) => [`${k} store`, v.count, duration(v.p99_seconds)]),
  ]);
  const store = s.attribute_store;
  const storeNode = $("attribute-store");
  if (changed(storeNode, store)) storeNode.textContent = `${store.backend}: ${store.ok ? "up" : "DOWN"}${store.detail ? ` (${store.detail})` : ""}`;
  storeNode.className = store.ok ? "good" : "bad";

  const model = $("model");
  const facts = [["version", s.model.version], ["ranker", s.model.ranker]];
  if (s.model.created_at) facts.push(["trained", new Date(s.model.created_at * 1000).toLocaleString()]);
  const metrics = s.model.metrics;
  if (metrics && metrics.validation) {
    const m = metrics.validation, h = metrics.heuristic_validation || {};
    facts.push(["AUC (heuristic)", `${m.auc?.toFixed(4)} (${h.auc?.toFixed(4) ?? "—"})`]);
    facts.push(["NDCG@10 (heuristic)", `${m.ndcg_at_10?.toFixed(4)} (${h.ndcg_at_10?.toFixed(4) ?? "—"})`]);
    facts.push(["validation rows", m.rows]);
  } else if (s.model.ranker === "heuristic") {
    facts.push(["metrics", "none until a model is trained"]);
  }
  if (changed(model, facts)) model.replaceChildren(...facts.map(([k, v]) => {
    const div = el("div");
    div.append(el("dt", "", k), el("dd", "", v));
    return div;
  }));

  const list = $("recent-members");
  if (changed(list, s.recent_members)) list.replaceChildren(...s.recent_members.map((m) => { const o = el("option"); o.value = m; return o; }));
  if (!state.member && s.recent_members.length) {
    state.member = s.recent_members[0];
    $("member-input").value = state.member;
  }
}

async function refreshSystem() {
  renderSystem(await api("/v1/console/system"));
}

// -- the experiment panel ----------------------------------------------------------------

function interval(m, digits) {
  if (!m || m.value === null) return "—";
  return `${m.value.toFixed(digits)} [${m.low === null ? "—" : m.low.toFixed(digits)}, ${m.high === null ? "—" : m.high.toFixed(digits)}]`;
}

function renderExperiment(view) {
  const card = $("experiment-card");
  card.hidden = !view.experiment;
  if (!view.experiment) return;
  setText($("experiment-id"), view.experiment.id);
  const names = Object.keys(view.arms);
  const arm = (name) => view.arms[name];
  const row = (label, cell) => [label, ...names.map((name) => cell(arm(name)))];
  table($("experiment-arms"), ["", ...names], [
    row("ranker", (a) => `${a.arm.version} (${a.arm.features})`),
    row("share", (a) => `${Math.round(a.arm.share * 100)} %`),
    row("members / responses", (a) => `${a.members} / ${a.totals.responses}`),
    row("impressions", (a) => a.totals.impressions),
    row("clicks / applies / saves", (a) => `${a.totals.clicks} / ${a.totals.applies} / ${a.totals.saves}`),
    row("dismisses", (a) => a.totals.dismisses),
    row("first positive at", (a) => (a.first_positive_position === null ? "—" : a.first_positive_position.toFixed(2))),
    row("NDCG@10", (a) => interval(a.metrics.ndcg_at_10, 4)),
    row("MRR", (a) => interval(a.metrics.mrr, 4)),
    row("positive rate", (a) => interval(a.metrics.positive_rate, 4)),
    row("dismiss rate", (a) => interval(a.metrics.dismiss_rate, 4)),
  ]);
  const verdicts = Object.entries(view.comparisons).map(([name, c]) => {
    if (c.difference === null) return `${name}: no responses yet`;
    const range = `${c.difference >= 0 ? "+" : ""}${c.difference.toFixed(4)} [${c.low.toFixed(4)}, ${c.high.toFixed(4)}]`;
    const verdict = c.decided ? "decided" : c.more_responses === null ? "no difference observed" : `~${c.more_responses} more responses to decide`;
    return `${view.metric} ${name} − ${view.against}: ${range}, ${verdict}`;
  });
  setText($("experiment-verdict"), verdicts.join("; "));
}

async function refreshExperiment() {
  renderExperiment(await api("/v1/console/experiment"));
}

// -- start-up ----------------------------------------------------------------------------

// Short polling, one request at a time per view, paused while the tab is hidden. (Server-
// sent events cannot carry the Authorization header; a poll a second is cheap enough.)
function every(ms, work) {
  const generation = state.generation;
  const tick = async () => {
    if (generation !== state.generation) return;
    if (!document.hidden) {
      try {
        await work();
        status(`updated ${new Date().toLocaleTimeString([], { hour12: false })}`);
      } catch (error) {
        if (error instanceof AuthError) return askToken(error.message);
        status(String(error.message || error), true);
      }
    }
    if (generation === state.generation) setTimeout(tick, ms);
  };
  tick();
}

function askToken(message) {
  state.generation += 1;
  sessionStorage.removeItem("nearline-token");
  state.token = null;
  $("main").hidden = true;
  $("token-form").hidden = false;
  setText($("token-error"), message || "");
  $("token-input").focus();
}

function start() {
  $("token-form").hidden = true;
  $("main").hidden = false;
  const wanted = new URL(location.href).searchParams.get("member");
  if (wanted && !state.member) {
    state.member = wanted;
    $("member-input").value = wanted;
  }
  every(state.config.poll_ms, refreshSystem);
  every(state.config.poll_ms, refreshMember);
  every(2 * state.config.poll_ms, refreshExperiment);
}

async function main() {
  state.config = await (await fetch("/console/config.json")).json();
  state.candidates = JSON.parse(localStorage.getItem("nearline-candidates") || "null") || state.config.candidates;
  $("candidates").value = state.candidates.join(", ");
  setText($("candidate-count"), state.candidates.length);

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token-input").value.trim();
    sessionStorage.setItem("nearline-token", state.token);
    start();
  });
  $("member-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const member = $("member-input").value.trim();
    if (member) watch(member).catch((e) => status(String(e.message || e), true));
  });
  $("candidates-apply").addEventListener("click", () => {
    const list = $("candidates").value.split(/[\s,]+/).filter(Boolean).slice(0, state.config.max_candidates);
    state.candidates = list.length ? list : state.config.candidates;
    localStorage.setItem("nearline-candidates", JSON.stringify(state.candidates));
    setText($("candidate-count"), state.candidates.length);
    state.ranking = state.before = null;
    if (state.member) refreshRanking().catch((e) => status(String(e.message || e), true));
  });

  if (state.config.token_required && !state.token) askToken();
  else start();
}

main();
