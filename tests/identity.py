"""Identity providers for the authentication tests, both real servers on 127.0.0.1.

- :class:`KeycloakRealm`: a Keycloak-style realm as MONAI Label expects one (Keycloak itself is
  not installable here): `GET <realm>` answers the realm document with its RSA `public_key`,
  `GET <realm>/.well-known/openid-configuration` names the token endpoint, and that endpoint
  issues RS256 tokens for the password grant (MONAI Label's `/auth/token` login) with roles in
  `realm_access.roles`, as Keycloak does. It counts how often its key is fetched and can rotate it.
- :class:`OidcProvider`: the npm package `oidc-provider` (a certified OpenID provider,
  installed into tests/oidc by `make test`), run with node (see tests/oidc/provider.mjs).
"""

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.conftest import ROOT, free_port, wait_until_serving

CLIENT_ID = "monailabel-app"  # MONAI Label's default MONAI_LABEL_AUTH_CLIENT_ID
OIDC = ROOT / "tests" / "oidc"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class KeycloakRealm:
    def __init__(self, name: str = "cmfnet"):
        self.key = rsa_key()
        self.key_fetches = 0
        self.users: dict[str, tuple[str, list[str]]] = {}  # username -> (password, roles)
        realm = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == f"/realms/{name}":
                    realm.key_fetches += 1
                    der = realm.key.public_key().public_bytes(
                        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                    )
                    return self._json({"realm": name, "public_key": base64.b64encode(der).decode()})
                if self.path == f"/realms/{name}/.well-known/openid-configuration":
                    return self._json(
                        {"issuer": realm.uri, "token_endpoint": f"{realm.uri}/protocol/openid-connect/token"}
                    )
                self._json({"error": "not found"}, 404)

            def do_POST(self):
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                username, password = form.get("username", [""])[0], form.get("password", [""])[0]
                if self.path != f"/realms/{name}/protocol/openid-connect/token" or form.get("grant_type") != [
                    "password"
                ]:
                    return self._json({"error": "unsupported"}, 400)
                if realm.users.get(username, ("", []))[0] != password or not password:
                    return self._json({"error": "invalid_grant"}, 401)
                token = realm.token(realm.users[username][1], username=username, azp=form.get("client_id", [""])[0])
                self._json({"access_token": token, "token_type": "Bearer", "expires_in": 300})

            def _json(self, body: dict, status: int = 200):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.uri = f"http://127.0.0.1:{self._http.server_port}/realms/{name}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def token(self, roles: list[str], username: str = "someone", key=None, **claims) -> str:
        """A token as Keycloak issues it (RS256, `realm_access.roles`); `claims` override the defaults."""
        now = int(time.time())
        payload = {
            "iss": self.uri,
            "azp": CLIENT_ID,
            "aud": "account",
            "sub": username,
            "preferred_username": username,
            "iat": now,
            "exp": now + 300,
            "realm_access": {"roles": roles},
            **claims,
        }
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": "realm-key"})

    def rotate(self) -> None:
        self.key = rsa_key()

    def close(self) -> None:
        self._http.shutdown()


def private_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict:
    return {**RSAAlgorithm.to_jwk(key, as_dict=True), "kid": kid, "use": "sig", "alg": "RS256"}


class OidcProvider:
    """`oidc-provider` serving `clients` (id -> {"roles": [...], "ttl": seconds}), signing with `keys[0]`."""

    def __init__(self, folder: Path, keys: list[dict], clients: dict[str, dict], audiences: list[str]):
        require_node()
        self.folder = folder
        self.clients = clients
        self.audiences = audiences
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.process = None
        self.start(keys)

    def start(self, keys: list[dict]) -> None:
        config = {
            "port": self.port,
            "jwks": {"keys": keys},
            "audiences": self.audiences,
            "clients": [
                {"id": client, "secret": secret(client), "roles": spec["roles"], "ttl": spec.get("ttl", 600)}
                for client, spec in self.clients.items()
            ],
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"oidc-{self.port}.json"
        path.write_text(json.dumps(config))
        log = self.folder / f"oidc-{self.port}.log"
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [shutil.which("node"), str(OIDC / "provider.mjs"), str(path)], stdout=out, stderr=subprocess.STDOUT
            )
        wait_until_serving(self.process, f"{self.issuer}/.well-known/openid-configuration", log, 60, "oidc-provider")

    def restart(self, keys: list[dict]) -> None:
        """The same issuer with other keys (a rotation): a new process on the same port."""
        self.stop()
        self.start(keys)

    def token(self, client: str, resource: str) -> str:
        """An access token by the client credentials grant."""
        response = httpx.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "resource": resource, "scope": "api"},
            auth=(client, secret(client)),
        )
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def secret(client: str) -> str:
    return f"secret-{client}-0123456789abcdef"


def require_node() -> None:
    """Skip (fail in CI) when node or the npm package is missing."""
    if shutil.which("node") and (OIDC / "node_modules" / "oidc-provider").is_dir():
        return
    message = "node or tests/oidc/node_modules is missing: run `make oidc-deps` (make test does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
