/* decompd dashboard — the job list, a job's per-layer results and charts,
 * upload and submit. Plain JS, no framework, no build step; everything it
 * shows comes from the daemon's REST API (api/openapi.yaml) on this origin.
 *
 * Views by hash: #/jobs[?state=S] (the list, polled every POLL_MS),
 * #/jobs/ID (one job: polled while queued or running, then its
 * decompose_info.json: per layer its shape, method (spatial_svd,
 * channel_svd, svd) and errors, the output error where a calibration was
 * used, the predicted latency before and after (per layer and for the
 * whole model) where a latency profile was; on a PostgreSQL index the
 * tasks it was spread over, with the node that ran each; Cancel while it
 * runs, Retry once it failed or was cancelled), #/new (upload a weights
 * file, submit a job). #/nodes: the nodes serving this index.
 * When the API answers 401 the page asks for a token and keeps it in
 * sessionStorage (this tab only), sending it as Authorization: Bearer.
 * All text from the API goes into the page as text nodes, never as HTML. */
'use strict';

const POLL_MS = 1500;
const TOKEN_KEY = 'decompd.token';
const STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
const SVG_NS = 'http://www.w3.org/2000/svg';
const POLICIES = {
  budget: {knob: 'macs_reduction', label: 'MACs reduction (×)', placeholder: '2.0'},
  energy: {knob: 'energy', label: 'energy kept (0–1)', placeholder: '0.95'},
  max_error: {knob: 'max_error', label: 'max relative error', placeholder: '0.1'},
  ratio: {knob: 'ratio', label: 'fraction of largest rank', placeholder: '0.5'},
  fixed: {knob: 'rank', label: 'rank', placeholder: '16'},
  vbmf: {knob: null},
  amct: {knob: null},
};

/* ---- small DOM helpers ------------------------------------------------ */

/* h('tag.class', {attr: v, onclick: f}, child, …): an element; children are
 * nodes or strings (as text). */
function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split('.');
  const el = document.createElement(tag || 'div');
  if (classes.length) el.className = classes.join(' ');
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/* ---- formatting ------------------------------------------------------- */

/* 3 significant digits with an SI suffix: 409728 -> "410 k". */
function fmtCount(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '—';
  const units = [[1e12, ' T'], [1e9, ' G'], [1e6, ' M'], [1e3, ' k'], [1, '']];
  const a = Math.abs(n);
  if (a < 1000) return String(Math.round(n));
  for (let i = 0; i < units.length; i++) {
    const [d, u] = units[i];
    if (a < d) continue;
    const v = Number((n / d).toPrecision(3));
    if (Math.abs(v) >= 1000 && i > 0) return fmtCount(Math.sign(n) * units[i - 1][0]);
    return String(v) + u;
  }
  return String(n);
}

function fmtPct(x, digits = 1) {
  if (x === undefined || x === null) return '—';
  return (x * 100).toFixed(digits) + ' %';
}

/* A short time from a profile's seconds: "850 µs", "1.23 ms", "2.5 s". */
function fmtLatency(sec) {
  if (sec === undefined || sec === null || Number.isNaN(sec)) return '—';
  const a = Math.abs(sec);
  if (a === 0) return '0 ms';
  if (a < 1e-3) return Number((sec * 1e6).toPrecision(3)) + ' µs';
  if (a < 1) return Number((sec * 1e3).toPrecision(3)) + ' ms';
  return Number(sec.toPrecision(3)) + ' s';
}

function fmtSeconds(sec) {
  if (sec === undefined || sec === null) return '—';
  if (sec < 10) return sec.toFixed(1) + ' s';
  if (sec < 60) return Math.round(sec) + ' s';
  const m = Math.floor(sec / 60), r = Math.round(sec % 60);
  if (m < 60) return m + ' min ' + r + ' s';
  return Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
}

function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  const now = new Date();
  const t = d.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit', second: '2-digit'});
  if (d.toDateString() === now.toDateString()) return t;
  return d.toLocaleDateString([], {month: 'short', day: 'numeric'}) + ' ' + t;
}

function fmtBytes(n) {
  if (n < 1024) return n + ' B';
  const u = ['KiB', 'MiB', 'GiB', 'TiB'];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return n.toFixed(n < 10 ? 1 : 0) + ' ' + u[i];
}

function policyText(p) {
  if (!p) return '';
  if (typeof p === 'string') return p;
  const info = POLICIES[p.name];
  let t = p.name || '?';
  if (info && info.knob && p[info.knob] !== undefined) {
    const v = p[info.knob];
    if (p.name === 'budget') t += ' ×' + v + ' MACs';
    else if (info.knob === p.name) t += ' ' + v;
    else t += ' ' + info.knob + ' ' + v;
  } else if (p.name === 'budget' && p.params_reduction !== undefined) {
    t += ' ×' + p.params_reduction + ' params';
  }
  return t;
}

/* ---- the API: tokens, errors ------------------------------------------ */

let token = sessionStorage.getItem(TOKEN_KEY) || '';
let tokenPrompt = null; /* one pending prompt shared by every 401 */
let tokenResolve = null;

class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : 'HTTP ' + status);
    this.status = status;
    this.code = problem && problem.code;
  }
}

function authHeaders(extra) {
  const hd = new Headers(extra || {});
  if (token) hd.set('Authorization', 'Bearer ' + token);
  return hd;
}

async function problemOf(res) {
  try { return await res.json(); } catch (e) { return null; }
}

/* Ask for a token (the dialog); resolves once one is entered. */
function askToken(message) {
  if (tokenPrompt) return tokenPrompt;
  const dlg = document.getElementById('token-dialog');
  const err = document.getElementById('token-error');
  const input = document.getElementById('token-input');
  err.hidden = !message;
  err.textContent = message || '';
  input.value = '';
  tokenPrompt = new Promise((resolve) => { tokenResolve = resolve; });
  if (!dlg.open) dlg.showModal();
  input.focus();
  return tokenPrompt;
}

