// A test OpenID provider: oidc-provider (pinned in package.json) on a loopback port, issuing RS256 JWT access
// tokens for the client credentials grant, bound to the resource the client asks for (RFC 8707).
// Usage: node issuer.mjs <settings.json>; prints "ready <issuer>" once it listens.
// settings: {port, jwks: {keys: [private JWK with kid]}, clients: [{client_id, client_secret, groups, opaque,
// exchange}], ttl (seconds, access tokens), exchange_ttl (seconds, exchanged tokens), issued (a file every
// exchanged token is appended to, for tests that grep output for tokens)}
// A client with `exchange: true` may also use the RFC 8693 token-exchange grant, registered below with
// `provider.registerGrantType`: it trades a subject token this issuer signed (an access token, unexpired) for a
// JWT with the same `sub` (the subject token's `sub`, else its `client_id`), the requested `audience` (or
// `resource`) as `aud`, and `act: {sub: <the exchanging client>}`.
// A client with `opaque: true` gets opaque access tokens, which resource servers check by introspection
// (RFC 7662, at /token/introspection, open to every authenticated client here).
import { appendFileSync, readFileSync } from 'node:fs';
import Provider, { errors } from 'oidc-provider';
import * as jose from 'jose';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const settings = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${settings.port}`;
const groups = Object.fromEntries(settings.clients.map((c) => [c.client_id, c.groups || []]));
const opaque = new Set(settings.clients.filter((c) => c.opaque).map((c) => c.client_id));

// In memory, without the library's development-only warning.
const stores = new Map();
class MemoryAdapter {
  constructor(name) { this.name = name; }
  key(id) { return `${this.name}:${id}`; }
  async upsert(id, payload) { stores.set(this.key(id), payload); }
  async find(id) { return stores.get(this.key(id)); }
  async findByUserCode() { return undefined; }
  async findByUid() { return undefined; }
  async consume(id) { const p = stores.get(this.key(id)); if (p) p.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { stores.delete(this.key(id)); }
  async revokeByGrantId() {}
}

const provider = new Provider(issuer, {
  adapter: MemoryAdapter,
  jwks: settings.jwks,
  clients: settings.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: c.exchange ? ['client_credentials', TOKEN_EXCHANGE] : ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: c.auth_method || 'client_secret_basic',
    scope: 'mcp',
  })),
  scopes: ['mcp'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => settings.default_resource || undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, client) => ({
        scope: 'mcp',
        audience: resource,
        accessTokenTTL: settings.ttl || 600,
        ...(opaque.has(client.clientId)
          ? { accessTokenFormat: 'opaque' }
          : { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } }),
      }),
    },
  },
  extraTokenClaims: (ctx, token) => ({ groups: groups[token.clientId] || [] }),
});
const privateJwk = settings.jwks.keys[0];
const signingKey = await jose.importJWK(privateJwk, 'RS256');
const { d, p, q, dp, dq, qi, key_ops, ...publicJwk } = privateJwk;
const verifyingKey = await jose.importJWK(publicJwk, 'RS256');
let exchanged = 0;

async function tokenExchange(ctx) {
  const { params, client } = ctx.oidc;
  if (params.subject_token_type !== 'urn:ietf:params:oauth:token-type:access_token') {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  let subject;
  try {
    ({ payload: subject } = await jose.jwtVerify(params.subject_token, verifyingKey, { issuer }));
  } catch (err) {
    console.error(`token exchange: subject_token refused: ${err.code || err.message}`);
    throw new errors.InvalidGrant(`subject_token: ${err.code || 'invalid'}`);
  }
  const audience = params.audience || params.resource;
  if (!audience) throw new errors.InvalidTarget('audience or resource is required');
  const ttl = settings.exchange_ttl || 600;
  const now = Math.floor(Date.now() / 1000);
  const token = await new jose.SignJWT({
    sub: subject.sub || subject.client_id,
    client_id: client.clientId,
    act: { sub: client.clientId },
    scope: params.scope || 'mcp',
    groups: subject.groups || [],
  })
    .setProtectedHeader({ alg: 'RS256', kid: privateJwk.kid, typ: 'at+jwt' })
    .setIssuer(issuer)
    .setAudience(audience)
    .setIssuedAt(now)
    .setExpirationTime(now + ttl)
    .setJti(`x-${++exchanged}`)
    .sign(signingKey);
  if (settings.issued) appendFileSync(settings.issued, `${token}\n`); // for the tests' grep of all output
  ctx.body = {
    access_token: token,
    issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    token_type: 'Bearer',
    expires_in: ttl,
  };
}
provider.registerGrantType(
  TOKEN_EXCHANGE,
  tokenExchange,
  ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope'],
);
provider.proxy = false;
provider.listen(settings.port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
