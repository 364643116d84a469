/* Shared harness for the dashboard's browser tests (suite 'browser').
 *
 * - deps(): installs playwright-core into tests/browser/node_modules with
 *   `npm ci` when it is missing (one process at a time: a lock directory),
 *   then returns it. Only the npm registry is reached, and only then.
 * - Daemon: the real decompd binary (DECOMPD_BIN) on an ephemeral loopback
 *   port (--listen 127.0.0.1:0; the port is read from the event=listening
 *   log line) with a temporary data dir, killed when the test ends. Under
 *   tests/integration/pg_server.py (DECOMPD_TEST_INDEX set: the pg-
 *   browser tests) its index is a database of its own on that PostgreSQL
 *   server (TEST_INDEX says which).
 * - browser(): Debian's /usr/bin/chromium, headless, with the flags this
 *   machine's closed network needs, and a fresh profile (Playwright makes
 *   one per launch).
 * - context(browser, options): a browser context whose waits (selectors,
 *   navigation, clicks) give up only after WAIT_MS: a test waits for what
 *   it checks, not for a guess of how fast a busy machine is.
 * - watchConsole(page): every console error and uncaught exception.
 * - tinyModel(): a small CNN's weights as safetensors (written here: no
 *   torch needed) with its layer spec, spectra that decay like trained
 *   weights, a 1x1 conv and a Linear that the engine leaves alone.
 * - largeConv(): one 1024->1024 5x5 conv as safetensors, for a long layer.
 * - wideConvs(): three 256->256 3x3 convs as safetensors: a job the
 *   daemon spreads over tasks on a PostgreSQL index (its layers cost more
 *   than spreading's threshold) that still takes about a second.
 * - calibratedHead(): a conv and a Linear with their spec and a
 *   decompd.calibration file for both (calibrationFile() writes one).
 * - shot(page, name): a screenshot in BUILD/tests/browser/artifacts/. */
'use strict';

const {execFileSync, spawn} = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const HERE = __dirname;
const BIN = process.env.DECOMPD_BIN || '';
const BUILD_DIR = process.env.DECOMPD_BUILD_DIR || path.join(HERE, '..', '..', 'build');
const ARTIFACTS = path.join(BUILD_DIR, 'tests', 'browser', 'artifacts');
const CHROMIUM = process.env.DECOMPD_CHROMIUM || '/usr/bin/chromium';
/* How long any wait may take before the test fails: generous, since it
 * only ends a test that would otherwise hang. */
const WAIT_MS = 300000;
/* A PostgreSQL server (postgresql://USER@HOST:PORT) from pg_server.py, or
 * "": the embedded store. */
const TEST_INDEX = process.env.DECOMPD_TEST_INDEX || '';
const PG_BIN = process.env.DECOMPD_PG_BIN || '/usr/lib/postgresql/15/bin';

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/* ---- npm dependencies -------------------------------------------------- */

function installed() {
  return fs.existsSync(path.join(HERE, 'node_modules', 'playwright-core', 'package.json'));
}

function deps() {
  if (!installed()) {
    const lock = path.join(HERE, 'node_modules.lock');
    const deadline = Date.now() + 600000;
    for (;;) {
      try {
        fs.mkdirSync(lock);
        break;
      } catch (e) {
        if (e.code !== 'EEXIST') throw e;
        if (installed()) break;
        /* an install killed half-way leaves its lock: older than the
         * install's own time limit, it is stale */
        try {
          if (Date.now() - fs.statSync(lock).mtimeMs > 600000) fs.rmdirSync(lock);
        } catch (e2) { /* gone meanwhile */ }
        if (Date.now() > deadline) throw new Error('waited 10 min for ' + lock + ' (stale? remove it)');
        execFileSync('sleep', ['0.5']);
      }
    }
    try {
      if (!installed()) {
        process.stderr.write('browser tests: npm ci in ' + HERE + '\n');
        execFileSync('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'],
          {cwd: HERE, stdio: ['ignore', 'inherit', 'inherit'], timeout: 600000});
      }
    } finally {
      try { fs.rmdirSync(lock); } catch (e) { /* another one removed it */ }
    }
  }
  return require(path.join(HERE, 'node_modules', 'playwright-core'));
}

