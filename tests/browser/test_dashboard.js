/* The dashboard in a real (headless Debian) Chromium against the real
 * daemon: a job submitted over the API appears in the list and reaches
 * succeeded without a reload; its page shows one row per layer of the info
 * file (decomposed + left alone), a drawn energy curve per layer with the
 * chosen rank marked and the whole model's MACs chart; a job uploaded and
 * submitted from the page's own forms runs too; a job on one long layer
 * shows the layer, its step and share done (the page follows the job's
 * event stream), and its page's Cancel stops it inside the layer; the
 * static files carry
 * their Content-Type and ETag (304 on revalidation); nothing is logged to
 * the console. Screenshots: BUILD/tests/browser/artifacts/. */
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
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

async function newPage() {
  const ctx = await H.context(browser, {viewport: {width: 1280, height: 900}});
  const page = await ctx.newPage();
  return {page, errors: H.watchConsole(page)};
}

test('static files: content types, ETag and 304, no token needed', async () => {
  const want = {'/': 'text/html', '/ui/app.js': 'text/javascript', '/ui/style.css': 'text/css',
    '/ui/favicon.svg': 'image/svg+xml'};
  for (const [p, type] of Object.entries(want)) {
    const r = await daemon.request('GET', p);
    assert.equal(r.status, 200, p);
    assert.ok(r.headers.get('content-type').startsWith(type), p + ' ' + r.headers.get('content-type'));
    const etag = r.headers.get('etag');
    assert.match(etag, /^"[0-9a-f]{32}"$/, p);
    assert.equal(r.headers.get('cache-control'), 'no-cache');
    const again = await daemon.request('GET', p, {});
    assert.equal(again.headers.get('etag'), etag, 'stable ETag ' + p);
    const res = await fetch(daemon.url + p, {headers: {'If-None-Match': etag}});
    assert.equal(res.status, 304, p);
  }
  const html = await daemon.request('GET', '/');
  assert.match(html.headers.get('content-security-policy'), /default-src 'none'/);
  assert.doesNotMatch(html.body.toString(), /https?:\/\/(?!127\.0\.0\.1)/, 'nothing from elsewhere');
  assert.equal((await daemon.request('GET', '/ui/nope.js')).status, 404);
});

test('a job submitted over the API goes live to succeeded; its page shows every layer and the charts', async () => {
  const {page, errors} = await newPage();
  await page.goto(daemon.url + '/');
  await page.waitForSelector('p.empty:not([hidden])');
  await page.evaluate(() => { window.__sameDocument = true; });

  const {weights, spec} = H.tinyModel(1);
  const m = await daemon.upload(weights, 'tinynet');
  assert.ok(m.id, JSON.stringify(m));
  const job = await daemon.json('POST', '/v1/jobs', {json: {model: m.id, spec, policy: 'budget'}, expect: 201});

  const row = `#jobs tr[data-job="${job.id}"]`;
  await page.waitForSelector(row);
  await page.waitForSelector(`${row}[data-state="succeeded"]`);
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page was not reloaded');
  const cells = await page.$$eval(`${row} td`, (tds) => tds.map((td) => td.textContent));
  assert.equal(cells[0], 'succeeded');
  assert.equal(cells[2], 'tinynet');
  assert.match(cells[3], /^budget/);
  assert.match(cells[4], /^(\d+)\/\1$/, 'progress full: ' + cells[4]);
  await H.shot(page, 'jobs-list');

  // filter by state: succeeded shows it, failed does not
  await page.click('.filters a[data-state="failed"]');
  await page.waitForSelector('p.empty:not([hidden])');
  assert.equal(await page.$(row), null);
  await page.click('.filters a[data-state="succeeded"]');
  await page.waitForSelector(row);

  await page.click(`${row} a`);
  await page.waitForSelector('#layers tbody tr');
  const info = await daemon.json('GET', `/v1/jobs/${job.id}/artifacts/decompose_info.json`, {expect: 200});
  const want = info.layers.length + info.skipped.length;
  assert.equal(want, spec.layers.length);
  assert.ok(info.layers.length >= 3 && info.skipped.length >= 2, JSON.stringify(info.summary));
  assert.equal(await page.$$eval('#layers tbody tr', (rs) => rs.length), want);
  assert.equal(await page.$$eval('#layers tbody tr.skipped', (rs) => rs.length), info.skipped.length);

  // the daemon recorded the spectra the curves need
  for (const l of info.layers) assert.ok(l.stats.singular_values.length === l.max_rank, l.name);
  // one drawn curve per layer with a spectrum, the chosen rank marked on each decomposed one
  const curves = await page.$$eval('#curves svg path.curve', (ps) => ps.map((p) => p.getAttribute('d')));
  assert.ok(curves.length >= info.layers.length, 'curves: ' + curves.length);
  for (const d of curves) assert.ok(d.split('L').length > 3, 'a drawn path: ' + d.slice(0, 80));
  assert.equal(await page.$$eval('#curves circle.chosen', (c) => c.length), info.layers.length);
  // the chosen point sits on the curve at the retained energy the info file gives
  const first = info.layers[0];
  const caption = await page.$eval(`#curves figure[data-layer="${first.name}"] figcaption`, (f) => f.textContent);
  assert.ok(caption.includes((first.stats.energy_retained * 100).toFixed(2)), caption);
  // whole-model MACs before and after
  const bars = await page.$$eval('svg.macs g.total path', (ps) => ps.length);
  assert.equal(bars, 2);
  const cards = await page.$eval('.cards', (c) => c.textContent);
  assert.ok(cards.includes('MACs'), cards);
  const links = await page.$$eval('.artifacts a', (as) => as.map((a) => a.getAttribute('href')));
  assert.equal(links.length, 3);
  for (const href of links) {
    const r = await daemon.request('GET', href);
    assert.equal(r.status, 200, href);
  }
  await H.shot(page, 'job-page');
  assert.deepEqual(errors, []);
  await page.context().close();
});

