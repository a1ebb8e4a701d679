#!/usr/bin/env node
// A real OpenID Connect provider (the `oidc-provider` package) for the hfgate
// end-to-end tests. It issues client-credentials JWT access tokens to
// workloads, and signs people in: the authorization code flow (hfgate's
// browser SSO), the device flow (`hfgate login`) and RP-initiated logout.
//
//   node idp.mjs serve --port N --keys FILE [--sign-kid KID] [--token-ttl SECONDS]
//                      [--hfgate-url URL]...
//   node idp.mjs --port N --keys FILE [--sign-kid KID]          (same as serve)
//   node idp.mjs genkey --kid KID --alg ES256|RS256 --out FILE [--append]
//
// serve: the issuer is exactly http://127.0.0.1:<port> (no trailing slash).
// --port 0 picks a free port; the chosen one is in the ready line, the only
// line written to stdout:  ready http://127.0.0.1:<port>
// FILE holds a private JWKS ({"keys": [...]}); tokens are signed with the key
// whose kid is --sign-kid (default: the first key), and the public parts of
// every key in FILE are published at the provider's jwks endpoint.
// --hfgate-url (repeatable; default http://127.0.0.1:8080) is a public_url of
// an hfgate: the web client accepts {URL}/.hfgate/callback as redirect_uri
// and {URL}/.hfgate/signed-out as post_logout_redirect_uri.
//
// Workload clients (grant client_credentials only):
//   ci-bot      / ci-bot-secret       client_secret_post   resource urn:hfgate  groups ci, ml-research
//   support-bot / support-bot-secret  client_secret_basic  resource urn:hfgate  groups support
//   other-app   / other-app-secret    client_secret_basic  resource urn:other
// A client asking for a resource it is not registered for gets invalid_target.
//
// Sign-in clients:
//   hfgate-web / hfgate-web-secret  client_secret_basic  authorization_code (+ PKCE) + refresh_token
//   hfgate-cli (public)             none                 device_code + refresh_token, resource urn:hfgate
// People: alice (alice@example.com, groups ml-research) and bob
// (bob@example.com, groups support); any non-empty password signs them in.
// The sign-in pages are the IdP's own (/interaction/{uid}): a login form, then
// a consent page; ID tokens carry email and groups (conformIdTokenClaims off);
// hfgate-cli's access tokens (resource urn:hfgate) are JWTs carrying sub,
// email and groups. Refresh tokens are issued when offline_access is granted.
//
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
  'urn:hfgate': { scope: 'infer', clients: ['ci-bot', 'support-bot', 'hfgate-cli'] },
  'urn:other': { scope: 'read', clients: ['other-app'] },
};

// Claims an organisation's IdP typically adds to workload tokens. `sub`
// is not among them: oidc-provider sets sub = client_id itself for
// client-credentials JWT access tokens (RFC 9068).
const EXTRA_CLAIMS = {
  'ci-bot': { groups: ['ci', 'ml-research'] },
  'support-bot': { groups: ['support'] },
};

// The people who can sign in, with the claims their tokens carry. Any
// non-empty password is accepted.
const ACCOUNTS = {
  alice: {
    email: 'alice@example.com',
    email_verified: true,
    name: 'Alice Example',
    preferred_username: 'alice',
    groups: ['ml-research'],
  },
  bob: {
    email: 'bob@example.com',
    email_verified: true,
    name: 'Bob Example',
    preferred_username: 'bob',
    groups: ['support'],
  },
};

// Which claims each scope releases (ID token and userinfo).
const CLAIMS = {
  openid: ['sub'],
  email: ['email', 'email_verified'],
  profile: ['name', 'preferred_username'],
  groups: ['groups'],
};

// Claims of a user's access token for hfgate (resource urn:hfgate).
function accessTokenClaims(accountId) {
  const account = ACCOUNTS[accountId];
  if (!account) return undefined;
  return { email: account.email, groups: account.groups };
}

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

// --------------------------------------------------------------------------
// Sign-in pages. Plain HTML with stable ids for the browser driver
// (browser.mjs), no external resources, no scripts.
// --------------------------------------------------------------------------

