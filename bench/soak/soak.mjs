// The soak: hfgate under mixed traffic for a fixed time, with the IdP rotating keys (and its JWKS down
// now and then) and the upstream failing on purpose. Every request has one expected outcome, checked as
// it completes; hfgate's memory is sampled; at the end hfgate is stopped with SIGTERM and its audit file
// must hold exactly one line per request, with the status the client saw. Run through bench/soak.sh.

import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import readline from 'node:readline';
import { parseArgs } from 'node:util';

import { Idp } from './idp.mjs';
import { Upstream } from './upstream.mjs';

const AUDIENCE = 'hfgate-soak';
const ORG_CREDENTIAL = 'hf_soak_organisation_credential';
// Short, so hangs and stalls resolve quickly, yet well above the upstream's worst answer time when the
// load core is busy with other work (the soak reports how late its own event loop ran).
const ROUTE_TIMEOUT_S = 5; // upstream hangs become 504 after this
const IDLE_TIMEOUT_S = 5; // stalled streams are cut after this
const TOKEN_REUSE_MS = 20_000; // a client keeps a token this long (the IdP keeps retired keys 30 s)
const CLIENT_TIMEOUT_MS = 30_000;

const { values: args } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    workdir: { type: 'string' },
    hfgate: { type: 'string' },
    'hfgate-cpu': { type: 'string' },
    concurrency: { type: 'string', default: '128' },
    'sample-every': { type: 'string', default: '10' },
  },
});
const MINUTES = Number(args.minutes);
const CONCURRENCY = Number(args.concurrency);
const SAMPLE_EVERY_MS = Number(args['sample-every']) * 1000;
if (!(MINUTES > 0) || !(CONCURRENCY >= 1) || !(SAMPLE_EVERY_MS >= 1000) || !args.workdir || !args.hfgate) {
  console.error('usage: soak.mjs --workdir DIR --hfgate BIN [--minutes N] [--concurrency N] [--hfgate-cpu LIST] [--sample-every S]');
  process.exit(2);
}
const DURATION_MS = MINUTES * 60_000;
// Memory is judged from the end of the warm-up: by then every cache holding per-token entries has
// reached its steady size (verified tokens live until their exp, 120 s after minting; signed assertions
// 150 s; decisions 60 s). Runs too short to leave two minutes after it are reported, not judged.
const WARMUP_MS = 180_000;
const JUDGE_MEMORY = DURATION_MS >= WARMUP_MS + 120_000;
const WORK = path.resolve(args.workdir);

const log = (text) => process.stderr.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${text}\n`);

// ------------------------------------------------------------------------------------------ hfgate

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function writeConfig(idp, upstream, proxyPort, adminPort) {
  const credential = path.join(WORK, 'hf_token');
  fs.writeFileSync(credential, `${ORG_CREDENTIAL}\n`);
  const config = `# Written by bench/soak/soak.mjs.
[server]
listen = "127.0.0.1:${proxyPort}"
admin_listen = "127.0.0.1:${adminPort}"
public_url = "http://127.0.0.1:${proxyPort}"
shutdown_grace = "10s"

[audit]
path = "${path.join(WORK, 'audit.jsonl')}"

[[issuer]]
name = "soak"
issuer = "${idp.issuer}"
audiences = ["${AUDIENCE}"]
# Short, so rotations reach hfgate quickly; the IdP waits for hfgate's fetch before it signs with a new key.
jwks_refresh_interval = "5s"
jwks_refetch_min_interval = "1s"

[[route]]
name = "chat"
path = "/chat/"
upstream = "http://127.0.0.1:${upstream.port}"
api = "openai"
credential = "file:${credential}"
strip_prefix = true
timeout = "${ROUTE_TIMEOUT_S}s"
idle_timeout = "${IDLE_TIMEOUT_S}s"

[[route]]
name = "tgi"
path = "/tgi/"
upstream = "http://127.0.0.1:${upstream.port}"
api = "tgi"
model = "acme/soak-chat"
credential = "file:${credential}"
strip_prefix = true
timeout = "${ROUTE_TIMEOUT_S}s"
idle_timeout = "${IDLE_TIMEOUT_S}s"

# Research may run acme's models; support may only read metadata; mallory is refused everything.
[[allow]]
groups = ["ml-research"]
models = ["acme/*"]

[[allow]]
groups = ["support"]
actions = ["metadata"]

