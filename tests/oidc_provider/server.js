// A real OpenID Provider for zerogate's OIDC interop tests: npm `oidc-provider` (OpenID-certified),
// configured from a JSON file the pytest fixture writes.
//
//   node server.js CONFIG.json
//
// CONFIG: {
//   "providers": [{"port": 40001, "conformIdTokenClaims": true}, ...],   // one issuer per port
//                 (with "tls": {"cert": FILE, "key": FILE}: served over HTTPS, issuer https://…)
//   "clients": [{client_id, client_secret, redirect_uris, token_endpoint_auth_method}],
//   "accounts": {"<login>": {"password", "email", "email_verified", "groups", "name", "amr"}}
// }
//
// Each provider's issuer is http://127.0.0.1:PORT (https:// with "tls"). The login form is this file's own (a login
// name and a password checked against the accounts, and a "Cancel" link that ends the
// interaction with error=access_denied, as the provider's devInteractions do); consent is
// implied (first-party client). PKCE is required for every client. With the default
// conformIdTokenClaims the id_token carries only `sub` (and amr, nonce, ...), so email and
// groups come from the userinfo endpoint; a provider with "conformIdTokenClaims": false puts
// them into the id_token as well.
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts;

const page = (title, body) => `<!doctype html><html><head><meta charset="utf-8">
<title>${title}</title></head><body><h1>${title}</h1>${body}</body></html>`;
const esc = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function findAccount(_ctx, id) {
  const account = accounts[id];
  if (!account) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        email: account.email,
        email_verified: account.email_verified,
        name: account.name ?? id,
        groups: account.groups ?? [],
      };
    },
  };
}

function makeProvider(spec) {
  const issuer = `${spec.tls ? 'https' : 'http'}://127.0.0.1:${spec.port}`;
  const provider = new Provider(issuer, {
    clients: config.clients,
    findAccount,
    claims: {
      amr: null,
      // amr comes from the login (interactionFinished) and goes into every id_token
      openid: ['sub', 'amr'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
    conformIdTokenClaims: spec.conformIdTokenClaims ?? true,
    pkce: { required: () => true },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    // first-party client: consent is implied for everything it asks
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid email profile groups');
      await grant.save();
      return grant;
    },
    cookies: { keys: ['zerogate-test-only-cookie-key'] },
    ttl: { IdToken: 3600, AccessToken: 3600, Interaction: 600, Session: 3600, Grant: 3600 },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', `<pre>${esc(JSON.stringify(out))}</pre>`);
    },
  });
  provider.proxy = false;
  const callback = provider.callback();

  async function interaction(req, res) {
    const details = await provider.interactionDetails(req, res);
    const { uid, prompt } = details;
    const url = new URL(req.url, issuer);
    if (url.pathname === `/interaction/${uid}/abort`) {
      await provider.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: 'End-User aborted interaction',
      }, { mergeWithLastSubmission: false });
      return;
    }
    if (prompt.name !== 'login') {
      res.statusCode = 501;
      res.end(`prompt ${prompt.name} is not implemented here`);
      return;
    }
    let error = '';
    if (req.method === 'POST') {
      const form = await readForm(req);
      const login = form.get('login') ?? '';
      const account = accounts[login];
      if (account && account.password === form.get('password')) {
        await provider.interactionFinished(req, res, {
          login: { accountId: login, amr: account.amr ?? ['pwd'] },
        }, { mergeWithLastSubmission: false });
        return;
      }
      error = '<p class="error" role="alert">Wrong login or password.</p>';
    }
    res.setHeader('content-type', 'text/html; charset=utf-8');
    res.setHeader('cache-control', 'no-store');
    res.end(page('Sign-in to the test provider', `${error}
<form method="post" action="/interaction/${esc(uid)}" autocomplete="off">
  <label>Login <input required type="text" name="login" autofocus></label>
  <label>Password <input required type="password" name="password"></label>
  <button type="submit" class="login-submit">Sign-in</button>
</form>
<a id="cancel" href="/interaction/${esc(uid)}/abort">Cancel</a>`));
  }

  const handler = (req, res) => {
    if (req.url.startsWith('/interaction/')) {
      interaction(req, res).catch((err) => {
        res.statusCode = 400;
        res.setHeader('content-type', 'text/plain');
        res.end(`interaction failed: ${err.message}`);
      });
      return;
    }
    callback(req, res);
  };
  const server = spec.tls
    ? https.createServer(
        { cert: readFileSync(spec.tls.cert), key: readFileSync(spec.tls.key) },
        handler,
      )
    : http.createServer(handler);
  server.listen(spec.port, '127.0.0.1', () => {
    console.log(`ready ${issuer}`);
  });
  return server;
}

const servers = config.providers.map(makeProvider);

function stop() {
  for (const server of servers) server.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
