// End-to-end test of Ferry's dashboard in headless Chromium.
//
// Starts `ferry serve` (fresh data directory, free loopback ports), sends
// real traffic with the `ferry` CLI (and one never-ended transaction with
// the official Python client), then opens every page of the dashboard in
// Debian's Chromium through playwright-core and checks that it shows what
// the JSON API says and what was sent: topic offsets, group lag and
// progress, the pending transaction, the dead letter, a message's
// lifecycle. It re-drives the dead letter by clicking the page's button and
// checks through the API that the message was delivered again. One
// screenshot per page goes to the artifacts directory.
//
// Usage: node dashboard.mjs [ARTIFACTS_DIR]
//   ARTIFACTS_DIR  (or FERRY_DASHBOARD_ARTIFACTS) default target/ci-artifacts/dashboard
//   FERRY_BIN      default target/release/ferry
//   FERRY_PYTHON   a Python with rocketmq-python-client, default target/ci-venv/bin/python
//   CHROMIUM       default /usr/bin/chromium
// Prints `ok ...` per check and `N passed, M failed`; exits 1 on any failure.
// The broker is killed whatever happens.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const FERRY = path.resolve(ROOT, process.env.FERRY_BIN || 'target/release/ferry');
const PYTHON = path.resolve(ROOT, process.env.FERRY_PYTHON || 'target/ci-venv/bin/python');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.resolve(process.argv[2] || process.env.FERRY_DASHBOARD_ARTIFACTS
  || path.join(ROOT, 'target/ci-artifacts/dashboard'));

let passed = 0;
let failed = 0;

function check(cond, what, detail) {
  if (cond) {
    passed++;
    console.log(`ok   ${what}`);
  } else {
    failed++;
    console.log(`FAIL ${what}${detail === undefined ? '' : `\n     ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`}`);
  }
  return cond;
}

function sameJson(a, b) { return JSON.stringify(a) === JSON.stringify(b); }

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// ------------------------------------------------------------------ broker

class Broker {
  constructor(dir, grpc, http) {
    this.dir = dir;
    this.grpc = grpc;
    this.http = http;
    this.base = `http://127.0.0.1:${http}`;
    this.proc = null;
  }