/* Settle the pending prompt: its callers try again (and ask again on
 * another 401). */
function tokenPromptDone() {
  const resolve = tokenResolve;
  tokenPrompt = tokenResolve = null;
  if (resolve) resolve();
}

function tokenDialogInit() {
  const dlg = document.getElementById('token-dialog');
  const input = document.getElementById('token-input');
  document.getElementById('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = input.value.trim();
    if (!v) return;
    token = v;
    sessionStorage.setItem(TOKEN_KEY, v);
    showTokenState();
    dlg.close();
  });
  /* Escape would leave the page with nothing to show and no way back to
   * the prompt; if the browser closes it anyway, the retry asks again. */
  dlg.addEventListener('cancel', (ev) => ev.preventDefault());
  dlg.addEventListener('close', tokenPromptDone);
}

function showTokenState() {
  document.getElementById('forget-token').hidden = !token;
}

/* fetch with the token; a 401 asks for a token and tries again; any other
 * failure throws an ApiError with the problem's detail. */
async function api(path, opts = {}) {
  for (let tries = 0; ; tries++) {
    const res = await fetch(path, {...opts, headers: authHeaders(opts.headers), cache: 'no-store'});
    if (res.status === 401) {
      const p = await problemOf(res);
      await askToken(tries || token ? 'That token was not accepted: ' + (p ? p.detail : '401') : '');
      continue;
    }
    if (!res.ok) throw new ApiError(res.status, await problemOf(res));
    return res;
  }
}

async function apiJSON(path, opts) {
  return (await api(path, opts)).json();
}

/* Upload with progress (fetch has none for request bodies). */
function uploadXHR(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open('POST', path);
    x.setRequestHeader('Content-Type', 'application/octet-stream');
    if (token) x.setRequestHeader('Authorization', 'Bearer ' + token);
    x.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    x.onload = () => {
      let body = null;
      try { body = JSON.parse(x.responseText); } catch (e) { /* not JSON */ }
      if (x.status === 401) {
        askToken(token ? 'That token was not accepted.' : '')
          .then(() => uploadXHR(path, file, onProgress)).then(resolve, reject);
      } else if (x.status >= 200 && x.status < 300) {
        resolve({status: x.status, body});
      } else {
        reject(new ApiError(x.status, body));
      }
    };
    x.onerror = () => reject(new Error('the upload failed (connection lost)'));
    x.send(file);
  });
}

/* Download an artifact. Without a token a plain link streams it; with one
 * the browser can't add the header to a navigation, so fetch it and hand
 * the bytes over as a blob. */
async function download(ev, url, name) {
  if (!token) return;
  ev.preventDefault();
  try {
    const blob = await (await api(url)).blob();
    const a = h('a', {href: URL.createObjectURL(blob), download: name});
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
  } catch (e) {
    flash(String(e.message || e));
  }
}

/* ---- live indicator, messages ----------------------------------------- */

function setLive(ok, text) {
  const el = document.getElementById('live');
  el.className = 'live ' + (ok ? 'ok' : 'down');
  el.textContent = text;
}

function flash(msg) {
  const el = h('div.flash', {role: 'alert'}, msg);
  document.body.append(el);
  setTimeout(() => el.remove(), 6000);
}

function errorBox(e) {
  return h('p.error', {role: 'alert'},
    e instanceof ApiError && e.code ? e.code + ': ' : '', String(e.message || e));
}

/* ---- routing and polling ---------------------------------------------- */

let viewGen = 0; /* bumped on every route change; stale loops stop */
let viewAbort = new AbortController(); /* aborts the view's event stream */

