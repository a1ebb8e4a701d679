// The soak's model endpoint: answers in the OpenAI and TGI shapes, streams server-sent events, and fails
// on request: 5xx, a reset connection, no answer at all, a stream cut or stalled midway. The driver
// chooses the behaviour per request (header x-soak-mode), so every outcome has one expected answer.
//
// It also checks what hfgate must guarantee on the way in: the organisation's credential replaces the
// caller's token, x-forwarded-user is the token's subject (whatever the client sent), and no refused or
// invalid request is ever forwarded. Any breach is counted and fails the soak.

import http from 'node:http';

const FORWARDED_KINDS_PREFIX = ['valid', 'upstream', 'stream', 'abort', 'fresh', 'retired'];

export class Upstream {
  constructor({ credential }) {
    this.expectedAuthorization = `Bearer ${credential}`;
    this.received = 0;
    this.byMode = new Map();
    /** Request ids hfgate forwarded (x-request-id), to match against the driver's and the audit's. */
    this.ids = new Set();
    this.breaches = [];
    this.hanging = new Set();
  }

  async start() {
    this.server = http.createServer((req, res) => this.handle(req, res));
    // Node's default, as a typical upstream has: idle connections in hfgate's pool are closed after 5 s.
    this.server.keepAliveTimeout = 5_000;
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', resolve);
    });
    this.port = this.server.address().port;
  }

  stop() {
    for (const timer of this.hanging) clearTimeout(timer);
    this.server.closeAllConnections();
    this.server.close();
  }

  breach(text) {
    if (this.breaches.length < 50) this.breaches.push(text);
    else this.breachesDropped = (this.breachesDropped || 0) + 1;
  }

  handle(req, res) {
    this.received += 1;
    const kind = req.headers['x-soak-kind'] || '';
    const mode = req.headers['x-soak-mode'] || 'ok';
    const id = req.headers['x-request-id'];
    this.byMode.set(mode, (this.byMode.get(mode) || 0) + 1);
    if (!FORWARDED_KINDS_PREFIX.some((p) => kind.startsWith(p))) {
      this.breach(`a ${kind || 'unlabelled'} request reached the upstream (${req.method} ${req.url})`);
    }
    if (req.headers.authorization !== this.expectedAuthorization) {
      this.breach(`${kind}: Authorization upstream is not the organisation's credential`);
    }
    const sub = req.headers['x-soak-sub'];
    if (sub && req.headers['x-forwarded-user'] !== sub) {
      this.breach(`${kind}: x-forwarded-user is ${JSON.stringify(req.headers['x-forwarded-user'])}, the token's subject is ${sub}`);
    }
    if (!id) this.breach(`${kind}: no x-request-id`);
    else if (this.ids.has(id)) this.breach(`${kind}: request id ${id} forwarded twice`);
    else this.ids.add(id);

    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => this.respond(req, res, mode, Buffer.concat(chunks)));
    req.on('error', () => {});
    res.on('error', () => {});
  }

  respond(req, res, mode, body) {
    const path = req.url.split('?')[0];
    const tgi = path.startsWith('/generate');
    switch (mode) {
      case 'status-503':
        return send(res, 503, { error: 'model is overloaded', error_type: 'overloaded' });
      case 'status-500':
        return send(res, 500, { error: 'internal error', error_type: 'generation' });
      case 'reset':
        // An RST, not a FIN: what a crashed or restarted model server does to a request in flight.
        return req.socket.resetAndDestroy();
      case 'hang': {
        // No answer; hfgate's route timeout answers 504 and closes this connection.
        const timer = setTimeout(() => {
          this.hanging.delete(timer);
          req.socket.destroy();
        }, 60_000);
        this.hanging.add(timer);
        req.socket.once('close', () => {
          clearTimeout(timer);
          this.hanging.delete(timer);
        });
        return;
      }
      default:
        break;
    }
    if (path === '/info') {
      return send(res, 200, { model_id: 'acme/soak-chat', model_dtype: 'bf16', max_total_tokens: 4096, router: 'soak-upstream' });
    }
    let request = {};
    try {
      request = body.length ? JSON.parse(body) : {};
    } catch {
      return send(res, 422, { error: 'invalid JSON' });
    }
    const words = Number(req.headers['x-soak-events'] || 12);
    const stream = tgi ? path === '/generate_stream' : request.stream === true;
    if (!stream) {
      const text = Array.from({ length: words }, (_, i) => `w${i}`).join(' ');
      if (tgi) return send(res, 200, { generated_text: text }, { 'x-prompt-tokens': '5', 'x-generated-tokens': String(words) });
      return send(res, 200, {
        id: 'chatcmpl-soak',
        object: 'chat.completion',
        model: request.model,
        choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 5, completion_tokens: words, total_tokens: 5 + words },
      });
    }
    this.stream(req, res, mode, tgi, request.model, words, Number(req.headers['x-soak-gap-ms'] || 20));
  }

  stream(req, res, mode, tgi, model, events, gapMs) {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    // The failure modes break the stream after a third of its events.
    const breakAt = mode === 'sse-reset' || mode === 'sse-stall' ? Math.max(1, Math.floor(events / 3)) : Infinity;
    let i = 0;
    let timer = null;
    const next = () => {
      timer = null;
      if (i === breakAt) {
        if (mode === 'sse-reset') return req.socket.resetAndDestroy();
        // sse-stall: silence; hfgate's idle timeout ends the response and closes this connection.
        timer = setTimeout(() => req.socket.destroy(), 60_000);
        return;
      }
      const last = i === events - 1;
      let event;
      if (tgi) {
        event = { index: i, token: { id: i, text: ` w${i}`, logprob: 0, special: false }, generated_text: last ? 'done' : null, details: last ? { finish_reason: 'eos_token', generated_tokens: events } : null };
      } else {
        event = { id: 'chatcmpl-soak', object: 'chat.completion.chunk', model, choices: [{ index: 0, delta: { content: ` w${i}` }, finish_reason: last ? 'stop' : null }] };
        if (last) event.usage = { prompt_tokens: 5, completion_tokens: events, total_tokens: 5 + events };
      }
      res.write(`data: ${JSON.stringify(event)}\n\n`);
      i += 1;
      if (last) {
        if (!tgi) res.write('data: [DONE]\n\n');
        return res.end();
      }
      timer = setTimeout(next, gapMs);
    };
    res.on('close', () => timer && clearTimeout(timer));
    next();
  }
}

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}
