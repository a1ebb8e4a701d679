// The soak's identity provider: OpenID discovery and a JWKS on loopback, signing keys that rotate the way
// a careful IdP rotates them, and token minting for every case the driver sends (valid and not).
//
// Key life cycle: a new key is published first and signs only once hfgate has fetched a JWKS holding it
// (and at least `activateAfter` later); the key it replaces stays published for `dropAfter` (longer than
// the driver reuses a token), then leaves the JWKS. Because the IdP sees every JWKS fetch, it knows from
// when on hfgate cannot hold a dropped key any more: tokens signed with it must be refused from then on.

import crypto from 'node:crypto';
import http from 'node:http';
import { promisify } from 'node:util';

const generateKeyPair = promisify(crypto.generateKeyPair);

// After a JWKS is served, the time hfgate may take to swap the new key set in.
const LEARN_MARGIN_MS = 500;

const b64url = (data) => Buffer.from(data).toString('base64url');

export class Idp {
  constructor({ audience, rotateEvery = 30_000, activateAfter = 10_000, dropAfter = 30_000, outageEvery = 120_000, outageFor = 12_000 }) {
    this.audience = audience;
    this.rotateEvery = rotateEvery;
    this.activateAfter = activateAfter;
    this.dropAfter = dropAfter;
    this.outageEvery = outageEvery;
    this.outageFor = outageFor;
    /** Every key ever made, oldest first: { kid, alg, privateKey, jwk, publishedAt, activatedAt, deactivatedAt, droppedAt, learnedDropAt }. */
    this.keys = [];
    this.active = null;
    this.pending = null;
    /** A key that is never published: tokens signed with it carry an unknown kid. */
    this.rogue = null;
    this.stats = { jwksServed: 0, jwksRefused: 0, discovery: 0, rotations: 0, drops: 0, outages: 0 };
    this.outageUntil = 0;
    this.nextRotation = 0;
    this.nextOutage = 0;
    this.jti = 0;
    this.algs = ['ES256', 'RS256'];
  }

  async start() {
    this.active = await this.makeKey(this.algs[0]);
    this.active.publishedAt = this.active.activatedAt = Date.now();
    this.rogue = await this.makeKey('ES256');
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.server.keepAliveTimeout = 60_000;
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', resolve);
    });
    this.issuer = `http://127.0.0.1:${this.server.address().port}`;
    const now = Date.now();
    this.nextRotation = now + this.rotateEvery;
    this.nextOutage = now + this.outageEvery;
    this.timer = setInterval(() => this.tick().catch((err) => console.error(`idp: ${err.stack}`)), 250);
  }

  stop() {
    clearInterval(this.timer);
    this.server.closeAllConnections();
    this.server.close();
  }

  async makeKey(alg) {
    const { privateKey, publicKey } =
      alg === 'RS256'
        ? await generateKeyPair('rsa', { modulusLength: 2048 })
        : await generateKeyPair('ec', { namedCurve: 'P-256' });
    const kid = crypto.randomBytes(12).toString('hex');
    const jwk = { ...publicKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
    const key = { kid, alg, privateKey, jwk, publishedAt: null, activatedAt: null, deactivatedAt: null, droppedAt: null, learnedDropAt: null };
    this.keys.push(key);
    return key;
  }

  published() {
    return this.keys.filter((k) => k.publishedAt !== null && k.droppedAt === null);
  }

  /** The rotation state machine; also opens and closes the JWKS outages. */
  async tick() {
    const now = Date.now();
    if (now >= this.nextOutage) {
      this.outageUntil = now + this.outageFor;
      this.nextOutage = now + this.outageEvery;
      this.stats.outages += 1;
    }
    if (!this.pending && now >= this.nextRotation) {
      this.nextRotation = Infinity; // a key generation is under way
      const alg = this.algs[(this.stats.rotations + 1) % this.algs.length];
      const key = await this.makeKey(alg);
      key.publishedAt = Date.now();
      key.seenAt = null;
      this.pending = key;
    }
    const pending = this.pending;
    if (pending && pending.seenAt !== null && now >= pending.seenAt + LEARN_MARGIN_MS && now - pending.publishedAt >= this.activateAfter) {
      this.active.deactivatedAt = now;
      this.pending.activatedAt = now;
      this.active = this.pending;
      this.pending = null;
      this.stats.rotations += 1;
      this.nextRotation = now + this.rotateEvery;
    }
    for (const key of this.keys) {
      if (key.deactivatedAt !== null && key.droppedAt === null && now - key.deactivatedAt >= this.dropAfter) {
        key.droppedAt = now;
        this.stats.drops += 1;
      }
    }
  }

  handle(req, res) {
    const path = req.url.split('?')[0];
    if (path === '/.well-known/openid-configuration') {
      this.stats.discovery += 1;
      return json(res, 200, { issuer: this.issuer, jwks_uri: `${this.issuer}/jwks.json`, id_token_signing_alg_values_supported: this.algs, response_types_supported: [], subject_types_supported: ['public'] });
    }
    if (path === '/jwks.json') {
      const now = Date.now();
      if (now < this.outageUntil) {
        this.stats.jwksRefused += 1;
        return json(res, 503, { error: 'temporarily_unavailable' });
      }
      this.stats.jwksServed += 1;
      const keys = this.published();
      if (this.pending && this.pending.seenAt === null) this.pending.seenAt = now;
      for (const key of this.keys) {
        if (key.droppedAt !== null && key.learnedDropAt === null) key.learnedDropAt = now + LEARN_MARGIN_MS;
      }
      return json(res, 200, { keys: keys.map((k) => k.jwk) });
    }
    return json(res, 404, { error: 'not_found' });
  }

  sign(key, claims, header = {}) {
    const head = b64url(JSON.stringify({ typ: 'JWT', ...header, alg: key.alg, kid: key.kid }));
    const body = b64url(JSON.stringify(claims));
    const input = `${head}.${body}`;
    const signature =
      key.alg === 'RS256'
        ? crypto.sign('sha256', Buffer.from(input), key.privateKey)
        : crypto.sign('sha256', Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
    return `${input}.${b64url(signature)}`;
  }

  claims(sub, groups, { lifetime = 120, aud = this.audience, iss = this.issuer, expired = false } = {}) {
    const now = Math.floor(Date.now() / 1000);
    const iat = expired ? now - 900 : now;
    return { iss, aud, sub, groups, iat, nbf: iat, exp: expired ? now - 600 : now + lifetime, jti: `soak-${++this.jti}` };
  }

  /** A valid token signed with the current key. */
  mint(sub, groups, options) {
    return this.sign(this.active, this.claims(sub, groups, options));
  }

  /**
   * A fresh token signed with the most recently dropped key, and whether hfgate must refuse it already
   * (it has fetched a JWKS without that key), or may still accept it. Null before any key was dropped.
   */
  mintRetired(sub, groups) {
    const dropped = this.keys.filter((k) => k.droppedAt !== null);
    const key = dropped[dropped.length - 1];
    if (!key) return null;
    const strict = key.learnedDropAt !== null && Date.now() >= key.learnedDropAt;
    return { token: this.sign(key, this.claims(sub, groups)), strict };
  }

  mintRogue(sub, groups) {
    return this.sign(this.rogue, this.claims(sub, groups));
  }

  outage() {
    return Date.now() < this.outageUntil;
  }
}

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}