[[deny]]
users = ["mallory"]
`;
  const file = path.join(WORK, 'hfgate.toml');
  fs.writeFileSync(file, config);
  return file;
}

function startHfgate(configFile) {
  const logFd = fs.openSync(path.join(WORK, 'hfgate.log'), 'w');
  const command = args['hfgate-cpu'] ? 'taskset' : args.hfgate;
  const argv = args['hfgate-cpu'] ? ['-c', args['hfgate-cpu'], args.hfgate] : [];
  const child = spawn(command, [...argv, 'serve', '--config', configFile], { stdio: ['ignore', logFd, logFd] });
  fs.closeSync(logFd);
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.once('error', (err) => log(`cannot start hfgate: ${err.message}`));
  fs.writeFileSync(path.join(WORK, 'hfgate.pid'), String(child.pid));
  return child;
}

function get(port, urlPath) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body }));
      res.on('error', () => resolve({ status: 0, body }));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve({ status: 0, body: '' }));
  });
}

const CACHES = ['tokens', 'assertions', 'decisions'];

/** `hfgate_cache_entries` by cache, from a metrics scrape ("-" when it could not be read). */
function cacheEntries(metrics) {
  const entries = {};
  for (const name of CACHES) {
    const match = new RegExp(`^hfgate_cache_entries\\{cache="${name}"\\} (\\d+)$`, 'm').exec(metrics);
    entries[name] = match ? Number(match[1]) : '-';
  }
  return entries;
}

function rssKib(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    return match ? Number(match[1]) : null;
  } catch {
    return null;
  }
}

/** User + system CPU seconds of a process (clock ticks of 1/100 s, Linux's USER_HZ). */
function cpuSeconds(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return null;
  }
}

function logTail(lines = 20) {
  try {
    return fs.readFileSync(path.join(WORK, 'hfgate.log'), 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

// ------------------------------------------------------------------------------------ the requests

/** Tokens a client holds for a while, per user; re-minted with the IdP's current key when old. */
class TokenPool {
  constructor(idp, sub, groups, size = 8) {
    this.idp = idp;
    this.sub = sub;
    this.groups = groups;
    this.slots = Array.from({ length: size }, () => ({ token: null, at: 0 }));
  }

  take() {
    const slot = this.slots[Math.floor(Math.random() * this.slots.length)];
    const now = Date.now();
    if (!slot.token || now - slot.at > TOKEN_REUSE_MS) {
      slot.token = this.idp.mint(this.sub, this.groups);
      slot.at = now;
    }
    return slot.token;
  }
}

const USERS = {
  alice: ['ml-research'],
  bob: ['support'],
  mallory: ['ml-research'],
};

const rand = (lo, hi) => lo + Math.floor(Math.random() * (hi - lo + 1));

function tamper(token) {
  // Change one character in the middle of the signature (never the last one, whose low bits may not count).
  const dot = token.lastIndexOf('.');
  const at = dot + 1 + Math.floor((token.length - dot - 2) / 2);
  const c = token[at] === 'A' ? 'B' : 'A';
  return token.slice(0, at) + c + token.slice(at + 1);
}

function garbage() {
  return Math.random() < 0.5
    ? crypto.randomBytes(24).toString('hex')
    : [0, 1, 2].map(() => crypto.randomBytes(rand(8, 40)).toString('base64url')).join('.');
}

function algNone(idp) {
  const head = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
  const body = Buffer.from(JSON.stringify(idp.claims('alice', USERS.alice))).toString('base64url');
  return `${head}.${body}.`;
}

function chatBody(model, stream) {
  return JSON.stringify({ model, stream, max_tokens: 32, messages: [{ role: 'user', content: 'Say hello to the soak.' }] });
}

/**
 * Every kind of request the driver sends: how often (weight), how to build it, and what must come back.
 * `expect` is the outcome label of a correct answer; `check` refines it (reason of a 401, whole stream).
 */
function kinds(idp, pools) {
  const auth = (token) => (token ? { authorization: `Bearer ${token}` } : {});
  const valid = (sub, extra = {}) => ({
    'x-soak-sub': sub,
    // A client-sent identity header must never reach the upstream as is.
    ...(Math.random() < 0.2 ? { 'x-forwarded-user': 'spoofed-admin' } : {}),
    ...auth(pools[sub].take()),
    ...extra,
  });
  const chat = (headers, { model = 'acme/soak-chat', stream = false } = {}) => ({
    method: 'POST',
    path: '/chat/v1/chat/completions',
    headers: { 'content-type': 'application/json', ...headers },
    body: chatBody(model, stream),
  });
  const streamHeaders = () => ({ 'x-soak-events': String(rand(6, 16)), 'x-soak-gap-ms': String(rand(10, 30)) });
  // Refused and invalid requests ask the upstream to reset: if one were forwarded, it would show as a 502.
  const never = { 'x-soak-mode': 'reset' };
  const refused = { expect: '403', error: 'insufficient_scope' };
  const unauthorized = (reason) => ({ expect: '401', error: 'invalid_token', reason });
  return {
    'valid-info': { weight: 14, build: () => ({ method: 'GET', path: '/tgi/info', headers: valid(Math.random() < 0.5 ? 'alice' : 'bob') }), expect: '200' },
    'valid-chat': { weight: 16, build: () => chat(valid('alice')), expect: '200' },
    'valid-tgi': { weight: 6, build: () => ({ method: 'POST', path: '/tgi/generate', headers: { 'content-type': 'application/json', ...valid('alice') }, body: '{"inputs":"hello","parameters":{"max_new_tokens":16}}' }), expect: '200' },
    'valid-stream': { weight: 10, build: () => chat(valid('alice', streamHeaders()), { stream: true }), expect: '200 stream' },
    'valid-tgi-stream': { weight: 4, build: () => ({ method: 'POST', path: '/tgi/generate_stream', headers: { 'content-type': 'application/json', ...valid('alice', streamHeaders()) }, body: '{"inputs":"hello","parameters":{"max_new_tokens":16}}', tgi: true }), expect: '200 stream' },
    'fresh-valid': { weight: 4, build: () => chat({ 'x-soak-sub': 'alice', ...auth(idp.mint('alice', USERS.alice)) }), expect: '200' },
    'upstream-503': { weight: 1.5, build: () => chat(valid('alice', { 'x-soak-mode': 'status-503' })), expect: '503' },
    'upstream-500': { weight: 0.5, build: () => chat(valid('alice', { 'x-soak-mode': 'status-500' })), expect: '500' },
    'upstream-reset': { weight: 1.5, build: () => chat(valid('alice', { 'x-soak-mode': 'reset' })), expect: '502', error: 'bad_gateway' },
    'upstream-hang': { weight: 0.1, build: () => chat(valid('alice', { 'x-soak-mode': 'hang' })), expect: '504', error: 'gateway_timeout' },
    'stream-reset': { weight: 1, build: () => chat(valid('alice', { ...streamHeaders(), 'x-soak-mode': 'sse-reset' }), { stream: true }), expect: '200 truncated' },
    'stream-stall': { weight: 0.1, build: () => chat(valid('alice', { ...streamHeaders(), 'x-soak-mode': 'sse-stall' }), { stream: true }), expect: '200 truncated' },
    'abort-stream': { weight: 1, build: () => ({ ...chat(valid('alice', { 'x-soak-events': '16', 'x-soak-gap-ms': '30' }), { stream: true }), abortAfterEvents: 2 }), expect: 'client-abort' },
    'refused-support': { weight: 5, build: () => chat(valid('bob', never)), ...refused },
    'refused-model': { weight: 3, build: () => chat(valid('alice', never), { model: 'meta-llama/Llama-3.1-8B-Instruct' }), ...refused },
    'refused-deny': { weight: 2, build: () => ({ method: 'GET', path: '/tgi/info', headers: valid('mallory', never) }), ...refused },
    'invalid-expired': { weight: 3, build: () => chat({ ...never, ...auth(idp.sign(idp.active, idp.claims('alice', USERS.alice, { expired: true }))) }), ...unauthorized(/^token expired/) },
    'invalid-aud': { weight: 2, build: () => chat({ ...never, ...auth(idp.sign(idp.active, idp.claims('alice', USERS.alice, { aud: 'someone-else' }))) }), ...unauthorized(/^aud mismatch/) },
    'invalid-iss': { weight: 1, build: () => chat({ ...never, ...auth(idp.sign(idp.active, idp.claims('alice', USERS.alice, { iss: 'https://idp.elsewhere.example' }))) }), ...unauthorized(/^iss is not a configured issuer/) },
    'invalid-tampered': { weight: 3, build: () => chat({ ...never, ...auth(tamper(pools.alice.take())) }), ...unauthorized(/^signature verification failed/) },
    'invalid-garbage': { weight: 2, build: () => chat({ ...never, ...auth(garbage()) }), ...unauthorized(/^malformed token/) },
    'invalid-missing': { weight: 2, build: () => chat({ ...never }), ...unauthorized(/^missing bearer token/) },
    'invalid-alg-none': { weight: 1, build: () => chat({ ...never, ...auth(algNone(idp)) }), ...unauthorized(/^alg none is never accepted/) },
    'invalid-unknown-kid': { weight: 1, build: () => chat({ ...never, ...auth(idp.mintRogue('alice', USERS.alice)) }), ...unauthorized(/^unknown kid/) },
    // A fresh token signed with the key the IdP dropped last: refused once hfgate has fetched a JWKS
    // without it; before that, hfgate may still hold the key (either answer is right).
    'retired-key': {
      weight: 1.5,
      build: () => {
        const retired = idp.mintRetired('alice', USERS.alice);
        if (!retired) return { ...chat({ ...never, ...auth(idp.mintRogue('alice', USERS.alice)) }), variant: 'none dropped yet' };
        if (retired.strict) return { ...chat({ ...never, ...auth(retired.token) }), variant: 'dropped' };
        return { ...chat({ 'x-soak-sub': 'alice', ...auth(retired.token) }), variant: 'grace', alsoExpect: '200' };
      },
      ...unauthorized(/^unknown kid/),
    },
    'no-route': { weight: 1, build: () => ({ method: 'GET', path: '/nowhere/v1/models', headers: valid('alice') }), expect: '404', error: 'not_found' },
  };
}

// --------------------------------------------------------------------------------- the client side

function countEvents(text) {
  let n = 0;
  for (let at = text.indexOf('\n\n'); at !== -1; at = text.indexOf('\n\n', at + 2)) n += 1;
  return n;
}

function sendRequest(agent, port, spec) {
  return new Promise((resolve) => {
    const started = performance.now();
    const result = { status: 0, requestId: null, body: '', complete: false, error: null, aborted: false, lastDataAt: null, ms: 0 };
    let settled = false;
    let req = null;
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      result.ms = performance.now() - started;
      resolve(result);
    };
    const timer = setTimeout(() => {
      result.error = 'client-timeout';
      req.destroy();
      finish();
    }, CLIENT_TIMEOUT_MS);
    const headers = { ...spec.headers };
    if (spec.body !== undefined) headers['content-length'] = Buffer.byteLength(spec.body);
    req = http.request({ agent, host: '127.0.0.1', port, method: spec.method, path: spec.path, headers }, (res) => {
      result.status = res.statusCode;
      result.requestId = res.headers['x-request-id'] || null;
      result.headers = res.headers;
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        result.lastDataAt = performance.now();
        if (result.body.length < 65_536) result.body += chunk;
        if (spec.abortAfterEvents && countEvents(result.body) >= spec.abortAfterEvents) {
          result.aborted = true;
          req.destroy();
          finish();
        }
      });
      res.on('error', (err) => (result.error ||= err.code || err.message));
      res.on('end', () => {
        result.complete = res.complete;
        finish();
      });
      res.on('close', () => {
        result.complete = res.complete;
        finish();
      });
    });
    req.on('error', (err) => {
      if (!result.aborted) result.error ||= err.code || err.message;
      finish();
    });
    req.end(spec.body);
  });
}

/** The outcome label of an answer, and what is wrong with it for this kind (null when right). */
function judge(kind, spec, result) {
  if (result.aborted) {
    return { label: 'client-abort', problem: kind.expect === 'client-abort' ? null : 'aborted' };
  }
  if (result.status === 0) {
    return { label: `no answer (${result.error})`, problem: `no response: ${result.error}` };
  }
  const status = String(result.status);
  const sse = (result.headers['content-type'] || '').startsWith('text/event-stream');
  let label = status;
  if (sse) label = result.complete && !result.error ? `${status} stream` : `${status} truncated`;
  else if (!result.complete || result.error) label = `${status} truncated`;
  if (result.error === 'client-timeout') label = `${status} client-timeout`;
  if (spec.alsoExpect === label) return { label: `${label} (${spec.variant})`, problem: null };
  const shown = spec.variant ? `${label} (${spec.variant})` : label;
  if (label !== kind.expect) return { label: shown, problem: `expected ${kind.expect}, got ${label}: ${result.body.slice(0, 200)}` };
  // The right status; now the right body.
  if (kind.error || kind.reason) {
    let body = null;
    try {
      body = JSON.parse(result.body);
    } catch {
      return { label: shown, problem: `${status} without a JSON body: ${result.body.slice(0, 200)}` };
    }
    if (kind.error && body.error !== kind.error) return { label: shown, problem: `error ${body.error}, expected ${kind.error}` };
    if (kind.reason && !kind.reason.test(body.error_description || '')) {
      return { label: `${shown} other reason`, problem: `reason "${body.error_description}" does not match ${kind.reason}` };
    }
    if (body.request_id !== result.requestId) return { label: shown, problem: 'request_id in the body differs from x-request-id' };
  }
  if (label === '200 stream') {
    const events = countEvents(result.body);
    const wanted = Number(spec.headers['x-soak-events']) + (spec.tgi ? 0 : 1);
    const ending = spec.tgi ? '"finish_reason":"eos_token"' : 'data: [DONE]';
    if (events !== wanted || !result.body.includes(ending)) {
      return { label: `${label} incomplete`, problem: `${events} events of ${wanted}: ${result.body.slice(-200)}` };
    }
  }
  if (label === '200 truncated' && spec.headers['x-soak-mode'] === 'sse-stall') {
    const quiet = (performance.now() - (result.lastDataAt ?? 0)) / 1000;
    if (quiet < IDLE_TIMEOUT_S - 0.2 || quiet > IDLE_TIMEOUT_S + 5) {
      return { label, problem: `stalled stream cut after ${quiet.toFixed(1)} s of silence, idle_timeout is ${IDLE_TIMEOUT_S} s` };
    }
  }
  if (label === '504' && (result.ms < ROUTE_TIMEOUT_S * 1000 - 100 || result.ms > ROUTE_TIMEOUT_S * 1000 + 5000)) {
    return { label, problem: `504 after ${(result.ms / 1000).toFixed(1)} s; the route timeout is ${ROUTE_TIMEOUT_S} s` };
  }
  if (label === '200' && !result.body.startsWith('{')) return { label, problem: `200 without the upstream's JSON: ${result.body.slice(0, 200)}` };
  return { label: shown, problem: null };
}

