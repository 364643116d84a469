/* With tokens on, the dashboard asks for one (the API answers 401), says
 * so when a wrong one is given, then works with the right one and keeps it
 * for the tab's session (sessionStorage): a reload does not ask again, a
 * new tab context does; "Forget token" asks again. Artifact downloads carry
 * the token. */
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

/* Console lines other than the 401s the token prompt is about. */
function unexpected(errors) {
  return errors.filter((e) => !/status of 401/.test(e));
}

test('the page asks for a token, refuses a wrong one, then works and keeps it', async () => {
  const tok = daemon.cli('token', 'create', '--role', 'read', '--name', 'dashboard');
  assert.match(tok, /^dcp_/);
  const admin = daemon.cli('token', 'create', '--role', 'submit', '--name', 'pipeline');
  const {weights, spec} = H.tinyModel(3);
  const m = await daemon.upload(weights, 'tokennet', admin);
  const job = await daemon.json('POST', '/v1/jobs', {json: {model: m.id, spec}, token: admin, expect: 201});
  await daemon.waitJob(job.id, admin);

  const ctx = await H.context(browser, {viewport: {width: 1280, height: 800}, acceptDownloads: true});
  const page = await ctx.newPage();
  const errors = H.watchConsole(page);
  await page.goto(daemon.url + '/');
  await page.waitForSelector('#token-dialog[open]');
  assert.equal(await page.$('#jobs tbody tr'), null, 'no data before a token');
  await H.shot(page, 'token-prompt');
  // Escape does not leave the page without a prompt
  await page.keyboard.press('Escape');
  await page.waitForTimeout(300);
  await page.waitForSelector('#token-dialog[open]');

  await page.fill('#token-input', 'dcp_' + '0'.repeat(64));
  await page.click('#token-form button[type=submit]');
  await page.waitForSelector('#token-dialog[open] #token-error:not([hidden])');
  assert.match(await page.textContent('#token-error'), /not accepted/);

  await page.fill('#token-input', tok);
  await page.click('#token-form button[type=submit]');
  await page.waitForSelector(`#jobs tr[data-job="${job.id}"][data-state="succeeded"]`);
  assert.equal(await page.$('#token-dialog[open]'), null);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('decompd.token')), tok);

  // the job page and its info file come through with the token
  await page.click(`#jobs tr[data-job="${job.id}"] a`);
  await page.waitForSelector('#layers tbody tr');
  assert.equal(await page.$$eval('#layers tbody tr', (r) => r.length), spec.layers.length);
  // a download sends the token too (a plain link could not)
  const [dl] = await Promise.all([
    page.waitForEvent('download'),
    page.click('.artifacts a[download="decompose_info.json"]'),
  ]);
  const info = JSON.parse(require('node:fs').readFileSync(await dl.path(), 'utf8'));
  assert.equal(info.format, 'decompd.decompose_info');

  // kept for the session: a reload does not ask
  await page.reload();
  await page.waitForSelector('#layers tbody tr');
  assert.equal(await page.$('#token-dialog[open]'), null);
  // forgetting it asks again
  await page.click('#forget-token');
  await page.waitForSelector('#token-dialog[open]');
  assert.deepEqual(unexpected(errors), []);
  await ctx.close();

  // another browser context (another session) has no token
  const ctx2 = await H.context(browser);
  const page2 = await ctx2.newPage();
  const errors2 = H.watchConsole(page2);
  await page2.goto(daemon.url + '/#/jobs/' + job.id);
  await page2.waitForSelector('#token-dialog[open]');
  assert.deepEqual(unexpected(errors2), []);
  await ctx2.close();
});
