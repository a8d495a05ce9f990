// Ferry dashboard: plain JavaScript, no build step, no dependencies.
//
// Every value that comes from the broker (topic and group names, keys, tags,
// properties, bodies, error messages) is user data: it reaches the DOM only
// through the `html` tagged template below, which escapes every
// interpolation unless it is a fragment built by `html` itself.
'use strict';

// ---------------------------------------------------------------- escaping

class Safe {
  constructor(s) { this.s = s; }
  toString() { return this.s; }
}

const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ESC[c]);
}

function piece(v) {
  if (v instanceof Safe) return v.s;
  if (Array.isArray(v)) return v.map(piece).join('');
  if (v === null || v === undefined || v === false) return '';
  return esc(v);
}

/** A template whose interpolations are escaped; its result may be nested. */
function html(strings, ...values) {
  let out = strings[0];
  for (let i = 0; i < values.length; i++) out += piece(values[i]) + strings[i + 1];
  return new Safe(out);
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** One call of the admin API; refusals become an ApiError naming the call. */
async function api(method, path, body) {
  const init = { method, cache: 'no-store', headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(`${method} ${path}: the broker did not answer (${e.message})`, 0, '');
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) {
    const code = data && data.code ? data.code : '';
    const why = data && data.message ? data.message : (text.trim() || res.statusText);
    throw new ApiError(`${method} ${path} refused (HTTP ${res.status}${code ? ', ' + code : ''}): ${why}`,
      res.status, code);
  }
  if (data === null) throw new ApiError(`${method} ${path}: the answer is not JSON`, res.status, '');
  return data;
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------- formatting

const numberFormat = new Intl.NumberFormat('en-US');
function fmtNum(n) { return n === null || n === undefined ? '–' : numberFormat.format(n); }

function pad(n, w = 2) { return String(n).padStart(w, '0'); }

function fmtTime(ms) {
  if (ms === null || ms === undefined) return '–';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function fmtClock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtSpan(ms) {
  const s = Math.abs(ms) / 1000;
  if (s < 1) return `${Math.round(Math.abs(ms))} ms`;
  if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

/** "in 12 s" or "3 min ago" relative to now. */
function fmtRel(ms) {
  if (ms === null || ms === undefined) return '–';
  const d = ms - Date.now();
  return d >= 0 ? `in ${fmtSpan(d)}` : `${fmtSpan(d)} ago`;
}

function when(ms) {
  return html`<span class="t">${fmtTime(ms)}</span>`;
}

const TYPE_BADGE = { NORMAL: 'blue', FIFO: 'purple', DELAY: 'orange', TRANSACTION: 'green' };
function typeBadges(types) {
  return (types || []).map((t) => html`<span class="badge ${TYPE_BADGE[t] || ''}">${t}</span>`);
}

function isDlq(name) { return name.startsWith('%DLQ%'); }

// ---------------------------------------------------------------- page frame

const view = () => document.getElementById('view');
let generation = 0;
let refreshTimer = null;

function showError(message) {
  const e = document.getElementById('error');
  e.textContent = message;
  e.hidden = false;
}

function clearError() {
  const e = document.getElementById('error');
  e.hidden = true;
  e.textContent = '';
}

function setStatus(ok, text) {
  const s = document.getElementById('status');
  s.textContent = text;
  s.classList.toggle('stale', !ok);
}

function render(fragment) {
  const v = view();
  v.innerHTML = fragment.s;
  v.setAttribute('aria-busy', 'false');
}

function parseHash() {
  const h = location.hash.replace(/^#\/?/, '');
  const [path, query] = h.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || 'overview', args: parts.slice(1), query: new URLSearchParams(query || '') };
}

const PAGES = {
  overview: { title: 'Overview', load: overviewPage, every: 2000 },
  topics: { title: 'Topics', load: topicsPage, every: 5000 },
  groups: { title: 'Consumer groups', load: groupsPage, every: 5000 },
  transactions: { title: 'Transactions', load: transactionsPage, every: 5000 },
  'dead-letters': { title: 'Dead letters', load: deadLettersPage },
  messages: { title: 'Message search', load: messagesPage },
};

async function route() {
  const { page, args, query } = parseHash();
  const p = PAGES[page];
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
  const my = ++generation;
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.page === page);
  }
  clearError();
  if (!p) {
    document.title = 'Ferry';
    render(html`<h1>Not found</h1><p>No page <code>${page}</code>. <a href="#/overview">Overview</a></p>`);
    return;
  }
  document.title = `${p.title} · Ferry`;
  document.body.dataset.page = page;
  view().setAttribute('aria-busy', 'true');
  const run = async (first) => {
    try {
      const fragment = await p.load(args, query);
      if (my !== generation) return;
      // A periodic refresh must not clobber a page the user is typing in.
      if (first || !view().contains(document.activeElement) || document.activeElement === document.body) {
        render(fragment);
      }
      clearError();
      setStatus(true, `updated ${fmtClock(Date.now())}`);
    } catch (e) {
      if (my !== generation) return;
      showError(e.message);
      setStatus(false, 'request failed');
      if (first) render(html`<h1>${p.title}</h1><p class="muted">Could not load this page; see the error above.</p>`);
    }
    if (first && my === generation) document.body.dataset.ready = page;
  };
  document.body.dataset.ready = '';
  await run(true);
  if (p.every && my === generation) {
    refreshTimer = setInterval(() => run(false), p.every);
  }
}

// ---------------------------------------------------------------- charts

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmtAxis(v) {
  if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(v < 10 && v % 1 ? 1 : 0)}`;
}

/**
 * A line chart as inline SVG. series: [{cls, points: [[t_ms, value]]}].
 * `area` fills under the first series.
 */
function lineChart(series, { area = false, label = '' } = {}) {
  const W = 600, H = 220, L = 48, R = 12, T = 12, B = 26;
  const all = series.flatMap((s) => s.points);
  if (all.length < 2) {
    return html`<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${label}: collecting samples">
      <text x="${W / 2}" y="${H / 2}" text-anchor="middle">collecting samples…</text></svg>`;
  }
  // Now at the right edge; at least a minute wide, so a young history
  // grows in from the right.
  const t1 = Math.max(...all.map((p) => p[0]));
  const t0 = Math.min(t1 - 60000, ...all.map((p) => p[0]));
  const ymax = niceMax(Math.max(...all.map((p) => p[1])));
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / ymax) * (H - T - B);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = (ymax * i) / 4;
    parts.push(html`<line class="grid" x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}"/>
      <text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${fmtAxis(v)}</text>`);
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const anchor = i === 0 ? 'start' : i === 4 ? 'end' : 'middle';
    parts.push(html`<text x="${x(t)}" y="${H - 8}" text-anchor="${anchor}">${fmtClock(t)}</text>`);
  }
  parts.push(html`<line class="axis" x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}"/>`);
  series.forEach((s, i) => {
    if (s.points.length === 0) return;
    const d = s.points.map((p, j) => `${j ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join('');
    if (area && i === 0) {
      const first = s.points[0], last = s.points[s.points.length - 1];
      parts.push(html`<path class="area-${s.cls}" d="${d}L${x(last[0]).toFixed(1)},${y(0)}L${x(first[0]).toFixed(1)},${y(0)}Z"/>`);
    }
    parts.push(html`<path class="line s-${s.cls}" d="${d}"><title>${s.name}</title></path>`);
  });
  return html`<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${label}">${parts}</svg>`;
}

/** Per-second rates of a counter between consecutive samples. */
function rates(samples, field) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = (b.t_ms - a.t_ms) / 1000;
    if (dt <= 0) continue;
    out.push([b.t_ms, Math.max(0, b[field] - a[field]) / dt]);
  }
  return out;
}

