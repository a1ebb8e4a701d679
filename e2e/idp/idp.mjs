#!/usr/bin/env node
// A real OpenID Connect provider (the `oidc-provider` package) for the hfgate
// end-to-end tests. It issues client-credentials JWT access tokens.
//
//   node idp.mjs serve --port N --keys FILE [--sign-kid KID] [--token-ttl SECONDS]
//   node idp.mjs --port N --keys FILE [--sign-kid KID]          (same as serve)
//   node idp.mjs genkey --kid KID --alg ES256|RS256 --out FILE [--append]
//
// serve: the issuer is exactly http://127.0.0.1:<port> (no trailing slash).
// --port 0 picks a free port; the chosen one is in the ready line, the only
// line written to stdout:  ready http://127.0.0.1:<port>
// FILE holds a private JWKS ({"keys": [...]}); tokens are signed with the key
// whose kid is --sign-kid (default: the first key), and the public parts of
// every key in FILE are published at the provider's jwks endpoint.
//
// Clients (grant client_credentials only):
//   ci-bot      / ci-bot-secret       client_secret_post   resource urn:hfgate  groups ci, ml-research
//   support-bot / support-bot-secret  client_secret_basic  resource urn:hfgate  groups support
//   other-app   / other-app-secret    client_secret_basic  resource urn:other
// A client asking for a resource it is not registered for gets invalid_target.
// stderr has one line per request ("idp: GET /jwks 200"), so that a test can
// count the JWKS fetches a relying party makes.

import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { exportJWK, generateKeyPair } from 'jose';
import Provider, { errors } from 'oidc-provider';

// oidc-provider prints its development notices with console.info (stdout);
// keep stdout for the ready line alone.
console.info = (...args) => console.error(...args);

const ALGS = new Set(['ES256', 'ES384', 'RS256', 'PS256', 'EdDSA']);

// Resource servers (RFC 8707 resource indicators) and who may ask for them.
const RESOURCE_SERVERS = {
  'urn:hfgate': { scope: 'infer', clients: ['ci-bot', 'support-bot'] },
  'urn:other': { scope: 'read', clients: ['other-app'] },
};

// Claims an organisation's IdP typically adds to workload tokens. `sub`
// is not among them: oidc-provider sets sub = client_id itself for
// client-credentials JWT access tokens (RFC 9068).
const EXTRA_CLAIMS = {
  'ci-bot': { groups: ['ci', 'ml-research'] },
  'support-bot': { groups: ['support'] },
};

function fail(message) {
  console.error(`idp: ${message}`);
  process.exit(2);
}

function readJwks(file) {
  let jwks;
  try {
    jwks = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    fail(`cannot read JWKS ${file}: ${err.message}`);
  }
  if (!jwks || !Array.isArray(jwks.keys) || jwks.keys.length === 0) {
    fail(`${file}: expected {"keys": [...]} with at least one key`);
  }
  for (const key of jwks.keys) {
    if (!key.kid) fail(`${file}: every key needs a kid`);
    if (!key.d) fail(`${file}: key ${key.kid} is not a private key`);
  }
  return jwks;
}

async function genkey(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      kid: { type: 'string' },
      alg: { type: 'string', default: 'ES256' },
      out: { type: 'string' },
      append: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (!values.kid) fail('genkey: --kid is required');
  if (!values.out) fail('genkey: --out is required');
  if (!ALGS.has(values.alg)) fail(`genkey: unsupported --alg ${values.alg}`);

  const { privateKey } = await generateKeyPair(values.alg, { extractable: true });
  const jwk = { ...(await exportJWK(privateKey)), kid: values.kid, alg: values.alg, use: 'sig' };

  let jwks = { keys: [] };
  if (values.append && fs.existsSync(values.out)) {
    jwks = readJwks(values.out);
    jwks.keys = jwks.keys.filter((k) => k.kid !== values.kid);
  }
  jwks.keys.push(jwk);
  fs.mkdirSync(path.dirname(path.resolve(values.out)), { recursive: true });
  fs.writeFileSync(values.out, `${JSON.stringify(jwks, null, 2)}\n`, { mode: 0o600 });
  console.error(`idp: wrote key ${values.kid} (${values.alg}) to ${values.out}`);
}

function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve(server.address().port);
    });
  });
}