/* ---- the daemon -------------------------------------------------------- */

/* Under TEST_INDEX, the index of a daemon on `dataDir`: a database of its
 * own on that server (as tests/integration/conftest.py's index_for). */
function indexFor(dataDir) {
  const u = new URL(TEST_INDEX);
  const name = 'd_' + require('node:crypto').createHash('sha256').update(dataDir)
    .digest('hex').slice(0, 20);
  execFileSync(path.join(PG_BIN, 'createdb'), ['-h', u.hostname, '-p', u.port || '5432',
    '-U', u.username || 'decompd', name], {stdio: ['ignore', 'ignore', 'inherit']});
  return TEST_INDEX.replace(/\/+$/, '') + '/' + name;
}

class Daemon {
  constructor(args = []) {
    if (!BIN || !fs.existsSync(BIN)) throw new Error('DECOMPD_BIN not set or missing: ' + BIN);
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'decompd-browser-'));
    this.dataDir = path.join(this.dir, 'var');
    this.logPath = path.join(this.dir, 'decompd.log');
    this.args = args;
    this.env = {...process.env};
    if (TEST_INDEX) this.env.DECOMPD_INDEX = indexFor(this.dataDir);
    this.proc = null;
    this.port = 0;
  }

  async start() {
    const log = fs.openSync(this.logPath, 'a');
    this.proc = spawn(BIN, ['--data-dir', this.dataDir, '--listen', '127.0.0.1:0', ...this.args],
      {stdio: ['ignore', 'ignore', log], env: this.env});
    fs.closeSync(log);
    let exited = null;
    this.proc.on('exit', (code) => { exited = code; });
    const deadline = Date.now() + WAIT_MS;
    while (Date.now() < deadline) {
      const m = this.log().match(/event=listening addr=127\.0\.0\.1:(\d+)/);
      if (m) {
        this.port = Number(m[1]);
        this.url = 'http://127.0.0.1:' + this.port;
        return this;
      }
      if (exited !== null) throw new Error('decompd exited ' + exited + ':\n' + this.log());
      await sleep(50);
    }
    throw new Error('decompd did not start:\n' + this.log());
  }

  log() {
    try { return fs.readFileSync(this.logPath, 'utf8'); } catch (e) { return ''; }
  }

  /* `decompd ARGS --data-dir DIR` (admin verbs); its stdout. */
  cli(...args) {
    return execFileSync(BIN, [...args, '--data-dir', this.dataDir],
      {encoding: 'utf8', env: this.env}).trim();
  }

  async stop() {
    if (this.proc && this.proc.exitCode === null) {
      const done = new Promise((r) => this.proc.once('exit', r));
      this.proc.kill('SIGKILL');
      await done;
    }
    fs.rmSync(this.dir, {recursive: true, force: true});
  }

  async request(method, p, {body, token, type} = {}) {
    const headers = {};
    if (token) headers.Authorization = 'Bearer ' + token;
    if (type) headers['Content-Type'] = type;
    const res = await fetch(this.url + p, {method, headers, body});
    const text = Buffer.from(await res.arrayBuffer());
    return {status: res.status, headers: res.headers, body: text};
  }

  async json(method, p, opts = {}) {
    if (opts.json !== undefined) {
      opts = {...opts, body: JSON.stringify(opts.json), type: 'application/json'};
    }
    const r = await this.request(method, p, opts);
    const doc = r.body.length ? JSON.parse(r.body.toString('utf8')) : null;
    if (opts.expect !== undefined && r.status !== opts.expect) {
      throw new Error(`${method} ${p}: ${r.status} ${r.body.toString('utf8').slice(0, 500)}`);
    }
    return doc;
  }

  async upload(bytes, name, token) {
    return this.json('POST', '/v1/models?name=' + encodeURIComponent(name),
      {body: bytes, type: 'application/octet-stream', token});
  }

  async waitJob(id, token, timeoutMs = WAIT_MS) {
    const deadline = Date.now() + timeoutMs;
    let j;
    while (Date.now() < deadline) {
      j = await this.json('GET', '/v1/jobs/' + id, {token, expect: 200});
      if (['succeeded', 'failed', 'cancelled'].includes(j.state)) return j;
      await sleep(100);
    }
    throw new Error('job ' + id + ' still ' + (j && j.state));
  }
}