function route() {
  const gen = ++viewGen;
  viewAbort.abort();
  viewAbort = new AbortController();
  const hash = location.hash || '#/jobs';
  const view = document.getElementById('view');
  view.replaceChildren();
  let m;
  for (const a of document.querySelectorAll('[data-nav]'))
    a.classList.toggle('active', hash.startsWith('#/' + a.dataset.nav) &&
      !(a.dataset.nav === 'jobs' && /^#\/jobs\/./.test(hash)));
  if ((m = hash.match(/^#\/jobs\/([A-Za-z0-9_]+)/))) jobView(view, m[1], gen);
  else if (hash.startsWith('#/new')) newView(view, gen);
  else if (hash.startsWith('#/nodes')) nodesView(view, gen);
  else jobsView(view, new URLSearchParams(hash.split('?')[1] || '').get('state') || '', gen);
}

/* Run `tick` now and every POLL_MS until the view changes or it returns
 * false. Failures show in the live indicator and are retried. The returned
 * function runs it at once instead of waiting (an event came). */
function poll(gen, tick) {
  let timer = null, running = false, again = true, pending = false;
  const run = async () => {
    if (gen !== viewGen || again === false) return;
    if (running) { pending = true; return; }
    clearTimeout(timer);
    running = true;
    try {
      again = await tick();
      if (gen === viewGen) setLive(true, again === false ? 'up to date' : 'live');
    } catch (e) {
      if (gen !== viewGen) return;
      setLive(false, e instanceof ApiError ? 'error ' + e.status : 'daemon unreachable — retrying');
      if (e instanceof ApiError && e.status < 500) { /* retrying will not help */
        document.getElementById('view').prepend(errorBox(e));
        again = false;
        return;
      }
    } finally {
      running = false;
    }
    if (again === false || gen !== viewGen) return;
    if (pending) { pending = false; run(); return; }
    timer = setTimeout(run, POLL_MS);
  };
  run();
  return run;
}

/* Call onEvent for each `event: job` of a job's live event stream (fetch:
 * EventSource cannot send the token) until the stream ends, the view
 * changes (viewAbort) or it breaks; polling goes on meanwhile. */
async function followJob(id, onEvent) {
  try {
    const res = await fetch('/v1/jobs/' + id + '/events', {cache: 'no-store',
      headers: authHeaders({Accept: 'text/event-stream'}), signal: viewAbort.signal});
    if (!res.ok || !res.body) return;
    const reader = res.body.getReader(), dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (/^event: job$/m.test(block)) onEvent();
      }
    }
  } catch (e) { /* aborted with the view, or broken: polling remains */ }
}

/* ---- models and policies, cached -------------------------------------- */

const models = new Map();       /* id -> model */
const jobPolicies = new Map();  /* job id -> canonical policy (never changes) */

async function refreshModels() {
  const doc = await apiJSON('/v1/models');
  for (const m of doc.models) models.set(m.id, m);
  return doc.models;
}

function modelLabel(id) {
  const m = models.get(id);
  return m && m.name ? m.name : id;
}

/* Fetch the policies of a few jobs not seen yet (the list omits them). */
async function fillPolicies(jobs) {
  const missing = jobs.filter((j) => !jobPolicies.has(j.id)).slice(0, 8);
  await Promise.all(missing.map(async (j) => {
    try {
      const d = await apiJSON('/v1/jobs/' + j.id);
      jobPolicies.set(j.id, d.policy || null);
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      jobPolicies.set(j.id, null); /* deleted meanwhile */
    }
  }));
  return missing.length > 0;
}

/* ---- the job list ----------------------------------------------------- */

function stateBadge(state, extra) {
  return h('span.badge.state-' + state, {}, state + (extra || ''));
}

/* Where a running job is inside its current layer (progress.current). */
function currentText(c) {
  return c ? c.layer + ': ' + c.step + ' ' + Math.floor(c.fraction * 100) + '%' : '';
}

function progressBar(done, total, state, current) {
  const frac = total > 0 ? done / total : (state === 'succeeded' ? 1 : 0);
  const bar = h('div.bar', {role: 'progressbar', 'aria-valuemin': 0,
    'aria-valuemax': total || 1, 'aria-valuenow': done});
  const fill = h('div.fill.state-' + state);
  fill.style.width = (frac * 100).toFixed(1) + '%';
  bar.append(fill);
  const box = h('div.progress', {title: currentText(current)}, bar,
    h('span.num', {}, total ? done + '/' + total : '—'));
  if (current) box.append(h('span.current.dim', {}, currentText(current)));
  return box;
}

function jobsView(view, state, gen) {
  const filters = h('nav.filters', {'aria-label': 'filter by state'},
    ['', ...STATES].map((st) => h('a' + (st === state ? '.active' : ''),
      {href: '#/jobs' + (st ? '?state=' + st : ''), 'data-state': st || 'all'},
      st || 'all')));
  const tbody = h('tbody');
  const table = h('table.jobs', {id: 'jobs'},
    h('thead', {}, h('tr', {},
      ['State', 'Job', 'Model', 'Policy', 'Progress', 'Node', 'Started', 'Duration', 'Error']
        .map((c) => h('th', {}, c)))),
    tbody);
  const empty = h('p.empty', {hidden: true});
  view.append(h('div.head', {}, h('h1', {}, 'Jobs'), filters), table, empty);

  poll(gen, async () => {
    const doc = await apiJSON('/v1/jobs?limit=100' + (state ? '&state=' + state : ''));
    const jobs = doc.jobs;
    if (jobs.some((j) => !models.has(j.model))) await refreshModels();
    await fillPolicies(jobs);
    if (gen !== viewGen) return false;
    tbody.replaceChildren(...jobs.map(jobRow));
    empty.hidden = jobs.length > 0;
    empty.textContent = state ? 'No ' + state + ' jobs.'
      : 'No jobs yet. Upload a model and submit a job on the New job page, or with decompctl submit.';
    table.hidden = jobs.length === 0;
    return true;
  });
}

function jobRow(j) {
  const href = '#/jobs/' + j.id;
  const err = j.error ? j.error.code + ': ' + j.error.message : '';
  return h('tr', {'data-job': j.id, 'data-state': j.state},
    h('td', {}, stateBadge(j.state, j.cancel_requested && j.state === 'running' ? ' (cancelling)' : '')),
    h('td.mono', {}, h('a', {href}, j.id)),
    h('td', {title: j.model}, modelLabel(j.model)),
    h('td', {}, policyText(jobPolicies.get(j.id))),
    h('td', {}, progressBar(j.progress.layers_done, j.progress.layers_total, j.state,
      j.progress.current)),
    h('td.mono', {}, j.node || ''),
    h('td', {title: j.started_at || ''}, fmtTime(j.started_at)),
    h('td.num', {}, fmtSeconds(j.seconds)),
    h('td.err', {title: err}, err));
}

/* ---- nodes ------------------------------------------------------------ */

/* The daemons serving this index (GET /v1/nodes), as their last heartbeats
 * left them; the one answering is marked. */
function nodesView(view, gen) {
  const tbody = h('tbody');
  const table = h('table.nodes', {id: 'nodes'},
    h('thead', {}, h('tr', {},
      ['Node', 'State', 'Address', 'Version', 'Workers', 'Running', 'Last heartbeat', 'Started']
        .map((c) => h('th', {}, c)))),
    tbody);
  view.append(h('div.head', {}, h('h1', {}, 'Nodes')), table);
  poll(gen, async () => {
    const doc = await apiJSON('/v1/nodes');
    if (gen !== viewGen) return false;
    tbody.replaceChildren(...doc.nodes.map((n) =>
      h('tr', {'data-node': n.id, 'data-alive': String(n.alive)},
        h('td.mono', {}, n.id + (n.id === doc.self ? ' (this node)' : '')),
        h('td', {}, h('span.badge.state-' + (n.alive ? 'succeeded' : 'failed'), {},
          n.alive ? 'alive' : 'no heartbeat')),
        h('td.mono', {}, n.address),
        h('td', {}, n.version),
        h('td.num', {}, String(n.workers)),
        h('td.num', {}, String(n.running)),
        h('td', {title: n.heartbeat_at}, fmtTime(n.heartbeat_at)),
        h('td', {title: n.started_at}, fmtTime(n.started_at)))));
    return true;
  });
}

/* ---- one job ---------------------------------------------------------- */

function jobView(view, id, gen) {
  const top = h('div');
  const tasks = h('div');
  const results = h('div');
  view.append(h('p.back', {}, h('a', {href: '#/jobs'}, '← all jobs')), top, tasks, results);
  let infoLoaded = false;

  const now = poll(gen, async () => {
    const [j, t] = await Promise.all([apiJSON('/v1/jobs/' + id),
      apiJSON('/v1/jobs/' + id + '/tasks')]);
    if (!models.has(j.model)) await refreshModels().catch(() => {});
    if (gen !== viewGen) return false;
    top.replaceChildren(jobHeader(j));
    tasks.replaceChildren(tasksSection(t.tasks));
    const finished = !['queued', 'running'].includes(j.state);
    if (j.state === 'succeeded' && !infoLoaded) {
      const info = await apiJSON('/v1/jobs/' + id + '/artifacts/decompose_info.json');
      if (gen !== viewGen) return false;
      infoLoaded = true;
      results.replaceChildren(...infoSections(info, j));
    } else if (!finished) {
      results.replaceChildren(liveLayers(j));
    } else if (!infoLoaded) {
      results.replaceChildren();
    }
    return !finished;
  });
  followJob(id, now); /* live: each event refreshes the page at once */
}

function jobHeader(j) {
  const actions = h('div.actions');
  if (j.state === 'queued' || j.state === 'running') {
    actions.append(h('button', {type: 'button', onclick: async (ev) => {
      ev.target.disabled = true;
      try { await api('/v1/jobs/' + j.id + '/cancel', {method: 'POST'}); } catch (e) { flash(e.message); }
    }}, j.cancel_requested ? 'Cancelling…' : 'Cancel job'));
  }
  /* Submits are idempotent by content: submitting a failed job's input
   * again only returns it. Retry runs it again, as a new attempt. */
  if (j.state === 'failed' || j.state === 'cancelled') {
    actions.append(h('button', {type: 'button', 'data-action': 'retry', onclick: async (ev) => {
      ev.target.disabled = true;
      try {
        await api('/v1/jobs/' + j.id + '/retry', {method: 'POST'});
        route(); /* follow it again: polling and its event stream */
      } catch (e) {
        flash(e.message);
        ev.target.disabled = false;
      }
    }}, 'Retry'));
  }
  const m = models.get(j.model);
  const dl = (k, ...v) => [h('dt', {}, k), h('dd', {}, ...v)];
  const meta = h('dl.meta', {},
    dl('Model', m ? m.name || '(unnamed)' : '', ' ', h('span.mono.dim', {}, j.model),
      m ? h('span.dim', {}, ' · ' + m.format + ' · ' + fmtBytes(m.size)) : ''),
    dl('Policy', policyText(j.policy) || '—', ' ', h('span.mono.dim.small', {}, j.policy ? JSON.stringify(j.policy) : '')),
    dl('Calibration', j.calibration ? h('span.mono', {id: 'job-calibration', title: j.calibration},
      j.calibration.slice(0, 19) + '…') : 'none (weights only)'),
    dl('Latency profile', j.profile ? h('span.mono', {id: 'job-profile', title: j.profile},
      j.profile.slice(0, 19) + '…') : 'none (MACs only)'),
    dl('Progress', progressBar(j.progress.layers_done, j.progress.layers_total, j.state,
      j.progress.current)),
    dl('Created', fmtTime(j.created_at)),
    dl('Started', fmtTime(j.started_at)),
    dl('Finished', fmtTime(j.finished_at)),
    dl('Duration', fmtSeconds(j.seconds)),
    dl('Attempts', String(j.attempts)),
    dl('Node', j.node ? h('a.mono', {id: 'job-node', href: '#/nodes'}, j.node) : '—'));
  const parts = [h('div.head', {}, h('h1', {}, 'Job ', h('span.mono', {}, j.id)),
    stateBadge(j.state), actions), meta];
  if (j.error) parts.push(h('p.error', {role: 'alert'}, j.error.code + ': ' + j.error.message));
  if (j.artifacts && j.artifacts.length) {
    parts.push(h('section.artifacts', {}, h('h2', {}, 'Artifacts'), h('ul', {},
      j.artifacts.map((a) => h('li', {},
        h('a', {href: a.url, download: a.name, onclick: (ev) => download(ev, a.url, a.name)}, a.name),
        h('span.dim', {}, ' ' + fmtBytes(a.size) + ' · '),
        h('span.mono.dim', {title: a.digest}, a.digest.slice(0, 19) + '…'))))));
  }
  return h('div', {}, ...parts);
}

/* The tasks a job was spread over (GET /v1/jobs/{id}/tasks: on a
 * PostgreSQL index, stage by stage) and the node that ran each; nothing
 * for a job run whole, as every job is on the embedded store. */
function tasksSection(tasks) {
  if (!tasks.length) return '';
  const nodes = new Set(tasks.filter((t) => t.node).map((t) => t.node));
  const done = tasks.filter((t) => t.state === 'done').length;
  return h('section', {id: 'tasks'}, h('h2', {}, 'Tasks'),
    h('p.dim', {}, 'Spread over ' + tasks.length + ' task' + (tasks.length === 1 ? '' : 's') +
      ' (' + done + ' done) on ' + nodes.size + ' node' + (nodes.size === 1 ? '' : 's') +
      ': the layers\' spectra in groups, the plan (every layer\'s rank), then the planned layers\' factors.'),
    h('div.scroll', {}, h('table.tasks', {id: 'tasks-table'},
      h('thead', {}, h('tr', {}, ['Stage', 'Index', 'Layers', 'State', 'Node', 'Attempts', 'Time']
        .map((c) => h('th', {}, c)))),
      h('tbody', {}, tasks.map(taskRow)))));
}

/* A task's row: its layers counted, their names in full on hover; its
 * time from start to finish (so far, while it runs). */
function taskRow(t) {
  const n = t.layers.length;
  const end = t.finished_at ? Date.parse(t.finished_at) : t.state === 'running' ? Date.now() : null;
  const secs = t.started_at && end !== null ? Math.max(0, end - Date.parse(t.started_at)) / 1000 : null;
  const err = t.error ? t.error.code + ': ' + t.error.message : '';
  return h('tr', {'data-stage': t.stage, 'data-index': t.index, 'data-state': t.state,
    'data-node': t.node || ''},
  h('td', {}, t.stage),
  h('td.num', {}, String(t.index)),
  h('td.task-layers', {title: n ? t.layers.join('\n') : 'every layer\'s rank, from the spectra'},
    n ? [h('span.count', {}, n + (n === 1 ? ' layer' : ' layers')), ' ', h('span.mono.dim', {}, t.layers.join(', '))]
      : h('span.dim', {}, 'the whole model')),
  h('td', {title: err || null}, stateBadge(t.state), err ? h('span.err', {}, ' ' + err) : ''),
  h('td.mono', {}, t.node ? h('a', {href: '#/nodes'}, t.node) : '—'),
  h('td.num', {}, String(t.attempts)),
  h('td.num', {title: t.started_at ? t.started_at + ' → ' + (t.finished_at || '') : null}, fmtSeconds(secs)));
}

/* While a job runs: the layers done so far, from the job itself. */
function liveLayers(j) {
  const rows = (j.layers || []).map((l) => h('tr', {},
    h('td.mono', {}, l.name),
    h('td.num', {}, l.rank > 0 ? l.rank + ' / ' + l.max_rank : '—'),
    h('td.num', {}, fmtSeconds(l.seconds)),
    h('td.dim', {}, l.skip_reason || '')));
  return h('section', {}, h('h2', {}, 'Layers so far'),
    rows.length ? h('table.layers', {id: 'live-layers'},
      h('thead', {}, h('tr', {}, ['Layer', 'Rank', 'Time', 'Note'].map((c) => h('th', {}, c)))),
      h('tbody', {}, rows))
      : h('p.empty', {}, j.state === 'queued' ? 'Waiting for a worker…' : 'Starting…'));
}

/* The spectrum entries of an info layer (decomposed: in stats; skipped: at
 * the top), one array per group. */
function spectraOf(entry) {
  const src = entry.stats || entry;
  if (src.singular_values_by_group) return src.singular_values_by_group;
  if (src.singular_values) return [src.singular_values];
  return null;
}

/* Retained energy after rank r, r = 0..k: cumsum(σ²)/Σσ² summed over
 * groups (every group takes the same rank). */
function energyCurve(groups) {
  const k = Math.max(...groups.map((g) => g.length));
  const e = new Float64Array(k + 1);
  for (const g of groups) {
    let acc = 0;
    for (let i = 0; i < k; i++) { acc += i < g.length ? g[i] * g[i] : 0; e[i + 1] += acc; }
  }
  const total = e[k];
  return Array.from(e, (v) => (total > 0 ? v / total : 1));
}

/* Spec order: the job's layer list when it has one, else layers then
 * skipped as the info file gives them. */
function infoRows(info, j) {
  const byName = new Map();
  for (const l of info.layers || []) byName.set(l.name, {kind: 'layer', e: l});
  for (const l of info.skipped || []) byName.set(l.name, {kind: 'skipped', e: l});
  const rows = [];
  for (const l of j.layers || []) {
    const r = byName.get(l.name);
    if (r) { rows.push(r); byName.delete(l.name); }
  }
  for (const r of byName.values()) rows.push(r);
  return rows;
}

/* A layer's shape from the info file's `original` (its spec entry):
 * "in→out 3×3" for a conv (with its stride and groups when not 1),
 * "in→out" features for a Linear; "" when the entry does not say. */
function shapeText(o) {
  if (!o) return '';
  if (o.type === 'Linear') return o.in_features + '→' + o.out_features;
  if (o.in_channels === undefined) return o.type || '';
  const k = o.kernel_size || [];
  let t = o.in_channels + '→' + o.out_channels + (k.length ? ' ' + k.join('×') : '');
  if (o.stride && o.stride.some((v) => v !== 1)) t += ' /' + o.stride.join('×');
  if (o.groups > 1) t += ' g' + o.groups;
  return t;
}

function infoSections(info, j) {
  const rows = infoRows(info, j);
  const sum = info.summary || {};
  const card = (k, v, sub) => h('div.card', {}, h('div.k', {}, k), h('div.v', {}, v),
    sub ? h('div.sub', {}, sub) : '');
  const macsRatio = sum.macs_after > 0 ? sum.macs_before / sum.macs_after : null;
  /* A calibrated run: its layers' errors on the data (output error). */
  const cal = info.calibration || null;
  const outErrs = (info.layers || []).map((l) => (l.stats || {}).output_relative_error)
    .filter((x) => x !== undefined);
  /* A profiled run: the latencies its profile predicts, in seconds. */
  const prof = info.profile || null;
  const timed = prof && sum.latency_before !== undefined;
  const speedup = timed && sum.latency_after > 0 ? sum.latency_before / sum.latency_after : null;
  const cards = h('div.cards', {},
    card('Layers decomposed', String(sum.layers_decomposed ?? (info.layers || []).length),
      'of ' + rows.length + ' (' + (sum.layers_skipped ?? (info.skipped || []).length) + ' left alone)'),
    card('MACs', fmtCount(sum.macs_before) + ' → ' + fmtCount(sum.macs_after),
      macsRatio ? '×' + macsRatio.toFixed(2) + ' fewer' : ''),
    card('Parameters', fmtCount(sum.params_before) + ' → ' + fmtCount(sum.params_after),
      sum.params_after > 0 ? '×' + (sum.params_before / sum.params_after).toFixed(2) + ' fewer' : ''),
    card('Worst relative error', sum.worst_relative_error !== undefined ? fmtPct(sum.worst_relative_error, 2) : '—'),
    cal ? h('div.card', {id: 'calibration-card'}, h('div.k', {}, 'Calibration'),
      h('div.v', {}, outErrs.length ? fmtPct(Math.max(...outErrs), 2) : '—'),
      h('div.sub', {}, 'worst output error · ' + cal.layers + ' layer' + (cal.layers === 1 ? '' : 's') + ' · ',
        h('span.mono', {title: cal.digest || ''}, cal.digest ? cal.digest.slice(0, 19) + '…' : 'in memory')))
      : '',
    timed ? h('div.card', {id: 'latency-card'}, h('div.k', {}, 'Predicted latency'),
      h('div.v', {}, fmtLatency(sum.latency_before) + ' → ' + fmtLatency(sum.latency_after)),
      h('div.sub', {}, (speedup ? '×' + speedup.toFixed(2) + ' faster' : '—') +
        ' · profiled on ' + (prof.device_name || 'an unnamed device') + ' · ',
      h('span.mono', {title: prof.digest || ''}, prof.digest ? prof.digest.slice(0, 19) + '…' : 'in memory')))
      : '');

  const table = h('table.layers', {id: 'layers', 'data-rows': rows.length},
    h('thead', {}, h('tr', {}, ['Layer', 'Shape', 'Method', 'Rank', 'Params', 'MACs']
      .concat(timed ? ['Latency'] : [], ['Rel. error', 'Output error', 'Energy kept', 'Note'])
      .map((c) => h('th', {title: c === 'Output error'
        ? 'relative error of the layer\'s output on the calibration data: ‖(W − W̃)S‖/‖WS‖, SSᵀ = the inputs\' Gram'
        : c === 'Rel. error' ? 'relative error of the weights: ‖W − W̃‖/‖W‖'
          : c === 'Latency' ? 'predicted from the latency profile: the layer as it is → the chosen pair at its rank'
            : null}, c)))),
    h('tbody', {}, rows.map((r) => layerRow(r, timed))));

  const curves = rows.filter((r) => spectraOf(r.e));
  return [
    cards,
    h('section', {}, h('h2', {}, 'Model MACs, before and after'), compareChart(info, rows, MACS_CHART)),
    timed ? h('section', {id: 'latency'}, h('h2', {}, 'Predicted latency, before and after'),
      h('p.dim', {}, 'From the latency profile measured on ' + (prof.device_name || 'an unnamed device') +
        (prof.input_shape ? ' with input ' + JSON.stringify(prof.input_shape) : '') +
        ': the whole model over its profiled layers (a layer left alone counts at its own time), then per decomposed layer.'),
      compareChart(info, rows, LATENCY_CHART)) : '',
    h('section', {}, h('h2', {}, 'Layers'), h('div.scroll', {}, table)),
    h('section', {}, h('h2', {}, 'Retained energy versus rank'),
      h('p.dim', {}, 'cumsum(σ²)/Σσ² per layer; the marked point is the chosen rank.'),
      cal ? h('p.dim', {}, 'Calibrated layers chart the spectrum whitened by their inputs\' Gram: the energy kept is of their output on the data.') : '',
      curves.length ? h('div.curves', {id: 'curves'}, curves.map(energyChart))
        : h('p.empty', {}, 'This info file records no singular values.')),
  ];
}

/* A layer's row; `timed`: the run had a latency profile (a Latency
 * column). */
function layerRow(r, timed) {
  const l = r.e;
  const o = l.original || null;
  const shapeCell = h('td.shape', {title: o ? o.type : null},
    o && o.type === 'Linear' ? h('span.dim', {}, 'Linear ') : '', shapeText(o));
  if (r.kind === 'skipped') {
    return h('tr.skipped', {'data-layer': l.name},
      h('td.mono', {}, l.name), shapeCell, h('td.method', {}, '—'), h('td.num', {}, '—'),
      h('td.note', {colspan: timed ? 7 : 6}, 'left alone: ' + (l.reason || 'no reason given')));
  }
  const st = l.stats || {};
  const rankCell = h('td.num', {}, String(l.rank), h('span.dim', {}, ' / ' + l.max_rank));
  const arrow = (a, b) => [fmtCount(a), h('span.dim', {}, ' → '), fmtCount(b)];
  const out = st.output_relative_error;
  return h('tr', {'data-layer': l.name, 'data-method': l.method || 'spatial_svd'},
    h('td.mono', {}, l.name), shapeCell,
    h('td.method.mono', {}, l.method || 'spatial_svd'), rankCell,
    h('td.num', {}, arrow(st.params_before, st.params_after)),
    h('td.num', {}, arrow(st.macs_before, st.macs_after),
      st.macs_ratio !== undefined ? h('span.dim', {}, ' (' + fmtPct(st.macs_ratio, 0) + ')') : ''),
    timed ? h('td.num.latency', {}, st.latency_before !== undefined
      ? [fmtLatency(st.latency_before), h('span.dim', {}, ' → '), fmtLatency(st.latency_after),
        st.latency_before > 0 ? h('span.dim', {}, ' (' + fmtPct(st.latency_after / st.latency_before, 0) + ')') : '']
      : h('span.dim', {}, '—')) : '',
    h('td.num', {}, fmtPct(st.relative_error, 2)),
    h('td.num.output-error', {title: out !== undefined && st.samples !== undefined
      ? 'on ' + fmtCount(st.samples) + ' calibration samples' : null},
    out !== undefined ? fmtPct(out, 2) : h('span.dim', {}, '—')),
    h('td.num', {}, fmtPct(st.energy_retained, 2)),
    h('td.dim', {}, l.order ? l.order.replace('_', ' ') : ''));
}

/* ---- charts (hand-written SVG) ---------------------------------------- */

/* What compareChart draws: the info file's fields (summary and per layer
 * stats), how to show a value, the chart's class and what it is of. */
const MACS_CHART = {before: 'macs_before', after: 'macs_after', fmt: fmtCount,
  unit: ' MACs', cls: 'macs', of: 'MACs'};
const LATENCY_CHART = {before: 'latency_before', after: 'latency_after', fmt: fmtLatency,
  unit: '', cls: 'latency', of: 'predicted latency'};

/* The whole model's figure (q: MACS_CHART, LATENCY_CHART) before and
 * after, then per decomposed layer. */
function compareChart(info, rows, q) {
  const sum = info.summary || {};
  const layers = rows.filter((r) => r.kind === 'layer' && r.e.stats && r.e.stats[q.before] !== undefined);
  const W = 720, labelW = 170, barW = W - labelW - 90, rowH = 16, gap = 4;
  const bars = [{label: 'whole model', before: sum[q.before], after: sum[q.after], total: true}]
    .concat(layers.map((r) => ({label: r.e.name, before: r.e.stats[q.before], after: r.e.stats[q.after]})));
  const H = 24 + bars.length * (rowH + gap) + (bars.length > 1 ? 10 : 0);
  const svg = s('svg', {class: 'chart ' + q.cls, viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': q.of + ' before and after, whole model and per layer'});
  const maxLayer = Math.max(1e-30, ...layers.map((r) => r.e.stats[q.before]));
  svg.append(
    s('rect', {x: labelW, y: 4, width: 10, height: 10, class: 'before'}),
    s('text', {x: labelW + 14, y: 13, class: 'legend'}, 'before'),
    s('rect', {x: labelW + 70, y: 4, width: 10, height: 10, class: 'after'}),
    s('text', {x: labelW + 84, y: 13, class: 'legend'}, 'after'));
  let y = 24;
  bars.forEach((b, i) => {
    if (i === 1) y += 10; /* the whole model apart from its layers */
    /* A layer may be slower after (a policy told to allow it): its bar
     * then runs past its before bar, never past the chart. */
    const top = b.total ? Math.max(1e-30, b.before, b.after) : Math.max(maxLayer, b.after);
    const scale = barW / top;
    const wb = Math.max(1, b.before * scale), wa = Math.max(1, b.after * scale);
    const label = b.label.length > 26 ? '…' + b.label.slice(-25) : b.label;
    svg.append(s('g', {class: b.total ? 'total' : 'layer', 'data-layer': b.total ? null : b.label},
      s('title', {}, `${b.label}: ${q.fmt(b.before)} → ${q.fmt(b.after)}${q.unit}`),
      s('text', {x: labelW - 6, y: y + rowH - 4, class: 'label', 'text-anchor': 'end'}, label),
      s('path', {d: `M${labelW} ${y}h${wb.toFixed(1)}v${rowH}h${(-wb).toFixed(1)}z`, class: 'before'}),
      s('path', {d: `M${labelW} ${y + 3}h${wa.toFixed(1)}v${rowH - 6}h${(-wa).toFixed(1)}z`, class: 'after'}),
      s('text', {x: labelW + Math.max(wb, wa) + 4, y: y + rowH - 4, class: 'value'},
        q.fmt(b.after) + (b.before > 0 ? ' (' + fmtPct(b.after / b.before, 0) + ')' : ''))));
    y += rowH + gap;
  });
  return svg;
}

/* One layer's retained energy against rank, the chosen rank marked. */
function energyChart(r) {
  const l = r.e;
  const e = energyCurve(spectraOf(l));
  const k = e.length - 1;
  const W = 260, H = 150, L = 34, R = 8, T = 8, B = 22;
  const x = (rk) => L + (rk / Math.max(1, k)) * (W - L - R);
  const y = (v) => T + (1 - v) * (H - T - B);
  const step = Math.max(1, Math.floor(k / 300));
  let d = `M${x(0).toFixed(1)} ${y(e[0]).toFixed(1)}`;
  for (let i = 1; i <= k; i++)
    if (i % step === 0 || i === k) d += `L${x(i).toFixed(1)} ${y(e[i]).toFixed(1)}`;
  const svg = s('svg', {class: 'chart energy', viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': `${l.name}: retained energy versus rank`});
  for (const v of [0, 0.5, 1]) {
    svg.append(s('line', {x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid'}),
      s('text', {x: L - 4, y: y(v) + 3, class: 'tick', 'text-anchor': 'end'}, v * 100 + '%'));
  }
  svg.append(
    s('text', {x: L, y: H - 6, class: 'tick'}, '0'),
    s('text', {x: W - R, y: H - 6, class: 'tick', 'text-anchor': 'end'}, String(k)),
    s('text', {x: (L + W - R) / 2, y: H - 6, class: 'tick', 'text-anchor': 'middle'}, 'rank'),
    s('path', {d, class: 'curve' + (r.kind === 'skipped' ? ' skipped' : '')}));
  let caption;
  if (r.kind === 'layer') {
    /* The curve is the optimum at each rank; the caption gives what the
     * decomposition kept (the info file's figure), which a truncated SVD
     * may put a little under the curve. */
    const rk = Math.min(l.rank, k);
    /* A calibrated layer's spectrum is its whitened one: what it keeps is
     * its output's energy on the data. */
    const st = l.stats || {};
    const kept = st.output_energy_retained !== undefined ? st.output_energy_retained
      : st.energy_retained !== undefined ? st.energy_retained : e[rk];
    svg.append(
      s('line', {x1: x(rk), x2: x(rk), y1: T, y2: H - B, class: 'chosen'}),
      s('circle', {cx: x(rk), cy: y(e[rk]), r: 3.5, class: 'chosen'},
        s('title', {}, `rank ${l.rank}: ${fmtPct(e[rk], 2)} of the energy at best, ${fmtPct(kept, 2)} kept`)));
    caption = `R = ${l.rank} of ${l.max_rank} · ${fmtPct(kept, 2)}`;
  } else {
    caption = 'left alone';
  }
  return h('figure.curve', {'data-layer': l.name, title: r.kind === 'skipped' ? l.name + ' left alone: ' + (l.reason || '') : null},
    h('figcaption', {}, h('span.mono', {}, l.name), h('span.dim', {}, caption)), svg);
}

/* ---- upload and submit ------------------------------------------------ */

function newView(view, gen) {
  /* upload */
  const file = h('input', {type: 'file', id: 'weights-file', accept: '.pth,.pt,.bin,.safetensors', required: true});
  const name = h('input', {type: 'text', id: 'model-name', placeholder: 'from the file name', maxlength: 255});
  const upBar = h('div.fill.state-running');
  const upMsg = h('p.msg');
  const upBtn = h('button', {type: 'submit'}, 'Upload');
  file.addEventListener('change', () => {
    if (file.files[0] && !name.value) name.value = file.files[0].name.replace(/\.[^.]+$/, '');
  });
  const upForm = h('form.card.form', {id: 'upload-form'},
    h('h2', {}, '1. Upload a weights file'),
    h('p.dim', {}, 'A torch.save state dict (.pth) or safetensors file. It is checked before it is kept; the same bytes twice give the same model.'),
    h('label', {}, 'File ', file), h('label', {}, 'Name ', name),
    h('div.actions', {}, upBtn, h('div.bar.wide', {}, upBar)), upMsg);
  upForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) return;
    upBtn.disabled = true;
    upMsg.replaceChildren();
    upBar.style.width = '0%';
    try {
      const q = name.value ? '?name=' + encodeURIComponent(name.value) : '';
      const res = await uploadXHR('/v1/models' + q, f, (p) => { upBar.style.width = (p * 100).toFixed(0) + '%'; });
      upBar.style.width = '100%';
      const m = res.body;
      models.set(m.id, m);
      /* the model chosen below first, then the message that says so */
      await fillModels(m.id);
      upMsg.replaceChildren(h('span.ok', {}, (res.status === 201 ? 'Uploaded ' : 'Already here: ') +
        (m.name || m.id) + ' (' + m.id + ', ' + m.format + ', ' + m.tensors + ' tensors, ' + fmtBytes(m.size) + ')'));
    } catch (e) {
      upMsg.replaceChildren(errorBox(e));
    } finally {
      upBtn.disabled = false;
    }
  });

  /* submit */
  const model = h('select', {id: 'model-select', required: true});
  const spec = h('input', {type: 'file', id: 'spec-file', accept: '.json,application/json'});
  const specNote = h('span.dim');
  const policy = h('select', {id: 'policy-select'},
    Object.keys(POLICIES).map((p) => h('option', {value: p}, p)));
  const knob = h('input', {type: 'number', id: 'policy-knob', step: 'any'});
  const knobLabel = h('span');
  const advanced = h('textarea', {id: 'policy-json', rows: 3, spellcheck: 'false',
    placeholder: '{"name": "energy", "energy": 0.95, "exclude": ["conv1"]}'});
  const subMsg = h('p.msg');
  const subBtn = h('button', {type: 'submit'}, 'Submit job');
  const showKnob = () => {
    const p = POLICIES[policy.value];
    knob.hidden = !p.knob;
    knobLabel.textContent = p.knob ? p.label + ' ' : '(no knob)';
    knob.placeholder = p.placeholder || '';
    knob.value = '';
  };
  policy.addEventListener('change', showKnob);
  const showSpecNote = () => {
    const m = models.get(model.value);
    specNote.textContent = m && m.has_spec ? ' optional: this model has a layer spec attached'
      : m && m.format === 'torchscript' ? ' optional: a TorchScript model carries its own'
      : ' required: the model has no layer spec attached';
  };
  model.addEventListener('change', showSpecNote);
  const subForm = h('form.card.form', {id: 'submit-form'},
    h('h2', {}, '2. Submit a job'),
    h('label', {}, 'Model ', model),
    h('label', {}, 'Layer spec (JSON) ', spec, specNote),
    h('label', {}, 'Policy ', policy), h('label', {}, knobLabel, knob),
    h('details', {}, h('summary', {}, 'Policy as JSON (overrides the two fields above)'), advanced),
    h('div.actions', {}, subBtn), subMsg);
  subForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    subMsg.replaceChildren();
    const body = {model: model.value};
    try {
      if (!body.model) throw new Error('choose or upload a model first');
      if (spec.files[0]) {
        try { body.spec = JSON.parse(await spec.files[0].text()); } catch (e) {
          throw new Error('layer spec: not JSON (' + e.message + ')');
        }
      }
      if (advanced.value.trim()) {
        try { body.policy = JSON.parse(advanced.value); } catch (e) {
          throw new Error('policy: not JSON (' + e.message + ')');
        }
      } else {
        const p = POLICIES[policy.value];
        body.policy = p.knob && knob.value !== '' ? {name: policy.value, [p.knob]: Number(knob.value)} : policy.value;
      }
      subBtn.disabled = true;
      const j = await apiJSON('/v1/jobs', {method: 'POST', body: JSON.stringify(body),
        headers: {'Content-Type': 'application/json'}});
      location.hash = '#/jobs/' + j.id;
    } catch (e) {
      subMsg.replaceChildren(errorBox(e));
    } finally {
      subBtn.disabled = false;
    }
  });

  async function fillModels(select) {
    const list = await refreshModels();
    const keep = select || model.value;
    model.replaceChildren(...(list.length ? list.map((m) => h('option', {value: m.id},
      (m.name || '(unnamed)') + ' · ' + m.id + ' · ' + m.format + (m.has_spec ? ' · has spec' : '') +
      (m.calibration ? ' · calibrated' : '') + (m.profile ? ' · profiled' : '')))
      : [h('option', {value: ''}, 'no models yet: upload one above')]));
    if (keep && models.has(keep)) model.value = keep;
    showSpecNote();
  }

  view.append(h('h1', {}, 'New job'), h('div.forms', {}, upForm, subForm));
  showKnob();
  fillModels().then(() => setLive(true, 'live'), (e) => {
    if (gen === viewGen) subMsg.replaceChildren(errorBox(e));
  });
}

/* ---- start ------------------------------------------------------------ */

document.getElementById('forget-token').addEventListener('click', () => {
  token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  showTokenState();
  route();
});
window.addEventListener('hashchange', route);
tokenDialogInit();
showTokenState();
route();