function legend(items) {
  return html`<div class="legend">${items.map(([cls, name]) => html`<span><i class="k-${cls}"></i>${name}</span>`)}</div>`;
}

// ---------------------------------------------------------------- overview

function card(key, label, value, alert = false) {
  return html`<div class="card${alert ? ' alert' : ''}" data-stat="${key}">
    <div class="label">${label}</div><div class="value">${fmtNum(value)}</div></div>`;
}

async function overviewPage() {
  const [o, h] = await Promise.all([api('GET', '/v1/overview'), api('GET', '/v1/stats/history')]);
  const samples = h.samples.concat(h.now && (!h.samples.length || h.now.t_ms > h.samples[h.samples.length - 1].t_ms) ? [h.now] : []);
  const last = rates(samples.slice(-11), 'messages_stored');
  const recent = last.length ? last.reduce((s, p) => s + p[1], 0) / last.length : 0;
  const t = o.totals;
  return html`
    <div class="page-head"><h1>Overview</h1><span class="spacer"></span>
      <span class="muted">${o.log.failed ? '' : 'commit log healthy'}</span></div>
    ${o.log.failed ? html`<p class="notice bad">The commit log refuses writes after a disk fault: ${o.log.failed}</p>` : ''}
    <section class="cards">
      ${card('topics', 'Topics', o.topics)}
      ${card('groups', 'Consumer groups', o.groups)}
      ${card('lag', 'Total lag', o.lag)}
      ${card('inflight', 'In flight', o.inflight)}
      ${card('transactions_pending', 'Pending transactions', o.transactions_pending)}
      ${card('timers_pending', 'Timers pending', o.timers_pending)}
      ${card('dead_letters', 'Dead letters', o.dead_letters, o.dead_letters > 0)}
      ${card('clients', 'Connected clients', o.clients)}
    </section>
    <section class="charts">
      <div class="panel chart" data-chart="throughput">
        <div class="panel-head"><h2>Throughput (messages/s)</h2><span class="spacer"></span>
          ${legend([['stored', 'stored'], ['delivered', 'delivered'], ['acked', 'acked']])}</div>
        ${lineChart([
          { cls: 'stored', name: 'stored/s', points: rates(samples, 'messages_stored') },
          { cls: 'delivered', name: 'delivered/s', points: rates(samples, 'messages_delivered') },
          { cls: 'acked', name: 'acked/s', points: rates(samples, 'acks') },
        ], { label: 'throughput' })}
      </div>
      <div class="panel chart" data-chart="lag">
        <div class="panel-head"><h2>Lag (messages not yet consumed)</h2><span class="spacer"></span>
          ${legend([['lag', 'total lag']])}</div>
        ${lineChart([{ cls: 'lag', name: 'lag', points: samples.map((s) => [s.t_ms, s.lag]) }], { area: true, label: 'lag' })}
      </div>
    </section>
    <section class="panel">
      <h2>Since the broker started</h2>
      <div class="table-wrap"><table class="totals"><thead><tr>
        <th class="num">stored</th><th class="num">delivered</th><th class="num">acked</th>
        <th class="num">redeliveries</th><th class="num">dead-lettered</th><th class="num">re-driven</th>
        <th class="num">tx committed</th><th class="num">tx rolled back</th><th class="num">tx discarded</th>
        <th class="num">stored/s (10 s)</th></tr></thead>
        <tbody><tr>
          <td class="num" data-total="messages_stored">${fmtNum(t.messages_stored)}</td>
          <td class="num" data-total="messages_delivered">${fmtNum(t.messages_delivered)}</td>
          <td class="num" data-total="acks">${fmtNum(t.acks)}</td>
          <td class="num">${fmtNum(t.redeliveries)}</td>
          <td class="num" data-total="dead_lettered">${fmtNum(t.dead_lettered)}</td>
          <td class="num" data-total="redriven">${fmtNum(t.redriven)}</td>
          <td class="num">${fmtNum(t.tx_committed)}</td>
          <td class="num">${fmtNum(t.tx_rolled_back)}</td>
          <td class="num">${fmtNum(t.tx_discarded)}</td>
          <td class="num">${recent.toFixed(1)}</td>
        </tr></tbody></table></div>
      <p class="muted">${o.dead_letter_topics} dead-letter topic(s) · commit log at byte ${fmtNum(o.log.committed_offset)} · charts: one sample a second, the last ${fmtSpan(h.capacity * h.interval_ms)}</p>
    </section>`;
}