/* ---- the browser ------------------------------------------------------- */

async function browser(pw) {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(CHROMIUM + ' not found: install Debian\'s chromium (scripts/install-deps)');
  }
  return pw.chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

async function context(b, options = {}) {
  const ctx = await b.newContext(options);
  ctx.setDefaultTimeout(WAIT_MS);
  ctx.setDefaultNavigationTimeout(WAIT_MS);
  return ctx;
}

/* Console errors and uncaught exceptions of `page`, as strings. */
function watchConsole(page) {
  const errors = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push('console: ' + m.text() + ' @ ' + JSON.stringify(m.location()));
  });
  page.on('pageerror', (e) => errors.push('pageerror: ' + (e.stack || e.message)));
  page.on('requestfailed', (r) => {
    /* a download handed to the browser, or navigation away, is not an error */
    const why = r.failure() ? r.failure().errorText : '';
    if (!/ERR_ABORTED/.test(why)) errors.push('requestfailed: ' + r.url() + ' ' + why);
  });
  return errors;
}

async function shot(page, name) {
  fs.mkdirSync(ARTIFACTS, {recursive: true});
  const p = path.join(ARTIFACTS, name + '.png');
  await page.screenshot({path: p, fullPage: true});
  process.stderr.write('screenshot: ' + p + '\n');
  return p;
}

/* ---- a small model ----------------------------------------------------- */

