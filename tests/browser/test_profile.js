/* A profiled job's page in a real (headless Debian) Chromium against the
 * real daemon: with a latency profile attached to the model (built here
 * from the layer spec: the conv gets faster with every candidate, the
 * Linear slower), the job's page shows each decomposed layer's predicted
 * latency before → after in the layer table, the whole model's in a card
 * (with the speed-up and the device it was measured on) and in a chart,
 * names the profile in the job's facts, and shows the Linear left alone
 * for being slower. The same job without the profile shows none of it.
 * Nothing is logged to the console. Screenshots:
 * BUILD/tests/browser/artifacts/. */
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

/* A decompd.profile for calibratedHead's spec: `conv` (16→32 3×3) takes
 * 10 ms and every candidate is faster at low rank; `fc` (64→10) takes
 * 1 ms and its only candidate is slower at every rank. Channel ranks go to
 * min(O, I·kh·kw) = 32, spatial ones to min(I·kh, O·kw) = 48, svd ones to
 * min(in, out) = 10. */
function profileOf(spec) {
  const layers = {};
  for (const l of spec.layers) {
    if (l.type === 'Linear') {
      layers[l.name] = {type: 'Linear', weight_shape: [l.out_features, l.in_features], time: 0.001,
        candidates: [{method: 'svd', ranks: [1, 5, 10], times: [0.002, 0.004, 0.006]}]};
    } else {
      layers[l.name] = {type: 'Conv2d',
        weight_shape: [l.out_channels, l.in_channels].concat(l.kernel_size), time: 0.010,
        candidates: [
          {method: 'channel_svd', ranks: [1, 16, 32], times: [0.001, 0.004, 0.012]},
          {method: 'spatial_svd', order: 'vertical_first', ranks: [1, 24, 48],
            times: [0.002, 0.006, 0.014]}]};
    }
  }
  return {format: 'decompd.profile', version: 1, device_name: 'test cpu (browser)',
    torch_version: '2.x', dtype: 'float32', input_shape: [8, 16, 32, 32], layers};
}

/* As the page writes a profile's seconds (3 significant digits). */
function ms(sec) {
  return Number((sec * 1e3).toPrecision(3)) + ' ms';
}

async function layerTable(page) {
  const heads = await page.$$eval('#layers thead th', (ths) => ths.map((t) => t.textContent));
  const rows = await page.$$eval('#layers tbody tr', (trs) => trs.map((tr) =>
    [tr.dataset.layer, Array.from(tr.children, (td) => td.textContent)]));
  const out = {};
  for (const [name, cells] of rows) {
    out[name] = Object.fromEntries(heads.map((hd, i) => [hd, cells[i]]));
  }
  return {heads, rows: out};
}

async function jobPage(job) {
  const ctx = await H.context(browser, {viewport: {width: 1400, height: 900}});
  const page = await ctx.newPage();
  const errors = H.watchConsole(page);
  await page.goto(daemon.url + '/#/jobs/' + job.id);
  await page.waitForSelector('.head .badge.state-succeeded');
  await page.waitForSelector('#layers tbody tr');
  return {ctx, page, errors};
}

test('the job page shows each layer\'s and the whole model\'s predicted latency when the job had a profile', async () => {
  const {weights, spec} = H.calibratedHead();
  const m = await daemon.upload(weights, 'head');
  assert.ok(m.id, JSON.stringify(m));
  await daemon.json('PUT', '/v1/models/' + m.id + '/spec', {json: spec, expect: 200});
  const prof = await daemon.json('PUT', '/v1/models/' + m.id + '/profile',
    {json: profileOf(spec), expect: 200});
  assert.equal(prof.layers, 2);
  const job = await daemon.json('POST', '/v1/jobs',
    {json: {model: m.id, policy: POLICY, profile: true}, expect: 201});
  assert.equal(job.profile, prof.digest);
  await daemon.waitJob(job.id);
  const info = await daemon.json('GET', '/v1/jobs/' + job.id + '/artifacts/decompose_info.json',
    {expect: 200});
  assert.deepEqual(info.layers.map((l) => l.name), ['conv']);
  const conv = info.layers[0].stats;
  assert.equal(conv.latency_before, 0.010);
  assert.ok(conv.latency_after > 0 && conv.latency_after < 0.010, JSON.stringify(conv));
  const sum = info.summary;

  const {ctx, page, errors} = await jobPage(job);
  const t = await layerTable(page);
  assert.ok(t.heads.includes('Latency'), t.heads.join(','));
  assert.deepEqual(Object.keys(t.rows).sort(), ['conv', 'fc']);
  const cell = t.rows.conv.Latency;
  assert.ok(cell.startsWith(ms(0.010) + ' → ' + ms(conv.latency_after)), cell);
  assert.ok(cell.includes('(' + Math.round(100 * conv.latency_after / 0.010) + ' %)'), cell);
  // the Linear was left alone: every candidate is slower than it
  assert.equal(t.rows.fc.Method, '—');
  const fcRow = await page.textContent('#layers tr[data-layer="fc"]');
  assert.ok(fcRow.includes('left alone') && fcRow.includes('max_slowdown'), fcRow);
  // the whole model: a card with the speed-up and the device
  const card = await page.textContent('#latency-card');
  assert.ok(card.includes(ms(sum.latency_before) + ' → ' + ms(sum.latency_after)), card);
  assert.ok(card.includes('×' + (sum.latency_before / sum.latency_after).toFixed(2) + ' faster'), card);
  assert.ok(card.includes('test cpu (browser)') && card.includes(prof.digest.slice(0, 19)), card);
  // and a chart: the whole model, then the decomposed layer
  const bars = await page.$$eval('#latency svg.latency g', (gs) => gs.map((g) =>
    [g.getAttribute('class'), g.querySelector('title').textContent]));
  assert.deepEqual(bars.map((b) => b[0]), ['total', 'layer']);
  assert.ok(bars[0][1].includes(ms(sum.latency_before) + ' → ' + ms(sum.latency_after)), bars[0][1]);
  assert.ok(bars[1][1].startsWith('conv: ' + ms(0.010)), bars[1][1]);
  // the job's facts name the profile
  assert.equal(await page.getAttribute('#job-profile', 'title'), prof.digest);
  await H.shot(page, 'job-profiled');
  assert.deepEqual(errors, []);
  await ctx.close();

  // the same job without the profile: another job, no latency anywhere
  const plain = await daemon.json('POST', '/v1/jobs', {json: {model: m.id, policy: POLICY}, expect: 201});
  assert.notEqual(plain.id, job.id);
  await daemon.waitJob(plain.id);
  const p = await jobPage(plain);
  const tp = await layerTable(p.page);
  assert.ok(!tp.heads.includes('Latency'), tp.heads.join(','));
  assert.deepEqual(Object.keys(tp.rows).sort(), ['conv', 'fc']);
  assert.equal(tp.rows.fc.Method, 'svd'); // decomposed without the profile
  assert.equal(await p.page.$('#latency-card'), null);
  assert.equal(await p.page.$('#latency'), null);
  assert.equal(await p.page.$('#job-profile'), null);
  await H.shot(p.page, 'job-unprofiled');
  assert.deepEqual(p.errors, []);
  await p.ctx.close();
});