// ---------------------------------------------------------------------------------------- the soak

class Tally {
  constructor() {
    this.total = 0;
    this.byKind = new Map();
    this.unexpected = 0;
    this.samples = [];
    /** Request id -> status the client saw (0 when the client left first), for the audit check. */
    this.ids = new Map();
    this.noId = 0;
    this.duplicateIds = 0;
  }

  add(name, result, verdict) {
    this.total += 1;
    let kind = this.byKind.get(name);
    if (!kind) this.byKind.set(name, (kind = { sent: 0, outcomes: new Map(), unexpected: 0, ms: [] }));
    kind.sent += 1;
    // A uniform sample of at most 20,000 durations per kind (reservoir sampling), for percentiles.
    if (kind.ms.length < 20_000) kind.ms.push(result.ms);
    else if (Math.random() < 20_000 / kind.sent) kind.ms[Math.floor(Math.random() * 20_000)] = result.ms;
    kind.outcomes.set(verdict.label, (kind.outcomes.get(verdict.label) || 0) + 1);
    if (verdict.problem) {
      kind.unexpected += 1;
      this.unexpected += 1;
      if (this.samples.length < 30) this.samples.push(`${name}: ${verdict.problem} (request ${result.requestId || '-'})`);
    }
    if (result.requestId) {
      if (this.ids.has(result.requestId)) this.duplicateIds += 1;
      this.ids.set(result.requestId, result.status);
    } else {
      this.noId += 1;
    }
  }
}