function rng(seed) {
  let a = seed >>> 0;
  const next = () => { /* mulberry32 */
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => { /* standard normal, Box-Muller */
    const u = Math.max(next(), 1e-12), v = next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
}

/* A conv weight [o, i, kh, kw] whose reshaped matrix has singular values
 * decaying like exp(-j/decay): a sum of random rank-one terms, plus noise. */
function convWeight(randn, o, i, kh, kw, decay) {
  const rows = i * kh, cols = o * kw;
  const m = new Float32Array(rows * cols);
  const terms = Math.min(rows, cols);
  const u = new Float32Array(rows), v = new Float32Array(cols);
  for (let t = 0; t < terms; t++) {
    const sv = Math.exp(-t / decay);
    for (let r = 0; r < rows; r++) u[r] = randn();
    for (let c = 0; c < cols; c++) v[c] = randn();
    for (let r = 0; r < rows; r++) {
      const ur = u[r] * sv;
      for (let c = 0; c < cols; c++) m[r * cols + c] += ur * v[c];
    }
  }
  /* M[(ii,h),(oo,w)] = W[oo, ii, h, w] */
  const w = new Float32Array(o * i * kh * kw);
  const scale = 1 / Math.sqrt(rows * cols);
  for (let oo = 0; oo < o; oo++)
    for (let ii = 0; ii < i; ii++)
      for (let hh = 0; hh < kh; hh++)
        for (let ww = 0; ww < kw; ww++)
          w[((oo * i + ii) * kh + hh) * kw + ww] =
            (m[(ii * kh + hh) * cols + oo * kw + ww] + 0.01 * randn()) * scale;
  return w;
}

function safetensors(tensors) {
  const header = {};
  let off = 0;
  for (const [name, t] of tensors) {
    header[name] = {dtype: 'F32', shape: t.shape, data_offsets: [off, off + t.data.byteLength]};
    off += t.data.byteLength;
  }
  let hjson = JSON.stringify(header);
  while ((8 + hjson.length) % 8) hjson += ' ';
  const out = Buffer.alloc(8 + hjson.length + off);
  out.writeBigUInt64LE(BigInt(hjson.length), 0);
  out.write(hjson, 8, 'utf8');
  let p = 8 + hjson.length;
  for (const [, t] of tensors) {
    Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).copy(out, p);
    p += t.data.byteLength;
  }
  return out;
}

/* { weights: Buffer (safetensors), spec: {layers: [...]} } */
function tinyModel(seed = 1) {
  const randn = rng(seed);
  const convs = [
    // name, in, out, k, stride, groups, decay
    ['stem', 3, 32, 3, 1, 1, 4],
    ['block1.conv1', 32, 64, 3, 1, 1, 24],
    ['block1.conv2', 64, 64, 3, 1, 1, 40],
    ['block2.conv1', 64, 128, 3, 2, 1, 48],
    ['block2.conv2', 128, 128, 3, 1, 1, 64],
    ['block2.grouped', 128, 128, 3, 1, 2, 32],
    ['block3.wide', 128, 128, 5, 1, 1, 80],
    ['block3.proj', 128, 256, 1, 1, 1, 16],
  ];
  const tensors = [];
  const layers = [];
  for (const [name, cin, cout, k, stride, groups, decay] of convs) {
    const data = groups === 1 ? convWeight(randn, cout, cin, k, k, decay)
      : (() => { /* each group its own matrix */
        const o = cout / groups, i = cin / groups, per = o * i * k * k;
        const all = new Float32Array(cout * i * k * k);
        for (let g = 0; g < groups; g++) all.set(convWeight(randn, o, i, k, k, decay), g * per);
        return all;
      })();
    tensors.push([name + '.weight', {shape: [cout, cin / groups, k, k], data}]);
    const bias = new Float32Array(cout).map(() => 0.1 * randn());
    tensors.push([name + '.bias', {shape: [cout], data: bias}]);
    layers.push({name, type: 'Conv2d', in_channels: cin, out_channels: cout,
      kernel_size: [k, k], stride: [stride, stride], padding: [(k - 1) / 2, (k - 1) / 2],
      dilation: [1, 1], groups, bias: true, padding_mode: 'zeros'});
  }
  const fc = new Float32Array(10 * 256).map(() => 0.05 * randn());
  tensors.push(['fc.weight', {shape: [10, 256], data: fc}]);
  tensors.push(['fc.bias', {shape: [10], data: new Float32Array(10)}]);
  layers.push({name: 'fc', type: 'Linear'});
  return {weights: safetensors(tensors), spec: {layers}};
}

/* One conv big enough that the engine works on it for many seconds (the
 * amct preset computes in float64: a 5120x5120 matrix), random weights. */
function largeConv(seed = 7) {
  const next = rng(seed);
  const cin = 1024, cout = 1024, k = 5;
  const data = new Float32Array(cout * cin * k * k);
  for (let i = 0; i < data.length; i++) data[i] = 0.01 * next();
  const spec = {layers: [{name: 'big', type: 'Conv2d', in_channels: cin, out_channels: cout,
    kernel_size: [k, k], stride: [1, 1], padding: [2, 2], dilation: [1, 1], groups: 1,
    bias: false, padding_mode: 'zeros'}]};
  return {weights: safetensors([['big.weight', {shape: [cout, cin, k, k], data}]]), spec};
}

function wideConvs(seed = 11) {
  const next = rng(seed);
  const c = 256, k = 3, n = 3;
  const tensors = [], layers = [];
  for (let l = 0; l < n; l++) {
    const data = new Float32Array(c * c * k * k);
    for (let i = 0; i < data.length; i++) data[i] = 0.02 * next();
    tensors.push(['conv' + l + '.weight', {shape: [c, c, k, k], data}]);
    layers.push({name: 'conv' + l, type: 'Conv2d', in_channels: c, out_channels: c,
      kernel_size: [k, k], stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1,
      bias: false, padding_mode: 'zeros'});
  }
  return {weights: safetensors(tensors), spec: {layers}};
}

/* A head: a 3x3 conv 16->32 and a Linear 64->10 with their spec, as
 * safetensors; and a decompd.calibration file for both (Grams of
 * correlated random inputs: the conv's [1, 144, 144] patch Gram, the
 * Linear's [64, 64]), written here as README.md (decompctl decompose
 * --calibration) gives it: float64 Grams, int64 counts, the layer map in
 * __metadata__. */
function calibratedHead(seed = 3) {
  const randn = rng(seed);
  const conv = convWeight(randn, 32, 16, 3, 3, 24);
  const fc = new Float32Array(10 * 64).map(() => 0.1 * randn());
  const weights = safetensors([
    ['conv.weight', {shape: [32, 16, 3, 3], data: conv}],
    ['conv.bias', {shape: [32], data: new Float32Array(32)}],
    ['fc.weight', {shape: [10, 64], data: fc}],
    ['fc.bias', {shape: [10], data: new Float32Array(10).map(() => 0.1 * randn())}],
  ]);
  const spec = {layers: [
    {name: 'conv', type: 'Conv2d', in_channels: 16, out_channels: 32, kernel_size: [3, 3],
      stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1, bias: true,
      padding_mode: 'zeros'},
    {name: 'fc', type: 'Linear', in_features: 64, out_features: 10, bias: true},
  ]};
  /* X = Z·M (rows of correlated inputs), G = XᵀX, exactly symmetric */
  const gram = (n, rows) => {
    const mix = Array.from({length: n * n}, (_, i) => randn() * Math.exp(-(i % n) / (n / 4)));
    const x = new Float64Array(rows * n);
    for (let r = 0; r < rows; r++) {
      const z = Array.from({length: n}, randn);
      for (let j = 0; j < n; j++) {
        let v = 0;
        for (let k = 0; k < n; k++) v += z[k] * mix[k * n + j];
        x[r * n + j] = v;
      }
    }
    const g = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      for (let j = i; j < n; j++) {
        let v = 0;
        for (let r = 0; r < rows; r++) v += x[r * n + i] * x[r * n + j];
        g[i * n + j] = v;
        g[j * n + i] = v;
      }
    }
    return g;
  };
  const calibration = calibrationFile([
    ['conv', 'Conv2d', [1, 144, 144], gram(144, 400)],
    ['fc', 'Linear', [64, 64], gram(64, 300)],
  ]);
  return {weights, spec, calibration};
}

