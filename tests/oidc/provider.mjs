// A real OpenID Connect provider (the certified `oidc-provider` package) on 127.0.0.1, for tests/test_auth.py.
//
// Usage: node provider.mjs CONFIG.json, where CONFIG holds
//   {"port": 9001, "jwks": {"keys": [private JWKs]}, "audiences": ["urn:cmfnet-label", ...],
//    "clients": [{"id": "annotator", "secret": "...", "roles": ["monailabel-annotator"], "ttl": 600}, ...]}
// The issuer is http://127.0.0.1:PORT. Clients get JWT access tokens by the client credentials grant
// (POST /token, grant_type=client_credentials, resource=<an audience>), signed with the first key of
// `jwks`, with their `roles` as a top-level `roles` claim and `ttl` seconds to live.
// Prints "listening <issuer>" when it serves.

import { readFileSync } from "node:fs";
import Provider from "oidc-provider";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const issuer = `http://127.0.0.1:${config.port}`;
const clients = Object.fromEntries(config.clients.map((client) => [client.id, client]));

const provider = new Provider(issuer, {
  clients: config.clients.map((client) => ({
    client_id: client.id,
    client_secret: client.secret,
    grant_types: ["client_credentials"],
    redirect_uris: [],
    response_types: [],
  })),
  jwks: config.jwks,
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => oneOf ?? config.audiences[0],
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (!config.audiences.includes(resource)) throw new Error(`unknown resource ${resource}`);
        return { scope: "api", audience: resource, accessTokenFormat: "jwt", jwt: { sign: { alg: "RS256" } } };
      },
    },
  },
  ttl: { ClientCredentials: (ctx, token, client) => clients[client.clientId].ttl },
  extraTokenClaims: (ctx, token) => ({
    roles: clients[token.clientId].roles,
    preferred_username: token.clientId,
  }),
});

provider.listen(config.port, "127.0.0.1", () => console.log(`listening ${issuer}`));