function picker(table) {
  const entries = Object.entries(table);
  const total = entries.reduce((sum, [, k]) => sum + k.weight, 0);
  return () => {
    let r = Math.random() * total;
    for (const [name, kind] of entries) {
      r -= kind.weight;
      if (r < 0) return [name, kind];
    }
    return entries[entries.length - 1];
  };
}

async function readAudit(file) {
  const audit = { lines: 0, statuses: new Map(), unparsable: 0, duplicates: 0 };
  if (!fs.existsSync(file)) return audit;
  const rl = readline.createInterface({ input: fs.createReadStream(file), crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line) continue;
    audit.lines += 1;
    try {
      const event = JSON.parse(line);
      if (audit.statuses.has(event.request_id)) audit.duplicates += 1;
      audit.statuses.set(event.request_id, event.status);
    } catch {
      audit.unparsable += 1;
    }
  }
  return audit;
}

function mib(kib) {
  return kib === null || kib === undefined ? '-' : `${(kib / 1024).toFixed(1)} MiB`;
}

async function main() {
  fs.mkdirSync(WORK, { recursive: true });
  const violations = [];
  const idp = new Idp({ audience: AUDIENCE });
  await idp.start();
  const upstream = new Upstream({ credential: ORG_CREDENTIAL });
  await upstream.start();
  const proxyPort = await freePort();
  const adminPort = await freePort();
  const configFile = writeConfig(idp, upstream, proxyPort, adminPort);
  const hfgate = startHfgate(configFile);
  let hfgateExit = null;
  hfgate.exited.then((exit) => (hfgateExit = exit));
  const shutdown = () => {
    if (hfgateExit === null) hfgate.kill('SIGKILL');
    idp.stop();
    upstream.stop();
  };
  process.on('SIGTERM', () => {
    log('interrupted');
    shutdown();
    process.exit(130);
  });

  const readyBy = Date.now() + 30_000;
  while ((await get(adminPort, '/readyz')).status !== 200) {
    if (hfgateExit !== null || Date.now() > readyBy) {
      log(`hfgate did not become ready (${hfgateExit ? `exited ${JSON.stringify(hfgateExit)}` : 'no 200 from /readyz in 30 s'}):\n${logTail()}`);
      shutdown();
      process.exit(1);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const pid = hfgate.pid;
  log(`hfgate ready (pid ${pid}, proxy 127.0.0.1:${proxyPort}); IdP ${idp.issuer}, upstream 127.0.0.1:${upstream.port}`);

  const pools = Object.fromEntries(Object.entries(USERS).map(([sub, groups]) => [sub, new TokenPool(idp, sub, groups)]));
  const table = kinds(idp, pools);
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY, scheduling: 'fifo' });
  const tally = new Tally();
  const run = async (name, kind) => {
    const spec = kind.build();
    spec.headers = { 'x-soak-kind': name, ...spec.headers };
    const result = await sendRequest(agent, proxyPort, spec);
    const verdict = judge(kind, spec, result);
    tally.add(name, result, verdict);
    return verdict;
  };

  // Every kind once before the load, so a broken setup fails in seconds with its reason.
  for (const [name, kind] of Object.entries(table)) {
    const verdict = await run(name, kind);
    if (verdict.problem) {
      log(`check before the load failed: ${name}: ${verdict.problem}\n${logTail()}`);
      shutdown();
      process.exit(1);
    }
  }
  log(`every request kind answered as expected; ${MINUTES} min of load with ${CONCURRENCY} concurrent clients`);

  const rss = [];
  // How late this process's event loop ran: when it is starved of CPU, the upstream answers late and
  // hfgate's route timeout turns that into 504s that are not hfgate's doing.
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  let lagMaxMs = 0;
  const cpuAtStart = { hfgate: cpuSeconds(pid), load: process.cpuUsage() };
  const started = Date.now();
  const deadline = started + DURATION_MS;
  const sample = async () => {
    const lagMs = lag.max / 1e6;
    lagMaxMs = Math.max(lagMaxMs, lagMs);
    lag.reset();
    const row = { t: (Date.now() - started) / 1000, kib: rssKib(pid), requests: tally.total, unexpected: tally.unexpected, lagMs };
    rss.push(row);
    // What the per-token caches hold, next to the memory: their steady size is most of the warm-up.
    row.caches = cacheEntries((await get(adminPort, '/metrics')).body);
  };
  await sample();
  const sampler = setInterval(sample, SAMPLE_EVERY_MS);
  const progress = setInterval(() => {
    const last = rss[rss.length - 1];
    const elapsed = (Date.now() - started) / 1000;
    log(`${elapsed.toFixed(0)} s: ${tally.total} requests (${(tally.total / elapsed).toFixed(0)}/s), ${tally.unexpected} unexpected, hfgate VmRSS ${mib(last?.kib)}, key rotations ${idp.stats.rotations}, JWKS outages ${idp.stats.outages}`);
  }, 60_000);
  const pick = picker(table);
  const worker = async () => {
    while (Date.now() < deadline && hfgateExit === null) {
      const [name, kind] = pick();
      await run(name, kind);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const loadSeconds = (Date.now() - started) / 1000;
  const hfgateCpu = (cpuSeconds(pid) - cpuAtStart.hfgate) / loadSeconds;
  const loadUsage = process.cpuUsage(cpuAtStart.load);
  const loadCpu = (loadUsage.user + loadUsage.system) / 1e6 / loadSeconds;
  clearInterval(sampler);
  clearInterval(progress);
  await sample();
  if (hfgateExit !== null) violations.push(`hfgate exited during the soak: ${JSON.stringify(hfgateExit)}`);

  // Metrics before the stop: hfgate's own request count.
  const metrics = await get(adminPort, '/metrics');
  let metricRequests = 0;
  for (const line of metrics.body.split('\n')) {
    if (line.startsWith('hfgate_requests_total{')) metricRequests += Number(line.split(' ').pop());
  }
  agent.destroy();

  // SIGTERM: hfgate drains and flushes its audit writer before it exits.
  log('stopping hfgate (SIGTERM)');
  let exit = hfgateExit;
  if (exit === null) {
    hfgate.kill('SIGTERM');
    exit = await Promise.race([hfgate.exited, new Promise((r) => setTimeout(() => r(null), 45_000))]);
    if (exit === null) {
      violations.push('hfgate did not exit within 45 s of SIGTERM');
      hfgate.kill('SIGKILL');
      await hfgate.exited;
    } else if (exit.code !== 0) {
      violations.push(`hfgate exited with ${JSON.stringify(exit)} after SIGTERM`);
    }
  }
  idp.stop();
  upstream.stop();

  // ---- checks
  if (tally.unexpected > 0) violations.push(`${tally.unexpected} requests had an unexpected outcome`);
  const audit = await readAudit(path.join(WORK, 'audit.jsonl'));
  if (audit.lines !== tally.total) violations.push(`audit lines ${audit.lines} != requests ${tally.total}`);
  if (audit.duplicates) violations.push(`${audit.duplicates} request ids appear on more than one audit line`);
  if (audit.unparsable) violations.push(`${audit.unparsable} audit lines are not JSON`);
  let missing = 0;
  let statusMismatch = 0;
  const mismatchSamples = [];
  for (const [id, status] of tally.ids) {
    const audited = audit.statuses.get(id);
    if (audited === undefined) missing += 1;
    else if (status !== audited) {
      statusMismatch += 1;
      if (mismatchSamples.length < 5) mismatchSamples.push(`${id}: client ${status}, audit ${audited}`);
    }
  }
  if (missing) violations.push(`${missing} requests the client saw have no audit line`);
  if (statusMismatch) violations.push(`${statusMismatch} audit lines record another status than the client saw (${mismatchSamples.join('; ')})`);
  if (tally.duplicateIds) violations.push(`${tally.duplicateIds} responses repeated another response's x-request-id`);
  if (metricRequests !== tally.total) violations.push(`hfgate_requests_total ${metricRequests} != requests ${tally.total}`);
  const forwarded = [...tally.ids.keys()].filter((id) => upstream.ids.has(id)).length;
  const expectForwarded = [...tally.byKind.entries()]
    .filter(([name]) => /^(valid|fresh|upstream|stream|abort)/.test(name))
    .reduce((sum, [, k]) => sum + k.sent, 0) + (tally.byKind.get('retired-key')?.outcomes.get('200 (grace)') || 0);
  if (upstream.received !== expectForwarded) violations.push(`the upstream received ${upstream.received} requests; ${expectForwarded} should have been forwarded`);
  if (forwarded !== upstream.ids.size) violations.push(`${upstream.ids.size - forwarded} forwarded request ids were never seen by the client`);
  for (const breach of upstream.breaches) violations.push(`upstream: ${breach}`);
  const hfgateLog = fs.readFileSync(path.join(WORK, 'hfgate.log'), 'utf8');
  const panics = hfgateLog.split('\n').filter((l) => l.includes('panicked'));
  if (panics.length) violations.push(`hfgate panicked: ${panics[0]}`);
  const warnings = new Map();
  for (const line of hfgateLog.split('\n')) {
    const match = /\b(WARN|ERROR)\b\s+(?:[\w:]+:\s+)?(.*?)(?:\s+\w+=|$)/.exec(line.replace(/\x1b\[[0-9;]*m/g, ''));
    if (match) warnings.set(`${match[1]} ${match[2]}`, (warnings.get(`${match[1]} ${match[2]}`) || 0) + 1);
  }
  if ([...warnings.keys()].some((w) => w.startsWith('ERROR'))) violations.push('hfgate logged errors (see the log summary)');

  // Memory: flat when the last sample is within max(20 %, 10 MiB) of the first one after the warm-up.
  const measured = rss.filter((s) => s.kib !== null);
  const afterWarmup = measured.find((s) => s.t * 1000 >= WARMUP_MS) || measured[Math.floor(measured.length / 2)];
  const last = measured[measured.length - 1];
  const peak = measured.reduce((m, s) => Math.max(m, s.kib), 0);
  const allowance = Math.max(afterWarmup.kib * 0.2, 10 * 1024);
  const growth = last.kib - afterWarmup.kib;
  const flat = growth <= allowance;
  if (JUDGE_MEMORY && !flat) violations.push(`memory grew ${mib(growth)} after the warm-up (allowed ${mib(allowance)})`);
  const memoryVerdict = !JUDGE_MEMORY ? 'not judged (run shorter than 5 min)' : flat ? 'flat' : 'GROWING';
  // Least-squares KiB per minute over some samples.
  const trend = (samples) => {
    const n = samples.length;
    if (n < 2) return 0;
    const mt = samples.reduce((a, s) => a + s.t, 0) / n;
    const mk = samples.reduce((a, s) => a + s.kib, 0) / n;
    const cov = samples.reduce((a, s) => a + (s.t - mt) * (s.kib - mk), 0);
    const vt = samples.reduce((a, s) => a + (s.t - mt) ** 2, 0);
    return vt ? (cov / vt) * 60 : 0;
  };
  const steady = measured.filter((s) => s.t >= afterWarmup.t);
  const slope = trend(steady);
  // The allocator settles after the caches do: the second half says whether growth goes on.
  const secondHalf = steady.filter((s) => s.t >= (afterWarmup.t + last.t) / 2);
  const lateSlope = trend(secondHalf);

  // ---- report
  const out = [];
  const rate = tally.total / loadSeconds;
  out.push(`## Soak: ${(loadSeconds / 60).toFixed(1)} min, ${tally.total.toLocaleString('en')} requests (${rate.toFixed(0)}/s), ${CONCURRENCY} concurrent clients\n`);
  out.push('| kind | sent | expected | outcomes | unexpected | p50 | p99 |');
  out.push('|---|---:|---|---|---:|---:|---:|');
  const pct = (values, p) => {
    if (!values.length) return '-';
    const sorted = [...values].sort((a, b) => a - b);
    const ms = sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
    return ms < 10 ? `${ms.toFixed(1)} ms` : `${ms.toFixed(0)} ms`;
  };
  for (const [name, kind] of Object.entries(table)) {
    const k = tally.byKind.get(name) || { sent: 0, outcomes: new Map(), unexpected: 0, ms: [] };
    const outcomes = [...k.outcomes.entries()].sort((a, b) => b[1] - a[1]).map(([o, n]) => `${o}: ${n}`).join(', ');
    const expected = name === 'retired-key' ? '401, or 200 before hfgate refetched' : `${kind.expect}${kind.error ? ` ${kind.error}` : ''}`;
    out.push(`| ${name} | ${k.sent} | ${expected} | ${outcomes} | ${k.unexpected || ''} | ${pct(k.ms, 0.5)} | ${pct(k.ms, 0.99)} |`);
  }
  out.push('');
  out.push('| check | result |');
  out.push('|---|---|');
  out.push(`| unexpected outcomes | ${tally.unexpected} |`);
  out.push(`| audit lines / requests sent | ${audit.lines} / ${tally.total}${audit.lines === tally.total ? '' : ' (MISMATCH)'} |`);
  out.push(`| requests without an audit line, statuses differing, duplicate ids | ${missing}, ${statusMismatch}, ${audit.duplicates} |`);
  out.push(`| hfgate_requests_total | ${metricRequests} |`);
  out.push(`| forwarded to the upstream / expected | ${upstream.received} / ${expectForwarded} |`);
  out.push(`| upstream breaches (credential, identity, refused request forwarded) | ${upstream.breaches.length + (upstream.breachesDropped || 0)} |`);
  out.push(`| key rotations / keys dropped / JWKS served / JWKS outages (503s served) | ${idp.stats.rotations} / ${idp.stats.drops} / ${idp.stats.jwksServed} / ${idp.stats.outages} (${idp.stats.jwksRefused}) |`);
  out.push(`| load process: longest event-loop delay | ${lagMaxMs.toFixed(0)} ms${lagMaxMs > ROUTE_TIMEOUT_S * 500 ? ' (STARVED: late upstream answers are the load side\'s)' : ''} |`);
  out.push(`| CPU during the load: hfgate / this load process (IdP, upstream, clients) | ${(hfgateCpu * 100).toFixed(0)} % / ${(loadCpu * 100).toFixed(0)} % of a core |`);
  out.push(`| hfgate exit after SIGTERM | ${exit ? (exit.code !== null ? `code ${exit.code}` : exit.signal) : 'none'} |`);
  out.push(`| hfgate VmRSS: start / after warm-up (${afterWarmup.t.toFixed(0)} s) / last / peak | ${mib(measured[0].kib)} / ${mib(afterWarmup.kib)} / ${mib(last.kib)} / ${mib(peak)} |`);
  const perMinute = (kib) => `${kib >= 0 ? '+' : ''}${(kib / 1024).toFixed(2)} MiB/min`;
  out.push(`| memory after warm-up: growth, trend (whole / second half) | ${growth >= 0 ? '+' : ''}${mib(growth)} (allowed ${mib(allowance)}): ${memoryVerdict}; ${perMinute(slope)} / ${secondHalf.length >= 3 ? `${perMinute(lateSlope)} from ${secondHalf[0].t.toFixed(0)} s` : '- (too few samples)'} |`);
  out.push('');
  out.push('| t (s) | requests | unexpected | hfgate VmRSS | cached tokens / assertions / decisions | load process: longest event-loop delay since the last row |');
  out.push('|---:|---:|---:|---:|---:|---:|');
  const every = Math.max(1, Math.round(60_000 / SAMPLE_EVERY_MS));
  measured.forEach((s, i) => {
    if (i % every === 0 || i === measured.length - 1) {
      const since = measured.slice(Math.max(0, i - every + 1), i + 1).reduce((m, x) => Math.max(m, x.lagMs), 0);
      const caches = CACHES.map((name) => s.caches?.[name] ?? '-').join(' / ');
      out.push(`| ${s.t.toFixed(0)} | ${s.requests} | ${s.unexpected} | ${mib(s.kib)} | ${caches} | ${since.toFixed(0)} ms |`);
    }
  });
  if (warnings.size) {
    out.push('');
    out.push('hfgate log (WARN/ERROR lines by message):');
    for (const [w, n] of [...warnings.entries()].sort((a, b) => b[1] - a[1])) out.push(`- ${n} × ${w}`);
  }
  if (tally.samples.length) {
    out.push('');
    out.push('Unexpected outcomes (first ones):');
    for (const s of tally.samples) out.push(`- ${s}`);
  }
  out.push('');
  const passed = `**PASSED**: every outcome expected, one audit line per request, memory ${memoryVerdict}.`;
  out.push(violations.length ? `**FAILED**: ${violations.length} violation(s):` : passed);
  for (const v of violations) out.push(`- ${v}`);
  process.stdout.write(`${out.join('\n')}\n`);
  const cacheColumns = (s) => CACHES.map((name) => s.caches?.[name] ?? '-').join('\t');
  fs.writeFileSync(path.join(WORK, 'rss.tsv'), `t_s\tvmrss_kib\trequests\t${CACHES.map((c) => `cached_${c}`).join('\t')}\n${measured.map((s) => `${s.t.toFixed(1)}\t${s.kib}\t${s.requests}\t${cacheColumns(s)}`).join('\n')}\n`);
  process.exit(violations.length ? 1 : 0);
}

main().catch((err) => {
  log(`failed: ${err.stack || err}`);
  try {
    const pid = Number(fs.readFileSync(path.join(WORK, 'hfgate.pid'), 'utf8'));
    if (pid) execFileSync('kill', ['-KILL', String(pid)], { stdio: 'ignore' });
  } catch {
    // already gone
  }
  process.exit(1);
});
