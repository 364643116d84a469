/* The Nodes page in a real (headless Debian) Chromium against the real
 * daemon: the nav link leads to a table of the nodes serving this index,
 * this daemon's row marked as the answering node and alive, with its
 * address, version and workers as GET /v1/nodes gives them; nothing is
 * logged to the console. Screenshot: BUILD/tests/browser/artifacts/. */
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const H = require('./harness');

const pw = H.deps();
let daemon, browser;

test.before(async () => {
  daemon = await new H.Daemon(['--workers', '1', '--node-id', 'node-a']).start();
  browser = await H.browser(pw);
});

test.after(async () => {
  if (browser) await browser.close();
  if (daemon) await daemon.stop();
});

test('the Nodes page lists this daemon alive, with its address and workers', async () => {
  const ctx = await H.context(browser, {viewport: {width: 1280, height: 700}});
  const page = await ctx.newPage();
  const errors = H.watchConsole(page);
  const api = await daemon.json('GET', '/v1/nodes', {expect: 200});
  await page.goto(daemon.url + '/');
  await page.click('a[data-nav="nodes"]');
  await page.waitForSelector('#nodes tr[data-node="node-a"]');
  const row = await page.$$eval('#nodes tr[data-node="node-a"] td',
    (tds) => tds.map((td) => td.textContent));
  const me = api.nodes.find((n) => n.id === 'node-a');
  assert.equal(row[0], 'node-a (this node)');
  assert.equal(row[1], 'alive');
  assert.equal(row[2], me.address);
  assert.equal(row[3], me.version);
  assert.equal(row[4], '1');
  assert.equal(row[5], '0');
  assert.equal(await page.getAttribute('#nodes tr[data-node="node-a"]', 'data-alive'), 'true');
  assert.ok(await page.$eval('a[data-nav="nodes"]', (a) => a.classList.contains('active')));
  await H.shot(page, 'nodes');
  assert.deepEqual(errors, []);
  await ctx.close();
});