// ---------------------------------------------------------------- topics

async function topicsPage() {
  const { topics } = await api('GET', '/v1/topics');
  topics.sort((a, b) => (isDlq(a.name) - isDlq(b.name)) || a.name.localeCompare(b.name));
  if (!topics.length) return html`<h1>Topics</h1><p class="panel muted">No topics yet.</p>`;
  const sum = (qs, f) => qs.reduce((s, q) => s + f(q), 0);
  return html`
    <div class="page-head"><h1>Topics</h1><span class="muted">${topics.length} topic(s)</span></div>
    ${topics.map((t) => html`
      <section class="panel" data-topic="${t.name}">
        <div class="panel-head"><h2>${t.name}</h2>
          ${isDlq(t.name) ? html`<span class="badge red">dead letters of ${t.name.slice(5)}</span>` : typeBadges(t.message_types)}
          <span class="spacer"></span>
          <span class="muted">${t.queues.length} queue(s) · stored <b data-col="stored">${fmtNum(sum(t.queues, (q) => q.max_offset))}</b>
            · retained <b data-col="retained">${fmtNum(sum(t.queues, (q) => q.max_offset - q.min_offset))}</b></span>
        </div>
        <div class="table-wrap"><table class="topic-queues">
          <thead><tr><th>queue</th>${t.queues.map((q) => html`<th class="num">${q.id}</th>`)}</tr></thead>
          <tbody>
            <tr><td class="muted">min offset</td>${t.queues.map((q) => html`<td class="num" data-queue="${q.id}" data-kind="min">${fmtNum(q.min_offset)}</td>`)}</tr>
            <tr><td class="muted">max offset</td>${t.queues.map((q) => html`<td class="num" data-queue="${q.id}" data-kind="max">${fmtNum(q.max_offset)}</td>`)}</tr>
          </tbody></table></div>
      </section>`)}`;
}