async function serve(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string', default: '0' },
      keys: { type: 'string' },
      'sign-kid': { type: 'string' },
      'token-ttl': { type: 'string', default: '600' },
    },
    strict: true,
  });
  if (!values.keys) fail('--keys FILE is required');
  const port = Number.parseInt(values.port, 10);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad --port ${values.port}`);
  const ttl = Number.parseInt(values['token-ttl'], 10);
  if (!Number.isInteger(ttl) || ttl <= 0) fail(`bad --token-ttl ${values['token-ttl']}`);

  const jwks = readJwks(values.keys);
  const signKid = values['sign-kid'] ?? jwks.keys[0].kid;
  const signKey = jwks.keys.find((k) => k.kid === signKid);
  if (!signKey) fail(`no key with kid ${signKid} in ${values.keys}`);
  if (!signKey.alg) fail(`key ${signKid} has no alg`);
  // The signing key goes first; every key stays published.
  const keys = [signKey, ...jwks.keys.filter((k) => k.kid !== signKid)];

  // Bind first, so that --port 0 works and the issuer names the real port.
  const server = http.createServer();
  const boundPort = await listen(server, port);
  const issuer = `http://127.0.0.1:${boundPort}`;

  const provider = new Provider(issuer, {
    jwks: { keys },
    // Clients are validated against the keystore: the default (RS256) would
    // be refused when only an EC key is loaded.
    clientDefaults: {
      grant_types: ['client_credentials'],
      response_types: [],
      id_token_signed_response_alg: signKey.alg,
    },
    clients: [
      {
        client_id: 'ci-bot',
        client_secret: 'ci-bot-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_post',
        scope: 'infer',
      },
      {
        client_id: 'support-bot',
        client_secret: 'support-bot-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: 'infer',
      },
      {
        client_id: 'other-app',
        client_secret: 'other-app-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: 'read',
      },
    ],
    scopes: ['openid', 'infer', 'read'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // No resource parameter → no resource server → opaque token.
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo: (ctx, resourceIndicator, client) => {
          const rs = RESOURCE_SERVERS[resourceIndicator];
          if (!rs || !rs.clients.includes(client.clientId)) {
            throw new errors.InvalidTarget(`resource ${resourceIndicator} is not available to ${client.clientId}`);
          }
          return {
            scope: rs.scope,
            audience: resourceIndicator,
            accessTokenTTL: ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: signKey.alg, kid: signKey.kid } },
          };
        },
      },
    },
    extraTokenClaims: (ctx, token) => {
      if (token.kind !== 'ClientCredentials') return undefined;
      return EXTRA_CLAIMS[token.clientId];
    },
    ttl: {
      ClientCredentials: ttl,
      AccessToken: ttl,
    },
    // Loopback test IdP: no cookies are ever set, but silence the notice.
    cookies: { keys: ['hfgate-e2e-idp-cookie-key'] },
  });

  // One stderr line per request, so that tests can count JWKS fetches.
  provider.use(async (ctx, next) => {
    await next();
    console.error(`idp: ${ctx.method} ${ctx.path} ${ctx.status}`);
  });

  provider.on('grant.success', (ctx) => {
    console.error(`idp: issued token to ${ctx.oidc.client?.clientId} kid=${signKey.kid}`);
  });
  provider.on('grant.error', (ctx, err) => {
    console.error(`idp: grant error for ${ctx.oidc.client?.clientId ?? '-'}: ${err.message} ${err.error_description ?? ''}`);
  });
  provider.on('server_error', (ctx, err) => {
    console.error(`idp: server error: ${err.stack ?? err}`);
  });

  server.on('request', provider.callback());

  const stop = (signal) => {
    console.error(`idp: ${signal}, stopping`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  console.error(`idp: issuer ${issuer}, signing with ${signKey.kid} (${signKey.alg}), publishing ${keys.map((k) => k.kid).join(',')}`);
  process.stdout.write(`ready ${issuer}\n`);
}

const argv = process.argv.slice(2);
try {
  if (argv[0] === 'genkey') {
    await genkey(argv.slice(1));
  } else if (argv[0] === 'serve') {
    await serve(argv.slice(1));
  } else {
    await serve(argv);
  }
} catch (err) {
  fail(err.stack ?? String(err));
}
