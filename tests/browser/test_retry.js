/* Retry in a real (headless Debian) Chromium against the real daemon: a job
 * that failed (its outputs could not be saved) shows its error and a Retry
 * button and no Cancel; once the cause is gone, Retry puts it back in the
 * queue and the page follows it to succeeded without a reload: the layers
 * table, attempts 2, no Retry any more; nothing is logged to the console.
 * Screenshots: BUILD/tests/browser/artifacts/. */
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
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

test('a failed job\'s page has Retry; it runs again and the page follows it to succeeded', async () => {
  const ctx = await browser.newContext({viewport: {width: 1280, height: 900}});
  const page = await ctx.newPage();
  const errors = H.watchConsole(page);
  const {weights, spec} = H.tinyModel(4);
  const m = await daemon.upload(weights, 'retrynet');
  assert.ok(m.id, JSON.stringify(m));
  // The data dir's tmp, where a job saves its outputs, is a file for now.
  const tmp = path.join(daemon.dataDir, 'tmp');
  fs.renameSync(tmp, tmp + '.away');
  fs.writeFileSync(tmp, 'not a folder');
  const job = await daemon.json('POST', '/v1/jobs', {json: {model: m.id, spec}, expect: 201});
  try {
    await page.goto(daemon.url + '/#/jobs/' + job.id);
    await page.waitForSelector('.head .badge.state-failed', {timeout: 120000});
  } finally {
    fs.unlinkSync(tmp);
    fs.renameSync(tmp + '.away', tmp);
  }
  assert.match(await page.textContent('#view p.error'), /^io_error: /);
  const buttons = await page.$$eval('.head .actions button', (bs) => bs.map((b) => b.textContent));
  assert.deepEqual(buttons, ['Retry']);
  await H.shot(page, 'job-failed-retry');
  await page.evaluate(() => { window.__sameDocument = true; });

  await page.click('.head .actions button[data-action="retry"]');
  await page.waitForSelector('.head .badge.state-succeeded', {timeout: 300000});
  await page.waitForSelector('#layers tbody tr');
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page was not reloaded');
  assert.equal(await page.$('#view p.error'), null);
  assert.equal(await page.$('.head .actions button'), null);
  const attempts = await page.$$eval('.meta dt', (dts) =>
    dts.filter((dt) => dt.textContent === 'Attempts').map((dt) => dt.nextElementSibling.textContent));
  assert.deepEqual(attempts, ['2']);
  const j = await daemon.json('GET', '/v1/jobs/' + job.id, {expect: 200});
  assert.equal(j.state, 'succeeded');
  assert.equal(j.attempts, 2);
  assert.equal(await page.$$eval('#layers tbody tr', (rs) => rs.length), spec.layers.length);
  await H.shot(page, 'job-retried');
  assert.deepEqual(errors, []);
  await ctx.close();
});