/* A decompd.calibration safetensors file from [name, type, shape, Float64Array]. */
function calibrationFile(entries) {
  const header = {__metadata__: {format: 'decompd.calibration', version: '1', layers: JSON.stringify(
    Object.fromEntries(entries.map(([name, type, shape]) => [name, {gram: name, type, shape}])))}};
  const parts = [];
  let off = 0;
  for (const [name, , shape, g] of entries) {
    header[name + '.gram'] = {dtype: 'F64', shape, data_offsets: [off, off + g.byteLength]};
    off += g.byteLength;
    parts.push(Buffer.from(g.buffer, g.byteOffset, g.byteLength));
    const count = new BigInt64Array([1000n]);
    header[name + '.count'] = {dtype: 'I64', shape: [], data_offsets: [off, off + 8]};
    off += 8;
    parts.push(Buffer.from(count.buffer));
  }
  let hjson = JSON.stringify(header);
  while ((8 + hjson.length) % 8) hjson += ' ';
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(hjson)), 0);
  return Buffer.concat([len, Buffer.from(hjson, 'utf8'), ...parts]);
}

module.exports = {deps, Daemon, browser, context, watchConsole, shot, tinyModel, largeConv,
  wideConvs,
  sleep, calibratedHead, calibrationFile, ARTIFACTS, WAIT_MS, TEST_INDEX};