// ---------------------------------------------------------------- groups

async function groupsPage() {
  const { groups, summary } = await api('GET', '/v1/groups');
  if (!summary.length) return html`<h1>Consumer groups</h1><p class="panel muted">No consumer groups yet.</p>`;
  groups.sort((a, b) => a.group.localeCompare(b.group) || a.topic.localeCompare(b.topic) || a.queue_id - b.queue_id);
  return html`
    <div class="page-head"><h1>Consumer groups</h1><span class="muted">${summary.length} group(s)</span></div>
    <section class="panel"><div class="table-wrap"><table class="groups-summary">
      <thead><tr><th>group</th><th>policy</th><th>FIFO</th><th class="num">max attempts</th><th class="num">queues</th>
        <th class="num">lag</th><th class="num">in flight</th><th class="num">dead letters</th></tr></thead>
      <tbody>${summary.map((g) => html`<tr data-group="${g.group}">
        <td><b>${g.group}</b></td>
        <td>${g.own_policy ? html`<span class="badge blue">own</span>` : html`<span class="badge">broker default</span>`}</td>
        <td data-col="fifo">${g.fifo ? html`<span class="badge purple">FIFO</span>` : 'no'}</td>
        <td class="num" data-col="max_delivery_attempts">${fmtNum(g.max_delivery_attempts)}</td>
        <td class="num" data-col="queues">${fmtNum(g.queues)}</td>
        <td class="num" data-col="lag">${fmtNum(g.lag)}</td>
        <td class="num" data-col="inflight">${fmtNum(g.inflight)}</td>
        <td class="num" data-col="dead_letters">${g.dead_letters
          ? html`<a href="#/dead-letters/${enc(g.group)}">${fmtNum(g.dead_letters)}</a>` : '0'}</td>
      </tr>`)}</tbody></table></div></section>
    <section class="panel"><h2>Progress per queue</h2><div class="table-wrap"><table class="groups-queues">
      <thead><tr><th>group</th><th>topic</th><th class="num">queue</th><th class="num">consumed</th>
        <th class="num">max offset</th><th class="num">lag</th><th class="num">in flight</th><th>progress</th></tr></thead>
      <tbody>${groups.length ? groups.map((q) => html`<tr data-group="${q.group}" data-topic="${q.topic}" data-queue="${q.queue_id}">
        <td>${q.group}</td><td>${q.topic}</td><td class="num">${q.queue_id}</td>
        <td class="num" data-col="consumed_offset">${fmtNum(q.consumed_offset)}</td>
        <td class="num" data-col="max_offset">${fmtNum(q.max_offset)}</td>
        <td class="num" data-col="lag">${fmtNum(q.lag)}</td>
        <td class="num" data-col="inflight">${fmtNum(q.inflight)}</td>
        <td><meter min="0" max="${Math.max(1, q.max_offset)}" value="${q.consumed_offset}"></meter></td>
      </tr>`) : html`<tr><td class="empty" colspan="8">No progress recorded yet.</td></tr>`}</tbody></table></div></section>`;
}

