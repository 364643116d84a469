/* A calibrated job's page in a real (headless Debian) Chromium against the
 * real daemon: its layer table shows each layer's shape (a Linear as
 * "Linear in→out", a conv as "in→out kh×kw"), its method (channel_svd for
 * the calibrated conv, svd for the Linear) and, where calibrated, the
 * output error the info file records; the page names the calibration. The
 * same job without it shows no output error. Nothing is logged to the
 * console. Screenshots: BUILD/tests/browser/artifacts/. */
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const H = require('./harness');

const pw = H.deps();
let daemon, browser;

test.before(async () => {
  daemon = await new H.Daemon(['--workers', '1']).start();
  browser = await H.browser(pw);
});

test.after(async () => {
  if (browser) await browser.close();
  if (daemon) await daemon.stop();
});

const POLICY = {name: 'fixed', rank: 4, types: ['Conv2d', 'Linear'], require_cheaper: false};

/* The text of each cell of the layer table's rows, by layer name, with
 * the column headers. */
async function layerTable(page) {
  const heads = await page.$$eval('#layers thead th', (ths) => ths.map((t) => t.textContent));
  const rows = await page.$$eval('#layers tbody tr', (trs) => trs.map((tr) =>
    [tr.dataset.layer, Array.from(tr.children, (td) => td.textContent)]));
  const out = {};
  for (const [name, cells] of rows) {
    out[name] = Object.fromEntries(heads.map((hd, i) => [hd, cells[i]]));
  }
  return out;
}

async function jobPage(job) {
  const ctx = await browser.newContext({viewport: {width: 1400, height: 900}});
  const page = await ctx.newPage();
  const errors = H.watchConsole(page);
  await page.goto(daemon.url + '/#/jobs/' + job.id);
  await page.waitForSelector('.head .badge.state-succeeded', {timeout: 300000});
  await page.waitForSelector('#layers tbody tr');
  return {ctx, page, errors};
}

const pct = (x) => (x * 100).toFixed(2) + ' %';

test('the job page shows each layer\'s shape, method and, where calibrated, its output error', async () => {
  const {weights, spec, calibration} = H.calibratedHead();
  const m = await daemon.upload(weights, 'head');
  assert.ok(m.id, JSON.stringify(m));
  await daemon.json('PUT', '/v1/models/' + m.id + '/spec', {json: spec, expect: 200});
  const cal = await daemon.json('PUT', '/v1/models/' + m.id + '/calibration',
    {body: calibration, type: 'application/octet-stream', expect: 200});
  assert.equal(cal.layers, 2);
  const job = await daemon.json('POST', '/v1/jobs',
    {json: {model: m.id, policy: POLICY, calibration: true}, expect: 201});
  await daemon.waitJob(job.id);
  const info = await daemon.json('GET', '/v1/jobs/' + job.id + '/artifacts/decompose_info.json',
    {expect: 200});
  const byName = Object.fromEntries(info.layers.map((l) => [l.name, l]));
  assert.equal(byName.fc.method, 'svd');
  assert.equal(byName.conv.method, 'channel_svd');

  const {ctx, page, errors} = await jobPage(job);
  const t = await layerTable(page);
  assert.deepEqual(Object.keys(t).sort(), ['conv', 'fc']);
  assert.equal(t.fc.Shape, 'Linear 64→10');
  assert.equal(t.conv.Shape, '16→32 3×3');
  assert.equal(t.fc.Method, 'svd');
  assert.equal(t.conv.Method, 'channel_svd');
  assert.equal(t.fc.Rank, '4 / 10');
  for (const name of ['fc', 'conv']) {
    const st = byName[name].stats;
    assert.ok(st.output_relative_error > 0 && st.output_relative_error < 1, name);
    assert.equal(t[name]['Output error'], pct(st.output_relative_error), name);
    assert.equal(t[name]['Rel. error'], pct(st.relative_error), name);
  }
  // the page names the calibration: in the job's facts and a card
  assert.equal(await page.getAttribute('#job-calibration', 'title'), cal.digest);
  const card = await page.textContent('#calibration-card');
  assert.ok(card.includes('2 layers') && card.includes(cal.digest.slice(0, 19)), card);
  const worst = Math.max(...info.layers.map((l) => l.stats.output_relative_error));
  assert.ok(card.includes(pct(worst)), card);
  // a calibrated layer's curve caption gives what it keeps on the data
  const caption = await page.$eval('#curves figure[data-layer="fc"] figcaption', (f) => f.textContent);
  assert.ok(caption.includes(pct(byName.fc.stats.output_energy_retained)), caption);
  await H.shot(page, 'job-calibrated');
  assert.deepEqual(errors, []);
  await ctx.close();

  // the same job without the calibration: another job, no output errors
  const plain = await daemon.json('POST', '/v1/jobs', {json: {model: m.id, policy: POLICY}, expect: 201});
  assert.notEqual(plain.id, job.id);
  await daemon.waitJob(plain.id);
  const p = await jobPage(plain);
  const tp = await layerTable(p.page);
  assert.equal(tp.fc.Shape, 'Linear 64→10');
  assert.equal(tp.fc.Method, 'svd');
  assert.equal(tp.fc['Output error'], '—');
  assert.equal(tp.conv['Output error'], '—');
  assert.equal(await p.page.$('#calibration-card'), null);
  assert.equal(await p.page.$('#job-calibration'), null);
  await H.shot(p.page, 'job-uncalibrated');
  assert.deepEqual(p.errors, []);
  await p.ctx.close();
});
