#!/usr/bin/env node
// A headless browser (Debian's chromium through playwright-core) for the
// hfgate end-to-end tests: it follows the sign-in pages of idp.mjs the way a
// person would. The tests run it as a subprocess: one JSON request on stdin,
// one JSON answer on stdout.
//
//   echo '{"steps": [...]}' | node browser.mjs
//
// Request:
//   steps          list of steps, run in order in one browser context (below)
//   state          optional file: the context's cookies are loaded from it when
//                  it exists and saved to it at the end, so that several runs
//                  act as one browser (Playwright storage state). Only cookies
//                  carry over: each run starts on a blank page, so its first
//                  step is goto or approve_device.
//   artifacts      directory for the failure screenshot and page HTML
//                  (default: the current directory)
//   timeout_ms     bound of every single wait (default 15000)
//   total_ms       bound of the whole run (default 90000)
//   chromium       the browser binary (default /usr/bin/chromium)
//
// Steps (each answers an object in "results", in the same order):
//   {"op": "goto", "url": U}
//       Navigate to U and follow redirects.
//   {"op": "sign_in", "user": "alice", "password": "pw", "until": PREFIX}
//       On the IdP's sign-in form: sign in, then pass every page of the IdP
//       (consent, device confirmation) until the URL starts with PREFIX (when
//       given) or a device-flow success page shows.
//   {"op": "approve_device", "url": U, "user": ..., "password": ..., "code": C}
//       Open U (verification_uri[_complete]), enter C if the page asks for a
//       code, confirm the device, sign in (unless the IdP session is still on),
//       authorize; ends on the IdP's device success page. With "deny": true
//       it aborts on the confirmation page instead (the CLI is then refused).
//   {"op": "confirm_logout", "until": PREFIX}
//       On the IdP's sign-out page: confirm, then wait for a URL starting
//       with PREFIX (when given).
//   {"op": "expect_sign_in"}
//       Fails unless the current page is the IdP's sign-in form.
//   {"op": "wait_url", "prefix": P}
//       Wait until the page URL starts with P.
//   {"op": "screenshot", "name": "page.png"}
//       Save a full-page screenshot of the current page to artifacts/name.
//   {"op": "cookies"}
//       Every cookie of the context: {name, value, domain, path, httpOnly,
//       secure, sameSite, expires}.
// Every result also has {"op", "url", "status", "title", "text", "body",
// "content_type", "history"}: the page after the step, the status and body
// of the last main-frame document response, its content type, and the
// main-frame navigations during the step (url + status, redirects included).
//
// Answer: {"ok": true, "results": [...]} and exit 0; or {"ok": false,
// "error": reason, "step": index, "url": current URL, "screenshot": path,
// "html": path, "results": [...]} and exit 1. Any request to a host other
// than the loopback interface is blocked.

import * as fs from 'node:fs';
import * as path from 'node:path';

import { chromium } from 'playwright-core';

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);
const TEXT_LIMIT = 20000;

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on('data', (c) => chunks.push(c));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    process.stdin.on('error', reject);
  });
}

function answer(obj, code) {
  process.stdout.write(`${JSON.stringify(obj)}\n`, () => process.exit(code));
}

class StepError extends Error {}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function main() {
  let request;
  try {
    request = JSON.parse(await readStdin());
  } catch (err) {
    answer({ ok: false, error: `bad JSON request on stdin: ${err.message}` }, 2);
    return;
  }
  const steps = request.steps ?? [];
  const artifacts = path.resolve(request.artifacts ?? '.');
  const timeout = request.timeout_ms ?? 15000;
  const total = request.total_ms ?? 90000;
  const executablePath = request.chromium ?? '/usr/bin/chromium';
  const results = [];
  let stepIndex = -1;
  let page;
  let browser;
  let finished = false;

  const failure = async (reason) => {
    if (finished) return;
    finished = true;
    const out = { ok: false, error: reason, step: stepIndex, results };
    if (page) {
      out.url = page.url();
      fs.mkdirSync(artifacts, { recursive: true });
      const stamp = `browser-failure-step${stepIndex}-${Date.now()}`;
      const shot = path.join(artifacts, `${stamp}.png`);
      try {
        await page.screenshot({ path: shot, fullPage: true, timeout: 5000 });
        out.screenshot = shot;
      } catch (err) {
        out.screenshot_error = err.message;
      }
      try {
        const html = path.join(artifacts, `${stamp}.html`);
        fs.writeFileSync(html, await page.content());
        out.html = html;
      } catch (err) {
        out.html_error = err.message;
      }
    }
    try {
      await browser?.close();
    } catch {
      // exiting anyway
    }
    answer(out, 1);
  };