function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${esc(title)}</title>
<style>
body{font-family:sans-serif;margin:40px auto;max-width:420px;color:#222}
input,button{display:block;width:100%;box-sizing:border-box;margin:8px 0;padding:8px;font-size:16px}
button{background:#2f6fde;color:#fff;border:0;cursor:pointer}
button.secondary{background:#ddd;color:#222}
.error{color:#b00020}
code{font-size:1.5em}
</style>
</head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>`;
}

function sendHtml(res, status, html) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(html);
}

function readForm(req, limit = 16 * 1024) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(new Error('form too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

function loginPage(uid, client, { login = '', error } = {}) {
  const message = error ? `<p class="error" id="login-error">${esc(error)}</p>` : '';
  return page('Sign in', `<p>to continue to <strong id="client">${esc(client)}</strong></p>
${message}
<form id="login-form" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<input id="login" name="login" type="text" placeholder="user name (alice or bob)" value="${esc(login)}" required autofocus>
<input id="password" name="password" type="password" placeholder="password (anything)" required>
<button id="sign-in" type="submit">Sign in</button>
</form>
<p><a id="cancel" href="/interaction/${esc(uid)}/abort">Cancel</a></p>`);
}

function consentPage(uid, client, accountId, details, params) {
  const scopes = new Set([
    ...(details.missingOIDCScope ?? []),
    ...Object.values(details.missingResourceScopes ?? {}).flat(),
  ]);
  const resources = Object.keys(details.missingResourceScopes ?? {});
  const items = [...scopes].map((s) => `<li>${esc(s)}</li>`).join('');
  const audience = resources.length ? `<p>for <span id="resources">${resources.map(esc).join(', ')}</span></p>` : '';
  const requested = params.scope ? `<p>scope requested: <span id="scope">${esc(params.scope)}</span></p>` : '';
  return page('Authorize', `<p>Signed in as <strong id="account">${esc(accountId)}</strong>.</p>
<p><strong>${esc(client)}</strong> asks for:</p>
<ul id="scopes">${items || '<li>the access it was given before</li>'}</ul>
${audience}${requested}
<form id="consent-form" method="post" action="/interaction/${esc(uid)}/confirm">
<button id="authorize" type="submit">Allow</button>
</form>
<p><a id="cancel" href="/interaction/${esc(uid)}/abort">Deny</a></p>`);
}

// GET /interaction/{uid}, POST /interaction/{uid}/login|confirm, GET /interaction/{uid}/abort.
// Returns false for any other path (the provider answers those).
async function handleInteraction(provider, req, res) {
  const { pathname } = new URL(req.url, 'http://idp.invalid');
  const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?$/.exec(pathname);
  if (!m) return false;
  const [, uid, action] = m;
  const log = (status, extra = '') => console.error(`idp: ${req.method} ${pathname} ${status}${extra}`);
  try {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) throw new Error('the interaction cookie is for another interaction');
    const { prompt, params, session } = details;
    const client = params.client_id;

    if (req.method === 'GET' && !action) {
      if (prompt.name === 'login') {
        sendHtml(res, 200, loginPage(uid, client, { login: params.login_hint ?? '' }));
      } else if (prompt.name === 'consent') {
        sendHtml(res, 200, consentPage(uid, client, session?.accountId, prompt.details, params));
      } else {
        throw new Error(`prompt ${prompt.name} is not supported`);
      }
      log(200, ` (${prompt.name})`);
      return true;
    }

    if (req.method === 'POST' && action === 'login') {
      if (prompt.name !== 'login') throw new Error(`expected the login prompt, not ${prompt.name}`);
      const form = await readForm(req);
      const login = (form.get('login') ?? '').trim();
      const password = form.get('password') ?? '';
      if (!Object.hasOwn(ACCOUNTS, login) || password === '') {
        const error = Object.hasOwn(ACCOUNTS, login)
          ? 'Enter a password.'
          : `Unknown user "${login}": use alice or bob.`;
        sendHtml(res, 200, loginPage(uid, client, { login, error }));
        log(200, ` (login refused: ${login})`);
        return true;
      }
      console.error(`idp: ${login} signed in for ${client}`);
      await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
      log(res.statusCode);
      return true;
    }

    if (req.method === 'POST' && action === 'confirm') {
      if (prompt.name !== 'consent') throw new Error(`expected the consent prompt, not ${prompt.name}`);
      await readForm(req);
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: client });
      const missing = prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      const grantId = await grant.save();
      console.error(`idp: ${session.accountId} authorized ${client} (${params.scope ?? ''})`);
      await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      log(res.statusCode);
      return true;
    }

    if (req.method === 'GET' && action === 'abort') {
      await provider.interactionFinished(
        req,
        res,
        { error: 'access_denied', error_description: 'End-User aborted interaction' },
        { mergeWithLastSubmission: false },
      );
      log(res.statusCode);
      return true;
    }

    sendHtml(res, 405, page('Method not allowed', `<p>${esc(req.method)} ${esc(pathname)}</p>`));
    log(405);
    return true;
  } catch (err) {
    sendHtml(res, 400, page('Sign-in failed', `<p class="error" id="interaction-error">${esc(err.message)}</p>`));
    log(400, ` (${err.message})`);
    return true;
  }
}

// The provider's own pages (device flow, logout), restyled without external resources.
function userCodeInputSource(ctx, form, out, err) {
  let msg = '<p>Enter the code shown by <code>hfgate login</code>.</p>';
  if (err && (err.userCode || err.name === 'NoCodeError')) {
    msg = '<p class="error" id="device-error">The code you entered is incorrect. Try again.</p>';
  } else if (err && err.name === 'AbortedError') {
    msg = '<p class="error" id="device-error">The sign-in request was interrupted.</p>';
  } else if (err) {
    msg = `<p class="error" id="device-error">There was an error processing your request: ${esc(err.message)}</p>`;
  }
  ctx.body = page('Device sign-in', `${msg}
${form}
<button id="device-continue" type="submit" form="op.deviceInputForm">Continue</button>`);
}

function userCodeConfirmSource(ctx, form, client, deviceInfo, userCode) {
  ctx.body = page('Confirm device', `<p><strong id="client">${esc(client.clientName || client.clientId)}</strong>
wants to sign in. Check that your device shows this code:</p>
<p><code id="user-code">${esc(userCode)}</code></p>
${form}
<button id="device-confirm" type="submit" form="op.deviceConfirmForm">Continue</button>
<button id="device-abort" class="secondary" type="submit" form="op.deviceConfirmForm" value="yes" name="abort">Abort</button>`);
}

function deviceSuccessSource(ctx) {
  const client = ctx.oidc.client;
  ctx.body = page('Sign-in success', `<p id="device-success">You are signed in on your device
(${esc(client?.clientName || client?.clientId)}). You can close this page.</p>`);
}

function logoutSource(ctx, form) {
  ctx.body = page('Sign out', `<p>Do you want to sign out from ${esc(ctx.host)}?</p>
${form}
<button id="logout-confirm" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button id="logout-stay" class="secondary" type="submit" form="op.logoutForm">No, stay signed in</button>`);
}

function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out', '<p id="signed-out">You are signed out of the identity provider.</p>');
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
      'hfgate-url': { type: 'string', multiple: true, default: ['http://127.0.0.1:8080'] },
    },
    strict: true,
  });
  if (!values.keys) fail('--keys FILE is required');
  const hfgateUrls = values['hfgate-url'].map((u) => {
    let url;
    try {
      url = new URL(u);
    } catch {
      fail(`bad --hfgate-url ${u}`);
    }
    if (!['http:', 'https:'].includes(url.protocol) || url.search || url.hash) fail(`bad --hfgate-url ${u}`);
    return url.href.replace(/\/+$/, '');
  });
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
      {
        // hfgate's browser sign-in: authorization code + PKCE, a confidential client.
        client_id: 'hfgate-web',
        client_secret: 'hfgate-web-secret',
        client_name: 'hfgate',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: hfgateUrls.map((u) => `${u}/.hfgate/callback`),
        post_logout_redirect_uris: hfgateUrls.map((u) => `${u}/.hfgate/signed-out`),
        token_endpoint_auth_method: 'client_secret_basic',
      },
      {
        // `hfgate login`: the device flow, a public client.
        client_id: 'hfgate-cli',
        client_name: 'hfgate CLI',
        grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'none',
      },
    ],
    scopes: ['openid', 'email', 'profile', 'groups', 'offline_access', 'infer', 'read'],
    claims: CLAIMS,
    // ID tokens carry the claims of the granted scopes (email, groups), as
    // most organisations' IdPs do, not only sub.
    conformIdTokenClaims: false,
    findAccount: (ctx, sub) => {
      const account = ACCOUNTS[sub];
      if (!account) return undefined;
      return { accountId: sub, claims: () => ({ sub, ...account }) };
    },
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      // `hfgate logout` revokes its refresh token (its own tokens only).
      revocation: { enabled: true, allowedPolicy: (ctx, client, token) => token.clientId === client.clientId },
      deviceFlow: {
        enabled: true,
        userCodeInputSource,
        userCodeConfirmSource,
        successSource: deviceSuccessSource,
      },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource,
        postLogoutSuccessSource,
      },
      resourceIndicators: {
        enabled: true,
        // No resource parameter → no resource server → opaque token.
        defaultResource: () => undefined,
        // The device flow names its resource in the device authorization
        // request; the token requests that follow (device_code, refresh_token)
        // get a token for that same resource without repeating it.
        useGrantedResource: (ctx) => ctx.oidc.client?.clientId === 'hfgate-cli',
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
      if (token.kind === 'ClientCredentials') return EXTRA_CLAIMS[token.clientId];
      // A person's access token (device flow, refresh): email and groups
      // beside the sub that oidc-provider sets.
      if (token.kind === 'AccessToken' && token.accountId) return accessTokenClaims(token.accountId);
      return undefined;
    },
    ttl: {
      ClientCredentials: ttl,
      AccessToken: ttl,
      AuthorizationCode: 60,
      DeviceCode: 600,
      IdToken: 3600,
      Interaction: 3600,
      Grant: 14 * 24 * 3600,
      RefreshToken: 14 * 24 * 3600,
      Session: 14 * 24 * 3600,
    },
    // The sign-in session and interaction cookies (loopback, http).
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

  const callback = provider.callback();
  server.on('request', (req, res) => {
    handleInteraction(provider, req, res)
      .then((handled) => {
        if (!handled) callback(req, res);
      })
      .catch((err) => {
        console.error(`idp: interaction error: ${err.stack ?? err}`);
        if (!res.headersSent) sendHtml(res, 500, page('Error', `<p>${esc(err.message)}</p>`));
      });
  });

  const stop = (signal) => {
    console.error(`idp: ${signal}, stopping`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  console.error(`idp: issuer ${issuer}, signing with ${signKey.kid} (${signKey.alg}), publishing ${keys.map((k) => k.kid).join(',')}`);
  console.error(`idp: hfgate-web redirect_uris ${hfgateUrls.map((u) => `${u}/.hfgate/callback`).join(' ')}`);
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