// ---------------------------------------------------------------- transactions

async function transactionsPage() {
  const t = await api('GET', '/v1/transactions');
  return html`
    <div class="page-head"><h1>Transactions</h1>
      <span class="muted"><span data-stat="pending_count">${fmtNum(t.pending_count)}</span> pending ·
      ${fmtNum(t.timers_pending)} timer(s) pending</span></div>
    <section class="panel"><h2>Pending (oldest first)</h2><div class="table-wrap"><table class="tx-pending">
      <thead><tr><th>transaction id</th><th>topic</th><th>message id</th><th class="num">queue</th><th>stored</th>
        <th class="num">checks</th><th>next check</th></tr></thead>
      <tbody>${t.pending.length ? t.pending.map((p) => html`<tr data-tx="${p.transaction_id}">
        <td class="mono">${p.transaction_id}</td><td>${p.topic}</td>
        <td class="mono"><a href="#/messages?id=${enc(p.message_id)}">${p.message_id}</a></td>
        <td class="num">${p.queue_id}</td>
        <td>${when(p.stored_ms)} <span class="muted">(${fmtRel(p.stored_ms)})</span></td>
        <td class="num" data-col="checks">${fmtNum(p.checks)}</td>
        <td>${when(p.next_check_ms)} <span class="muted">(${fmtRel(p.next_check_ms)})</span></td>
      </tr>`) : html`<tr><td class="empty" colspan="7">No open transactions.</td></tr>`}</tbody></table></div>
      ${t.pending_count > t.pending.length ? html`<p class="muted">Showing the oldest ${t.pending.length} of ${fmtNum(t.pending_count)}.</p>` : ''}
    </section>
    <section class="panel"><h2>Recently discarded</h2><div class="table-wrap"><table class="tx-discarded">
      <thead><tr><th>transaction id</th><th>topic</th><th>message id</th><th>discarded</th><th class="num">checks</th><th>reason</th></tr></thead>
      <tbody>${t.recently_discarded.length ? t.recently_discarded.map((d) => html`<tr data-tx="${d.transaction_id}">
        <td class="mono">${d.transaction_id}</td><td>${d.topic}</td>
        <td class="mono"><a href="#/messages?id=${enc(d.message_id)}">${d.message_id}</a></td>
        <td>${when(d.discarded_ms)}</td><td class="num">${fmtNum(d.checks)}</td><td>${d.reason}</td>
      </tr>`) : html`<tr><td class="empty" colspan="6">Nothing discarded.</td></tr>`}</tbody></table></div></section>`;
}

// ---------------------------------------------------------------- dead letters

let redriveNotice = null;

