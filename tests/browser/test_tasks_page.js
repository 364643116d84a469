/* A job's Tasks in a real (headless Debian) Chromium against the real
 * daemon. On a PostgreSQL index (pg-tasks_page, under
 * tests/integration/pg_server.py) a job whose layers are worth it is
 * spread over tasks: the job's
 * page, opened while the job waits behind another (no Tasks then), comes
 * to show without a reload one row per task of GET /v1/jobs/{id}/tasks in
 * its order, each done, with its stage, index, layers (counted, every name
 * in the title), attempts and this daemon's node id, which links to the
 * Nodes page. A job run whole — any job on the embedded store (tasks_page),
 * a small one on PostgreSQL — has no Tasks section. Nothing is logged to the console. Screenshot:
 * BUILD/tests/browser/artifacts/. */
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const H = require('./harness');

const pw = H.deps();
let daemon, browser;

test.before(async () => {
  daemon = await new H.Daemon(['--workers', '1', '--node-id', 'node-b']).start();
  browser = await H.browser(pw);
});

test.after(async () => {
  if (browser) await browser.close();
  if (daemon) await daemon.stop();
});

async function submit(model = H.tinyModel(1)) {
  const {weights, spec} = model;
  const m = await daemon.upload(weights, 'tinynet');
  assert.ok(m.id, JSON.stringify(m));
  return daemon.json('POST', '/v1/jobs', {json: {model: m.id, spec, policy: 'budget'}, expect: 201});
}

async function jobPage(id) {
  const ctx = await H.context(browser, {viewport: {width: 1280, height: 900}});
  const page = await ctx.newPage();
  const errors = H.watchConsole(page);
  await page.goto(daemon.url + '/#/jobs/' + id);
  await page.evaluate(() => { window.__sameDocument = true; });
  return {ctx, page, errors};
}

test('a spread job\'s page lists its tasks and the node that ran each', {skip: !H.TEST_INDEX &&
  'the embedded store runs each job whole'}, async () => {
  /* The one worker busy with a long job first: the page sees the job
   * queued, without tasks, then follows it through them. */
  const big = H.largeConv();
  const bm = await daemon.upload(big.weights, 'bigconv');
  assert.ok(bm.id, JSON.stringify(bm));
  const long = await daemon.json('POST', '/v1/jobs', {json: {model: bm.id, spec: big.spec,
    policy: 'budget'}, expect: 201});
  while ((await daemon.json('GET', '/v1/jobs/' + long.id, {expect: 200})).state === 'queued')
    await H.sleep(50);
  const job = await submit(H.wideConvs());
  const {ctx, page, errors} = await jobPage(job.id);
  await page.waitForSelector('.head .badge.state-queued');
  assert.equal(await page.$$eval('#tasks', (els) => els.length), 0, 'no tasks while queued');
  await daemon.json('POST', '/v1/jobs/' + long.id + '/cancel', {});
  /* the page follows the job to its end: the layers of its info file */
  await page.waitForSelector('#layers');
  const done = await daemon.waitJob(job.id);
  assert.equal(done.state, 'succeeded');
  const {tasks} = await daemon.json('GET', '/v1/jobs/' + job.id + '/tasks', {expect: 200});
  assert.ok(tasks.length >= 3, JSON.stringify(tasks));
  await page.waitForFunction((n) =>
    document.querySelectorAll('#tasks-table tbody tr[data-state="done"]').length === n, tasks.length);
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page was not reloaded');

  const rows = await page.$$eval('#tasks-table tbody tr', (trs) => trs.map((tr) => ({
    stage: tr.dataset.stage, index: Number(tr.dataset.index), node: tr.dataset.node,
    cells: [...tr.querySelectorAll('td')].map((td) => td.textContent),
    layersTitle: tr.querySelector('td.task-layers').title})));
  assert.equal(rows.length, tasks.length);
  assert.deepEqual(rows.map((r) => r.stage),
    tasks.map((t) => t.stage));
  assert.ok(rows.some((r) => r.stage === 'spectra') && rows.some((r) => r.stage === 'factors'));
  rows.forEach((r, i) => {
    const t = tasks[i];
    assert.equal(r.index, t.index);
    assert.equal(r.node, 'node-b');
    assert.equal(r.cells[0], t.stage);
    assert.equal(r.cells[1], String(t.index));
    if (t.layers.length) {
      assert.ok(r.cells[2].startsWith(t.layers.length + (t.layers.length === 1 ? ' layer' : ' layers')), r.cells[2]);
      assert.equal(r.layersTitle, t.layers.join('\n'));
    } else {
      assert.equal(t.stage, 'plan');
      assert.equal(r.cells[2], 'the whole model');
    }
    assert.equal(r.cells[3], 'done');
    assert.equal(r.cells[4], 'node-b');
    assert.equal(r.cells[5], String(t.attempts));
    assert.match(r.cells[6], /^\d+(\.\d)? s$/, r.cells[6]);
  });
  assert.match(await page.textContent('#tasks p'), new RegExp('^Spread over ' + tasks.length +
    ' tasks \\(' + tasks.length + ' done\\) on 1 node:'));
  /* a task's node leads to the Nodes page */
  await page.click('#tasks-table tbody tr:first-child td:nth-child(5) a');
  await page.waitForSelector('#nodes tr[data-node="node-b"]');
  await page.goBack();
  await page.waitForSelector('#tasks-table');
  await H.shot(page, 'tasks');
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('a job run whole has no Tasks section', async () => {
  const job = await submit();
  const done = await daemon.waitJob(job.id);
  assert.equal(done.state, 'succeeded');
  assert.deepEqual(await daemon.json('GET', '/v1/jobs/' + job.id + '/tasks', {expect: 200}),
    {tasks: []});
  const {ctx, page, errors} = await jobPage(job.id);
  /* the tick that drew the results answered the tasks too */
  await page.waitForSelector('#layers');
  assert.equal(await page.$$eval('#tasks, #tasks-table', (els) => els.length), 0);
  assert.equal(await page.$$eval('h2', (hs) => hs.filter((x) => x.textContent === 'Tasks').length), 0);
  assert.deepEqual(errors, []);
  await ctx.close();
});