  async start() {
    const log = fs.openSync(path.join(this.dir, 'broker.log'), 'a');
    this.proc = spawn(FERRY, [
      'serve', '--data-dir', path.join(this.dir, 'data'),
      '--grpc-listen', `127.0.0.1:${this.grpc}`, '--http-listen', `127.0.0.1:${this.http}`,
      // The transaction below must stay pending: no check-back for an hour.
      '--tx-check-after-ms', '3600000', '--tx-check-interval-ms', '3600000',
    ], { stdio: ['ignore', log, log] });
    this.exited = new Promise((r) => this.proc.on('exit', r));
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      if (this.proc.exitCode !== null) throw new Error(`broker exited with ${this.proc.exitCode}; see ${this.dir}/broker.log`);
      try {
        const r = await fetch(`${this.base}/readyz`);
        if (r.ok) return;
      } catch (_) { /* not listening yet */ }
      await sleep(50);
    }
    throw new Error('broker did not become ready in 30 s');
  }

  kill() {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      try { this.proc.kill('SIGKILL'); } catch (_) { /* gone */ }
    }
  }

  async api(method, p, body) {
    const r = await fetch(`${this.base}${p}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`${method} ${p}: HTTP ${r.status} ${text}`);
    return JSON.parse(text);
  }

  get(p) { return this.api('GET', p); }

  /** Runs the `ferry` CLI against this broker; returns stdout. */
  cli(args, input) {
    const r = spawnSync(FERRY, [...args, '--server', `127.0.0.1:${this.grpc}`, '--http', `127.0.0.1:${this.http}`],
      { input, encoding: 'utf8', timeout: 60000 });
    if (r.status !== 0) throw new Error(`ferry ${args.join(' ')} exited with ${r.status}: ${r.stderr}`);
    return r.stdout;
  }

  /** `ferry consume --json` lines as objects. */
  consume(args) {
    return this.cli(['consume', '--json', '--wait', '1s', ...args]).split('\n').filter(Boolean).map((l) => JSON.parse(l));
  }
}

// A half message from the official Python client, never committed or
// rolled back: the producer kills itself right after the send.
const HALF_AND_DIE = path.join(ROOT, 'tests', 'conformance', 'half_and_die.py');

// ------------------------------------------------------------------ traffic

const children = new Set();

function child(args) {
  const c = spawn(FERRY, args, { stdio: ['pipe', 'ignore', 'pipe'] });
  let err = '';
  c.stderr.on('data', (d) => { err += d; });
  c.done = new Promise((r) => c.on('exit', (code) => { children.delete(c); r(code); }));
  c.errors = () => err;
  children.add(c);
  return c;
}

/**
 * A trickle for the charts: `ferry send` reading a line at a varying pace
 * for `ms`, and a `ferry consume --follow` that is paused (SIGSTOP) for the
 * middle third, so lag builds up and then drains. Returns the number of
 * messages sent.
 */
async function trickle(b, ms) {
  const at = ['--server', `127.0.0.1:${b.grpc}`, '--http', `127.0.0.1:${b.http}`];
  const producer = child(['send', '-t', 'feed', '--batch', '1', '--tag', 'tick', ...at]);
  const consumer = child(['consume', '-t', 'feed', '-g', 'feed-reader', '--follow', '--wait', '1s', '--body-bytes', '0', ...at]);
  const start = Date.now();
  let n = 0;
  let paused = false;
  let resumed = false;
  while (Date.now() - start < ms) {
    const t = Date.now() - start;
    if (!paused && t > ms * 0.35) { consumer.kill('SIGSTOP'); paused = true; }
    if (paused && !resumed && t > ms * 0.7) { consumer.kill('SIGCONT'); resumed = true; }
    producer.stdin.write(`tick ${n++}\n`);
    await sleep(15 + 35 * (1 + Math.sin(t / 2500)));
  }
  if (!resumed) consumer.kill('SIGCONT');
  producer.stdin.end();
  if (await producer.done !== 0) throw new Error(`ferry send exited badly: ${producer.errors()}`);
  const deadline = Date.now() + 20000;
  for (;;) {
    const g = await b.get('/v1/groups/feed-reader').catch(() => null);
    if (g && g.queues.reduce((s, q) => s + q.lag, 0) === 0) break;
    if (Date.now() > deadline) throw new Error(`feed-reader did not catch up: ${JSON.stringify(g)}`);
    await sleep(200);
  }
  consumer.kill('SIGINT');
  await consumer.done;
  return n;
}

const XSS_KEY = '<img src=x onerror="window.__xss=1">';

async function traffic(b) {
  const t = {};
  await b.api('POST', '/v1/topics/orders', { queues: 4, message_types: ['NORMAL', 'DELAY'] });
  // One message with a key, a property and a body full of markup; eleven more.
  const one = JSON.parse(b.cli(['send', '--json', '-t', 'orders', '--tag', 'created', '--key', 'order-42',
    '--key', XSS_KEY, '--property', 'region=eu', '<b>order 42</b> & "friends"']));
  t.orderId = one.message_id;
  // One call, so one queue: a group's lag counts only the queues it has
  // received from, and billing's must be exactly 12 - 5.
  const lines = Array.from({ length: 11 }, (_, i) => `order ${i + 100}`).join('\n') + '\n';
  const many = JSON.parse(b.cli(['send', '--json', '-t', 'orders', '--tag', 'created', '--key', 'bulk'], lines));
  t.sent = 1 + many.messages.length;
  // A consumer group that handles five of them.
  t.billing = b.consume(['-t', 'orders', '-g', 'billing', '--limit', '5']);

  // A failing consumer: two attempts, then the dead-letter queue.
  await b.api('PUT', '/v1/groups/refunds/policy', { max_delivery_attempts: 2, backoff: '1s' });
  const refund = JSON.parse(b.cli(['send', '--json', '-t', 'refunds', '--tag', 'requested', '--key', 'refund-7', 'refund 7']));
  t.refundId = refund.message_id;
  const deadline = Date.now() + 30000;
  for (;;) {
    b.consume(['-t', 'refunds', '-g', 'refunds', '--peek', '--limit', '1']);
    const g = await b.get('/v1/groups/refunds');
    if (g.dead_letters >= 1) break;
    if (Date.now() > deadline) throw new Error(`no dead letter after 30 s: ${JSON.stringify(g)}`);
    await sleep(300);
  }

  // A transaction left open.
  const py = spawnSync(PYTHON, [HALF_AND_DIE, `127.0.0.1:${b.grpc}`, 'payments', 'payment 9 (never ended)', 'captured', '--key', 'payment-9'], { encoding: 'utf8', timeout: 60000 });
  t.halfId = (py.stdout || '').trim().split('\n').pop();
  if (!t.halfId) throw new Error(`the Python producer printed no message id (status ${py.status}): ${py.stderr}`);
  t.feed = await trickle(b, 15000);
  return t;
}

// ------------------------------------------------------------------ browser

async function main() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-dashboard-'));
  const b = new Broker(dir, await freePort(), await freePort());
  const killBroker = () => { for (const c of children) c.kill('SIGKILL'); b.kill(); };
  process.on('exit', killBroker);
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killBroker(); process.exit(130); });
  let browser = null;
  try {
    await b.start();
    check(true, `broker serves (gRPC ${b.grpc}, HTTP ${b.http}, data in ${dir})`);
    const t = await traffic(b);
    check(t.sent === 12 && t.billing.length === 5, `traffic: ${t.sent} orders sent, 5 consumed by billing, a dead letter in refunds, transaction ${t.halfId} open, ${t.feed} messages trickled through feed`);
    await sleep(1500);

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking'],
    });
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(m.text());
    });
    page.on('dialog', (d) => { pageErrors.push(`unexpected dialog: ${d.message()}`); d.dismiss(); });

    const open = async (hash, name) => {
      await page.goto(`${b.base}/ui/#/${hash}`);
      await page.waitForSelector(`body[data-ready="${name}"]`, { timeout: 15000 });
      const err = await page.locator('#error').isVisible();
      check(!err, `${name}: the page loaded without an error banner`, err ? await page.locator('#error').innerText() : undefined);
    };
    const shot = async (name) => {
      const file = path.join(ARTIFACTS, `${name}.png`);
      await page.screenshot({ path: file });
      check(fs.statSync(file).size > 10000, `${name}: screenshot ${path.relative(ROOT, file)}`);
    };
    const text = async (sel) => (await page.locator(sel).first().innerText()).trim();
    const num = async (sel) => Number((await text(sel)).replace(/[,\s]/g, ''));

    // -------------------------------------------------------- overview
    const resp = await page.goto(`${b.base}/`);
    check(resp.ok() && new URL(page.url()).pathname === '/ui/', `/ redirects to the dashboard (${page.url()})`);
    await page.waitForSelector('body[data-ready="overview"]', { timeout: 15000 });
    await page.waitForSelector('[data-chart="throughput"] path.s-stored', { timeout: 10000 });
    const o = await b.get('/v1/overview');
    for (const [key, want] of [['topics', 4], ['groups', 3], ['transactions_pending', 1], ['dead_letters', 1], ['timers_pending', 0], ['lag', 7], ['inflight', 0]]) {
      check(o[key] === want, `API overview: ${key} = ${want}`, o);
    }
    for (const key of ['topics', 'groups', 'lag', 'inflight', 'transactions_pending', 'timers_pending', 'dead_letters', 'clients']) {
      const shown = await num(`[data-stat="${key}"] .value`);
      check(shown === o[key], `overview: ${key} shows ${o[key]} like the API`, `page shows ${shown}`);
    }
    check(await num('[data-total="messages_stored"]') === o.totals.messages_stored && o.totals.messages_stored === 14 + t.feed,
      `overview: ${o.totals.messages_stored} messages stored (12 orders, 1 refund, the half message, ${t.feed} on feed)`);
    check(await num('[data-total="dead_lettered"]') === 1, 'overview: 1 dead-lettered');
    const h = await b.get('/v1/stats/history');
    check(h.samples.length >= 10 && h.samples[h.samples.length - 1].messages_stored === o.totals.messages_stored,
      `stats history: ${h.samples.length} samples, the last counting the traffic`);
    const lagPath = await page.locator('[data-chart="lag"] path.s-lag').getAttribute('d');
    check(lagPath && lagPath.split('L').length >= 2, 'overview: the lag chart draws a line');
    await shot('overview');

    // -------------------------------------------------------- topics
    await open('topics', 'topics');
    const { topics } = await b.get('/v1/topics');
    const orders = topics.find((x) => x.name === 'orders');
    check(orders && orders.queues.length === 4 && orders.queues.reduce((s, q) => s + q.max_offset, 0) === 12,
      'API topics: orders has 4 queues holding 12 messages', orders);
    let allQueues = true;
    for (const q of orders.queues) {
      const min = await num(`[data-topic="orders"] td[data-queue="${q.id}"][data-kind="min"]`);
      const max = await num(`[data-topic="orders"] td[data-queue="${q.id}"][data-kind="max"]`);
      allQueues = allQueues && min === q.min_offset && max === q.max_offset;
    }
    check(allQueues, `topics: orders shows each queue's min/max offsets (${orders.queues.map((q) => q.max_offset).join('/')})`);
    check(await num('[data-topic="orders"] [data-col="stored"]') === 12, 'topics: orders shows 12 stored');
    const badges = await text('[data-topic="orders"] .panel-head');
    check(badges.includes('NORMAL') && badges.includes('DELAY') && !badges.includes('FIFO'),
      'topics: orders shows its accepted types NORMAL, DELAY', badges);
    check(await page.locator('[data-topic="%DLQ%refunds"]').count() === 1, 'topics: the dead-letter topic %DLQ%refunds is listed');
    await shot('topics');

    // -------------------------------------------------------- groups
    await open('groups', 'groups');
    const gs = await b.get('/v1/groups');
    const billing = gs.summary.find((g) => g.group === 'billing');
    check(billing && billing.lag === 7, 'API groups: billing lags 7 behind (12 sent, 5 consumed)', billing);
    check(await num('.groups-summary tr[data-group="billing"] [data-col="lag"]') === billing.lag, 'groups: billing shows lag 7');
    check(await num('.groups-summary tr[data-group="refunds"] [data-col="max_delivery_attempts"]') === 2, 'groups: refunds shows max attempts 2');
    check(await num('.groups-summary tr[data-group="refunds"] [data-col="dead_letters"]') === 1, 'groups: refunds shows 1 dead letter');
    let rowsOk = true;
    for (const q of gs.groups) {
      const sel = `.groups-queues tr[data-group="${q.group}"][data-topic="${q.topic}"][data-queue="${q.queue_id}"]`;
      rowsOk = rowsOk && await num(`${sel} [data-col="consumed_offset"]`) === q.consumed_offset
        && await num(`${sel} [data-col="lag"]`) === q.lag && await num(`${sel} [data-col="inflight"]`) === q.inflight;
    }
    check(rowsOk && gs.groups.length > 0, `groups: all ${gs.groups.length} per-queue rows show the API's consumed offset, lag and in-flight`);
    await shot('groups');

    // -------------------------------------------------------- transactions
    await open('transactions', 'transactions');
    const tx = await b.get('/v1/transactions');
    const half = tx.pending.find((p) => p.message_id === t.halfId);
    check(tx.pending_count === 1 && half, `API transactions: 1 pending, message ${t.halfId}`, tx);
    if (half) {
      const row = `.tx-pending tr[data-tx="${half.transaction_id}"]`;
      check(await page.locator(row).count() === 1, `transactions: pending ${half.transaction_id} is listed`);
      check((await text(row)).includes(t.halfId) && (await text(row)).includes('payments'),
        'transactions: its row names the topic and message id');
      check(await num(`${row} [data-col="checks"]`) === half.checks, `transactions: ${half.checks} checks so far`);
    }
    check(await num('[data-stat="pending_count"]') === 1, 'transactions: 1 pending');
    await shot('transactions');

    // -------------------------------------------------------- dead letters
    await open('dead-letters/refunds', 'dead-letters');
    const dl = await b.get('/v1/groups/refunds/dead-letters');
    const letter = dl.dead_letters.find((d) => d.message_id === t.refundId);
    check(dl.dead_letters.length === 1 && letter && letter.attempts === 2 && letter.redriven_at_ms === null,
      `API dead letters: ${t.refundId} after 2 attempts, not re-driven`, dl);
    const row = `tr[data-message-id="${t.refundId}"]`;
    check(await page.locator(row).count() === 1, `dead letters: ${t.refundId} is listed`);
    await page.locator(`${row} button[data-action="redrive"]`).click();
    await page.waitForSelector('#redrive-result', { timeout: 10000 });
    const result = page.locator('#redrive-result');
    check(await result.getAttribute('data-ok') === 'true' && (await result.innerText()).includes('refunds'),
      'dead letters: the Re-drive button reports success', await result.innerText());
    const after = await b.get('/v1/groups/refunds/dead-letters');
    check(after.dead_letters[0].redriven_at_ms !== null, 'API: the letter is marked re-driven');
    check((await text(`${row} [data-col="redriven"]`)) !== 'no', 'dead letters: the row shows it re-driven');
    check((await b.get('/v1/overview')).totals.redriven === 1, 'API: 1 re-driven in the totals');
    await shot('dead-letters');
    const again = b.consume(['-t', 'refunds', '-g', 'refunds', '--limit', '1']);
    check(again.length === 1 && again[0].message_id === t.refundId && again[0].delivery_attempt === 1,
      'the re-driven message is delivered to refunds again, attempts starting over', again);

    // -------------------------------------------------------- message search
    await open('messages', 'messages');
    await page.fill('#search input[name=q]', t.refundId);
    await page.click('#search button[type=submit]');
    await page.waitForSelector(`.message[data-message-id="${t.refundId}"]`, { timeout: 15000 });
    const found = await b.get(`/v1/messages/${encodeURIComponent(t.refundId)}`);
    const want = found.messages[0].lifecycle.events.map((e) => e.event);
    const shown = await page.locator(`.message[data-message-id="${t.refundId}"] ol.timeline li`)
      .evaluateAll((lis) => lis.map((li) => li.dataset.event));
    check(sameJson(shown, want), `messages: the timeline shows the lifecycle in order (${shown.join(' → ')})`, { shown, want });
    // Each peek ends with a release (an invisibility change), listed as `renewed`.
    const expected = ['stored', 'delivered', 'delivered', 'dead_lettered', 'redriven', 'delivered', 'acked'];
    check(sameJson(want.filter((e) => e !== 'renewed'), expected),
      'API lifecycle: stored, delivered twice, dead-lettered, re-driven, delivered, acked', want);
    // Each delivery names the consumer client it went to, on the page too.
    const deliveries = found.messages[0].lifecycle.events.filter((e) => e.event === 'delivered');
    const details = await page.locator(`.message[data-message-id="${t.refundId}"] ol.timeline li[data-event="delivered"] .detail`)
      .allInnerTexts();
    check(deliveries.length > 0 && deliveries.every((e) => typeof e.client === 'string' && e.client.length > 0)
      && details.length === deliveries.length && details.every((d, i) => d.includes(`client ${deliveries[i].client}`)),
      'messages: each delivery names its consumer client, in the API and on the page', { deliveries, details });
    check(await text(`.message[data-message-id="${t.refundId}"] [data-field="topic"]`) === 'refunds'
      && (await text(`.message[data-message-id="${t.refundId}"] [data-field="keys"]`)).includes('refund-7'),
      'messages: headers show topic refunds and key refund-7');
    await shot('messages');

    // By key: markup in keys and bodies is shown as text, never run.
    await page.goto(`${b.base}/ui/#/messages?key=${encodeURIComponent('order-42')}`);
    await page.waitForSelector(`.message[data-message-id="${t.orderId}"]`, { timeout: 15000 });
    const body = await text(`.message[data-message-id="${t.orderId}"] [data-field="body"]`);
    const keys = await text(`.message[data-message-id="${t.orderId}"] [data-field="keys"]`);
    check(body === '<b>order 42</b> & "friends"', 'messages: a body with markup is shown as text', body);
    check(keys.includes(XSS_KEY), 'messages: a key with markup is shown as text', keys);
    check(await page.evaluate(() => window.__xss === undefined)
      && await page.locator('#view img, #view b').count() === 0, 'messages: no markup from broker data reached the DOM');

    // A failed request is shown with the broker's reason.
    await page.goto(`${b.base}/ui/#/messages?id=NO-SUCH-MESSAGE`);
    await page.waitForSelector('body[data-ready="messages"]', { timeout: 15000 });
    const notFound = await text('#search-result');
    check(notFound.includes('404') && notFound.includes('MESSAGE_NOT_FOUND'), 'messages: an unknown id shows the 404 and its code', notFound);
    await page.goto(`${b.base}/ui/#/groups`);
    await page.waitForSelector('body[data-ready="groups"]');
    // With the broker gone, the next periodic refresh shows why it failed.
    b.kill();
    await b.exited;
    await page.waitForSelector('#error:not([hidden])', { timeout: 15000 });
    const banner = await text('#error');
    check(banner.includes('GET /v1/groups') && banner.includes('did not answer'),
      'groups: with the broker gone, a refresh shows an error naming the call', banner);
    check(pageErrors.length === 0, 'no script errors in the page', pageErrors);
  } catch (e) {
    check(false, `the run went through: ${e.stack || e}`);
  } finally {
    if (browser) await browser.close().catch(() => {});
    for (const c of children) c.kill('SIGKILL');
    b.kill();
    await Promise.race([b.exited, sleep(5000)]);
    // Kept for a look when something failed: the broker's log.
    if (failed) fs.copyFileSync(path.join(dir, 'broker.log'), path.join(ARTIFACTS, 'broker.log'));
    else fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main();