async function deadLettersPage(args) {
  const { summary } = await api('GET', '/v1/groups');
  let group = args[0];
  if (!group) {
    const withLetters = summary.find((g) => g.dead_letters > 0);
    group = withLetters ? withLetters.group : (summary[0] && summary[0].group);
  }
  const picker = html`<label>Group <select id="dlq-group" data-action="pick-group">
      ${summary.map((g) => html`<option value="${g.group}"${g.group === group ? html` selected` : ''}>${g.group} (${g.dead_letters})</option>`)}
      ${group && !summary.some((g) => g.group === group) ? html`<option value="${group}" selected>${group}</option>` : ''}
    </select></label>`;
  const head = html`<div class="page-head"><h1>Dead letters</h1>${summary.length ? picker : ''}<span class="spacer"></span>
    <button type="button" data-action="reload">Refresh</button></div>`;
  const notice = redriveNotice && redriveNotice.group === group
    ? html`<p class="notice ${redriveNotice.ok ? 'ok' : 'bad'}" id="redrive-result" data-ok="${redriveNotice.ok}">${redriveNotice.text}</p>` : '';
  if (!group) return html`${head}<p class="panel muted">No consumer groups yet.</p>`;
  const page = await api('GET', `/v1/groups/${enc(group)}/dead-letters?limit=1000`);
  return html`${head}${notice}
    <section class="panel" data-group="${group}">
      <div class="panel-head"><h2>${page.topic}</h2><span class="muted">${page.dead_letters.length} letter(s)${page.next_from !== null ? ' (first 1000)' : ''}</span></div>
      <div class="table-wrap"><table class="dead-letters">
      <thead><tr><th class="num">DLQ offset</th><th>message id</th><th>origin</th><th class="num">attempts</th>
        <th>tag</th><th>keys</th><th>stored</th><th>re-driven</th><th></th></tr></thead>
      <tbody>${page.dead_letters.length ? page.dead_letters.map((d) => html`<tr data-dlq-offset="${d.dlq_queue_offset}" data-message-id="${d.message_id || ''}">
        <td class="num">${d.dlq_queue_offset}</td>
        <td class="mono">${d.message_id ? html`<a href="#/messages?id=${enc(d.message_id)}">${d.message_id}</a>` : html`<span class="muted">${d.error || 'unreadable'}</span>`}</td>
        <td>${d.topic} <span class="muted">q${d.queue_id} @${d.queue_offset}</span></td>
        <td class="num">${d.attempts}</td>
        <td>${d.tag || ''}</td>
        <td>${(d.keys || []).map((k) => html`<span class="badge">${k}</span>`)}</td>
        <td>${d.stored_ms ? when(d.stored_ms) : '–'}</td>
        <td data-col="redriven">${d.redriven_at_ms ? html`<span class="badge green">${fmtRel(d.redriven_at_ms)}</span>` : html`<span class="muted">no</span>`}</td>
        <td><button type="button" class="primary" data-action="redrive" data-group="${group}" data-offset="${d.dlq_queue_offset}">${d.redriven_at_ms ? 'Re-drive again' : 'Re-drive'}</button></td>
      </tr>`) : html`<tr><td class="empty" colspan="9">No dead letters for this group.</td></tr>`}</tbody></table></div>
    </section>`;
}

async function redrive(button) {
  const group = button.dataset.group;
  const offset = button.dataset.offset;
  button.disabled = true;
  button.textContent = 'Re-driving…';
  try {
    const r = await api('POST', `/v1/groups/${enc(group)}/dead-letters/${enc(offset)}/redrive`);
    redriveNotice = { group, ok: true, text: `Dead letter ${r.dlq_offset} of ${r.group} was sent back to ${r.topic}; the group receives it again with attempts starting over.` };
  } catch (e) {
    redriveNotice = { group, ok: false, text: `Re-drive of dead letter ${offset} failed: ${e.message}` };
  }
  await route();
}

// ---------------------------------------------------------------- messages