  const watchdog = setTimeout(() => {
    failure(`the browser run took longer than ${total} ms`);
  }, total);
  watchdog.unref();

  if (!fs.existsSync(executablePath)) {
    await failure(`no browser at ${executablePath} (Debian: apt-get install chromium)`);
    return;
  }

  try {
    browser = await chromium.launch({
      executablePath,
      headless: true,
      timeout,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-dev-shm-usage',
        '--disable-background-networking',
        // Belt and braces beside the request filter below: no name resolves
        // except the loopback ones.
        '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
      ],
    });
    const statePath = request.state ? path.resolve(request.state) : undefined;
    const context = await browser.newContext({
      storageState: statePath && fs.existsSync(statePath) ? statePath : undefined,
      viewport: { width: 900, height: 800 },
    });
    context.setDefaultTimeout(timeout);
    context.setDefaultNavigationTimeout(timeout);
    await context.route('**/*', (route) => {
      const { hostname } = new URL(route.request().url());
      const host = hostname.includes(':') && !hostname.startsWith('[') ? `[${hostname}]` : hostname;
      if (LOOPBACK.has(host)) return route.continue();
      console.error(`browser: blocked ${route.request().url()}`);
      return route.abort('blockedbyclient');
    });
    page = await context.newPage();

    // The main frame's document responses, in order.
    let docs = [];
    page.on('response', (res) => {
      const req = res.request();
      if (req.isNavigationRequest() && req.frame() === page.mainFrame()) docs.push(res);
    });

    const pageInfo = async (op) => {
      await page.waitForLoadState('load').catch(() => {});
      const last = docs[docs.length - 1];
      let body = null;
      let contentType = null;
      if (last) {
        contentType = last.headers()['content-type'] ?? null;
        if (last.status() < 300 || last.status() >= 400) {
          body = await last.text().catch(() => null);
        }
      }
      const text = await page
        .evaluate(() => document.body?.innerText ?? '')
        .catch(() => '');
      const info = {
        op,
        url: page.url(),
        status: last ? last.status() : null,
        title: await page.title().catch(() => ''),
        text: text.slice(0, TEXT_LIMIT),
        body: body === null ? null : body.slice(0, TEXT_LIMIT),
        content_type: contentType,
        history: docs.map((r) => ({ url: r.url(), status: r.status() })),
      };
      docs = [];
      return info;
    };

    const has = async (selector) => (await page.locator(selector).count()) > 0;

    // Submit a form by clicking, and wait for the navigation it causes.
    const clickAndWait = async (selector) => {
      const before = docs.length;
      const navigated = page.waitForEvent('framenavigated', { predicate: (f) => f === page.mainFrame() });
      await Promise.all([navigated, page.click(selector)]);
      await page.waitForLoadState('load');
      return docs.length > before;
    };

    const onSignInForm = async () => (await has('#login-form')) && (await has('#sign-in'));

    const signIn = async (user, password) => {
      if (!(await onSignInForm())) {
        throw new StepError(`expected the IdP's sign-in form at ${page.url()}, found "${await page.title()}"`);
      }
      await page.fill('#login', user);
      await page.fill('#password', password);
      await clickAndWait('#sign-in');
      if (await has('#login-error')) {
        throw new StepError(`the IdP refused the sign-in: ${await page.textContent('#login-error')}`);
      }
    };

    // Pass the IdP's pages until `done()` holds; bounded by `timeout`.
    const passIdpPages = async (done, what, credentials) => {
      const deadline = Date.now() + timeout;
      for (;;) {
        await page.waitForLoadState('load');
        if (await done()) return;
        if (Date.now() > deadline) throw new StepError(`timed out waiting for ${what}; at ${page.url()}`);
        if (await has('#interaction-error')) {
          throw new StepError(`the IdP's sign-in failed: ${await page.textContent('#interaction-error')}`);
        }
        if (await has('#device-error')) {
          throw new StepError(`the IdP's device page says: ${await page.textContent('#device-error')}`);
        }
        if (await onSignInForm()) {
          if (!credentials) throw new StepError(`the IdP asks to sign in again at ${page.url()}`);
          await signIn(credentials.user, credentials.password);
          credentials = null; // only once: a second form means the sign-in did not hold
          continue;
        }
        if (await has('#authorize')) {
          await clickAndWait('#authorize');
          continue;
        }
        if (await has('#device-confirm')) {
          await clickAndWait('#device-confirm');
          continue;
        }
        // A page of someone else (an error page of the IdP or of the relying
        // party): wait for a navigation in progress, if any.
        await sleep(100);
      }
    };

