// A test OpenID provider: oidc-provider (pinned in package.json) on a loopback port, issuing RS256 JWT access
// tokens for the client credentials grant, bound to the resource the client asks for (RFC 8707).
// Usage: node issuer.mjs <settings.json>; prints "ready <issuer>" once it listens.
// settings: {port, jwks: {keys: [private JWK with kid]}, clients: [{client_id, client_secret, groups, opaque}]}
// A client with `opaque: true` gets opaque access tokens, which resource servers check by introspection
// (RFC 7662, at /token/introspection, open to every authenticated client here).
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

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
    grant_types: ['client_credentials'],
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
        accessTokenTTL: 600,
        ...(opaque.has(client.clientId)
          ? { accessTokenFormat: 'opaque' }
          : { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } }),
      }),
    },
  },
  extraTokenClaims: (ctx, token) => ({ groups: groups[token.clientId] || [] }),
});
provider.proxy = false;
provider.listen(settings.port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