const EVENT_NAMES = {
  stored: 'Stored', half_stored: 'Half message stored', timer_scheduled: 'Timer scheduled',
  checked: 'Check-back sent', committed: 'Committed', rolled_back: 'Rolled back', discarded: 'Discarded',
  fired: 'Timer fired', recalled: 'Recalled', delivered: 'Delivered', renewed: 'Invisibility renewed',
  acked: 'Acked', dead_lettered: 'Dead-lettered', redriven: 'Re-driven', topic_deleted: 'Topic deleted',
};

function eventDetail(e) {
  switch (e.event) {
    case 'timer_scheduled': return e.due_ms ? `due ${fmtTime(e.due_ms)}` : '';
    case 'checked': return `check #${e.check}, next ${fmtTime(e.next_check_ms)}`;
    case 'committed': return `by ${e.source}, queue ${e.queue_id}${e.queue_offset === null || e.queue_offset === undefined ? ' (timer)' : ` offset ${e.queue_offset}`}`;
    case 'rolled_back':
    case 'discarded': return `by ${e.source}: ${e.reason}`;
    case 'fired': return `queue ${e.queue_id} offset ${e.queue_offset}`;
    case 'delivered': return `to ${e.group}${e.client ? ` (client ${e.client})` : ''}, attempt ${e.attempt}, invisible until ${fmtClock(e.visible_at_ms)}`;
    case 'renewed': return `by ${e.group}, invisible until ${fmtClock(e.visible_at_ms)}`;
    case 'acked': return `by ${e.group}`;
    case 'dead_lettered': return `for ${e.group} after ${e.attempts} attempt(s), DLQ offset ${e.dlq_offset}`;
    case 'redriven': return `for ${e.group}`;
    default: return '';
  }
}

const STATE_BADGE = { acked: 'green', dead_lettered: 'red', in_flight: 'orange', pending: 'blue' };

function messageView(m) {
  const lc = m.lifecycle;
  const props = Object.entries(m.properties || {});
  return html`<section class="panel message" data-message-id="${m.message_id}">
    <div class="panel-head"><h2 class="mono">${m.message_id}</h2>${typeBadges([m.type])}</div>
    <div class="msg">
      <div>
        <dl class="kv">
          <dt>topic</dt><dd data-field="topic">${m.topic}</dd>
          <dt>queue / offset</dt><dd data-field="position">${m.queue_id === null ? 'not indexed' : `${m.queue_id} / ${m.queue_offset}`}</dd>
          <dt>tag</dt><dd data-field="tag">${m.tag || '–'}</dd>
          <dt>keys</dt><dd data-field="keys">${m.keys.length ? m.keys.map((k) => html`<span class="badge">${k}</span>`) : '–'}</dd>
          ${m.message_group ? html`<dt>message group</dt><dd>${m.message_group}</dd>` : ''}
          <dt>born</dt><dd>${when(m.born_timestamp_ms)} <span class="muted">from ${m.born_host}</span></dd>
          <dt>stored</dt><dd>${when(m.stored_ms)}</dd>
          ${m.delivery_timestamp_ms ? html`<dt>delivery time</dt><dd>${when(m.delivery_timestamp_ms)}</dd>` : ''}
          <dt>log offset</dt><dd>${fmtNum(m.log_offset)}</dd>
          <dt>properties</dt><dd>${props.length ? props.map(([k, v]) => html`<span class="badge">${k}=${v}</span>`) : '–'}</dd>
          <dt>body</dt><dd>${fmtNum(m.body_size)} byte(s)</dd>
        </dl>
        <pre class="body" data-field="body">${m.body_preview}</pre>
      </div>
      <div>
        <h2>State</h2>
        <p>${lc.groups.length ? lc.groups.map((g) => html`<span class="badge ${STATE_BADGE[g.state] || ''}" data-group-state="${g.group}">${g.group}: ${g.state.replace('_', ' ')}${g.attempt ? ` (attempt ${g.attempt})` : ''}${g.attempts ? ` after ${g.attempts} attempt(s)` : ''}</span>`) : html`<span class="muted">no group has progress on this topic</span>`}
        ${lc.transaction ? html`<span class="badge green" data-tx-state="${lc.transaction.state}">transaction ${lc.transaction.state}, ${lc.transaction.checks} check(s)</span>` : ''}
        ${lc.timer ? html`<span class="badge orange">timer ${lc.timer.state}${lc.timer.due_ms ? `, due ${fmtTime(lc.timer.due_ms)}` : ''}</span>` : ''}</p>
        <h2>Lifecycle</h2>
        <ol class="timeline">${lc.events.map((e) => html`<li class="ev-${e.event}" data-event="${e.event}">
          <span class="when">${fmtTime(e.at_ms)}</span><span class="what">${EVENT_NAMES[e.event] || e.event}</span><span class="detail">${eventDetail(e)}</span></li>`)}</ol>
        ${lc.events_omitted ? html`<p class="muted">${fmtNum(lc.events_omitted)} more event(s) not listed.</p>` : ''}
        ${lc.complete ? '' : html`<p class="muted">The scan stopped at log byte ${fmtNum(lc.scanned_to)} (its budget ran out); later events are missing.</p>`}
      </div>
    </div>
  </section>`;
}