test('a long layer shows where it is inside it; Cancel on its page stops it there', async () => {
  const {page, errors} = await newPage();
  const {weights, spec} = H.largeConv();
  const m = await daemon.upload(weights, 'bigconv');
  assert.ok(m.id, JSON.stringify(m));
  const job = await daemon.json('POST', '/v1/jobs', {json: {model: m.id, spec, policy: 'amct'}, expect: 201});
  const streams = [];
  page.on('request', (rq) => { if (rq.url().endsWith('/events')) streams.push(rq.url()); });
  await page.goto(daemon.url + '/#/jobs/' + job.id);
  // the engine's reports inside the layer reach the page: layer, step, share done
  const cur = await page.waitForSelector('.progress .current');
  assert.match(await cur.textContent(), /^big: (spectrum|factors) \d+%$/);
  assert.equal(await page.$eval('.meta .progress .num', (n) => n.textContent), '0/1');
  await H.shot(page, 'job-inside-a-layer');
  await page.click('.actions button');
  await page.waitForSelector('.head .badge.state-cancelled');
  const j = await daemon.json('GET', '/v1/jobs/' + job.id, {expect: 200});
  assert.equal(j.state, 'cancelled');
  assert.equal(j.progress.layers_done, 0, 'stopped inside its only layer');
  assert.equal(j.progress.current, null);
  assert.equal(await page.$('.progress .current'), null);
  // the page followed the job's live event stream
  assert.deepEqual(streams, [daemon.url + '/v1/jobs/' + job.id + '/events']);
  assert.deepEqual(errors, []);
  await page.context().close();
});

test('upload a weights file and submit a job from the page', async () => {
  const {page, errors} = await newPage();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'decompd-ui-'));
  const {weights, spec} = H.tinyModel(2);
  fs.writeFileSync(path.join(dir, 'net2.safetensors'), weights);
  fs.writeFileSync(path.join(dir, 'net2.spec.json'), JSON.stringify(spec));
  try {
    await page.goto(daemon.url + '/#/new');
    await page.setInputFiles('#weights-file', path.join(dir, 'net2.safetensors'));
    assert.equal(await page.inputValue('#model-name'), 'net2');
    await page.click('#upload-form button[type=submit]');
    await page.waitForSelector('#upload-form .ok');
    const msg = await page.textContent('#upload-form .ok');
    assert.match(msg, /Uploaded net2 \(m_[0-9a-f]{16}, safetensors/);
    const selected = await page.inputValue('#model-select');
    assert.match(msg, new RegExp(selected));

    await page.setInputFiles('#spec-file', path.join(dir, 'net2.spec.json'));
    await page.selectOption('#policy-select', 'energy');
    await page.fill('#policy-knob', '0.9');
    await page.click('#submit-form button[type=submit]');
    await page.waitForURL(/#\/jobs\/j_[0-9a-f]{16}$/);
    const id = page.url().split('/').pop();
    const j = await daemon.json('GET', '/v1/jobs/' + id, {expect: 200});
    assert.deepEqual({name: j.policy.name, energy: j.policy.energy}, {name: 'energy', energy: 0.9});
    await page.waitForSelector('#layers tbody tr');
    assert.equal(await page.$$eval('#layers tbody tr', (rs) => rs.length), spec.layers.length);
    await H.shot(page, 'job-from-page');

    // a bad spec is refused with the daemon's message, on the form
    fs.writeFileSync(path.join(dir, 'bad.json'), '{"layers": [{"name": "stem"}]}');
    await page.goto(daemon.url + '/#/new');
    await page.waitForSelector('#model-select option[value^="m_"]', {state: 'attached'});
    await page.setInputFiles('#spec-file', path.join(dir, 'bad.json'));
    await page.click('#submit-form button[type=submit]');
    await page.waitForSelector('#submit-form .error');
    assert.match(await page.textContent('#submit-form .error'), /bad_spec: .*type/);
  } finally {
    fs.rmSync(dir, {recursive: true, force: true});
  }
  // the refused submission's 400 is the one console line allowed
  const other = errors.filter((e) => !/status of 400/.test(e));
  assert.deepEqual(other, []);
  await page.context().close();
});