    const startsWith = (prefix) => async () => page.url().startsWith(prefix);

    // Each run opens a new page: only cookies carry over (state), so a run starts somewhere.
    if (steps.length && !['goto', 'approve_device', 'cookies'].includes(steps[0].op)) {
      throw new StepError(`a run starts on a blank page: its first step must be goto or approve_device, not ${steps[0].op}`);
    }

    for (const [index, step] of steps.entries()) {
      stepIndex = index;
      const op = step.op;
      switch (op) {
        case 'goto': {
          try {
            await page.goto(step.url, { waitUntil: 'load' });
          } catch (err) {
            throw new StepError(`goto ${step.url}: ${err.message.split('\n')[0]}`);
          }
          results.push(await pageInfo(op));
          break;
        }
        case 'sign_in': {
          const user = step.user ?? 'alice';
          const password = step.password ?? 'any-password';
          await signIn(user, password);
          const success = async () => has('#device-success');
          const done = step.until ? startsWith(step.until) : success;
          await passIdpPages(done, step.until ? `a URL starting with ${step.until}` : 'the device success page', null);
          results.push(await pageInfo(op));
          break;
        }
        case 'approve_device': {
          try {
            await page.goto(step.url, { waitUntil: 'load' });
          } catch (err) {
            throw new StepError(`goto ${step.url}: ${err.message.split('\n')[0]}`);
          }
          if (await has('#device-continue')) {
            if (!step.code) throw new StepError('the device page asks for the code and the step has none');
            await page.fill('input[name=user_code]', step.code);
            await clickAndWait('#device-continue');
          }
          if (!(await has('#device-confirm'))) {
            throw new StepError(`expected the device confirmation page at ${page.url()}, found "${await page.title()}"`);
          }
          const shown = (await page.textContent('#user-code'))?.trim();
          if (step.code && shown !== step.code) {
            throw new StepError(`the IdP shows the code ${shown}, the CLI printed ${step.code}`);
          }
          if (step.deny) {
            await clickAndWait('#device-abort');
            if (!(await has('#device-error'))) {
              throw new StepError(`expected the IdP to report the aborted sign-in at ${page.url()}`);
            }
            results.push(await pageInfo(op));
            break;
          }
          await passIdpPages(async () => has('#device-success'), 'the device success page', {
            user: step.user ?? 'alice',
            password: step.password ?? 'any-password',
          });
          results.push(await pageInfo(op));
          break;
        }
        case 'confirm_logout': {
          if (!(await has('#logout-confirm'))) {
            throw new StepError(`expected the IdP's sign-out page at ${page.url()}, found "${await page.title()}"`);
          }
          await clickAndWait('#logout-confirm');
          if (step.until) {
            await page.waitForURL((u) => u.href.startsWith(step.until), { timeout });
          }
          results.push(await pageInfo(op));
          break;
        }
        case 'expect_sign_in': {
          if (!(await onSignInForm())) {
            throw new StepError(`expected the IdP's sign-in form, at ${page.url()} ("${await page.title()}")`);
          }
          results.push(await pageInfo(op));
          break;
        }
        case 'wait_url': {
          await page.waitForURL((u) => u.href.startsWith(step.prefix), { timeout });
          results.push(await pageInfo(op));
          break;
        }
        case 'screenshot': {
          const shot = path.resolve(artifacts, step.name ?? `step${index}.png`);
          fs.mkdirSync(path.dirname(shot), { recursive: true });
          await page.screenshot({ path: shot, fullPage: true });
          const info = await pageInfo(op);
          info.screenshot = shot;
          results.push(info);
          break;
        }
        case 'cookies': {
          const info = await pageInfo(op);
          info.cookies = (await context.cookies()).map((c) => ({
            name: c.name,
            value: c.value,
            domain: c.domain,
            path: c.path,
            httpOnly: c.httpOnly,
            secure: c.secure,
            sameSite: c.sameSite,
            expires: c.expires,
          }));
          results.push(info);
          break;
        }
        default:
          throw new StepError(`unknown op ${JSON.stringify(op)}`);
      }
    }
    stepIndex = -1;
    if (statePath) await context.storageState({ path: statePath });
    await browser.close();
    if (!finished) {
      finished = true;
      answer({ ok: true, results }, 0);
    }
  } catch (err) {
    const reason = err instanceof StepError
      ? err.message
      : (err.stack ?? String(err)).split('\n').slice(0, 3).join(' | ');
    await failure(reason);
  }
}

main();