async function messagesPage(_args, query) {
  const id = query.get('id') || '';
  const key = query.get('key') || '';
  const topic = query.get('topic') || '';
  const mode = key ? 'key' : 'id';
  const form = html`<form class="search panel" id="search">
      <select name="mode" aria-label="search by"><option value="id"${mode === 'id' ? html` selected` : ''}>message id</option>
        <option value="key"${mode === 'key' ? html` selected` : ''}>key</option></select>
      <input name="q" placeholder="message id or key" value="${id || key}" aria-label="message id or key" required>
      <input name="topic" placeholder="topic (optional, keys only)" value="${topic}" aria-label="topic">
      <button class="primary" type="submit">Search</button></form>`;
  const head = html`<div class="page-head"><h1>Message search</h1></div>${form}`;
  if (!id && !key) return html`${head}<p class="muted">Look a message up by its id, or every message with a key. Each answer shows the headers and the lifecycle read back from the log.</p>`;
  let found;
  try {
    found = id
      ? await api('GET', `/v1/messages/${enc(id)}`)
      : await api('GET', `/v1/messages?key=${enc(key)}${topic ? `&topic=${enc(topic)}` : ''}`);
  } catch (e) {
    if (e.status === 404) return html`${head}<p class="notice bad" id="search-result">${e.message}</p>`;
    throw e;
  }
  return html`${head}<p class="muted" id="search-result">${found.messages.length} message(s)${found.truncated ? ' (more match; narrow by topic)' : ''}</p>
    ${found.messages.map(messageView)}`;
}

// ---------------------------------------------------------------- events

document.addEventListener('click', (ev) => {
  const el = ev.target.closest('[data-action]');
  if (!el) return;
  if (el.dataset.action === 'redrive') {
    ev.preventDefault();
    redrive(el);
  } else if (el.dataset.action === 'reload') {
    ev.preventDefault();
    redriveNotice = null;
    route();
  }
});

document.addEventListener('change', (ev) => {
  if (ev.target.id === 'dlq-group') {
    redriveNotice = null;
    location.hash = `#/dead-letters/${enc(ev.target.value)}`;
  }
});

document.addEventListener('submit', (ev) => {
  if (ev.target.id !== 'search') return;
  ev.preventDefault();
  const f = new FormData(ev.target);
  const q = String(f.get('q') || '').trim();
  const topic = String(f.get('topic') || '').trim();
  if (!q) return;
  const next = f.get('mode') === 'key'
    ? `#/messages?key=${enc(q)}${topic ? `&topic=${enc(topic)}` : ''}`
    : `#/messages?id=${enc(q)}`;
  if (location.hash === next) route(); else location.hash = next;
});

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', () => {
  if (!location.hash) history.replaceState(null, '', '#/overview');
  route();
});
