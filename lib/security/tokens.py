"""Bearer token (JWT) verification, in place of MONAI Label 0.8.5's.

MONAI Label's `from_token` calls `jwt.decode` without `algorithms`, which PyJWT 2 refuses, so
it rejects every valid token. This keeps its contract (settings, Keycloak-style realm,
roles claim) and checks:

- keys: the RSA `public_key` of the Keycloak-style realm at `MONAI_LABEL_AUTH_REALM_URI`, or,
  with `CMFNET_AUTH_ISSUER`, the JWKS of that OpenID Connect provider (issuer discovery). Fetched
  once, and again only when a token is signed by a key not in hand (a rotation), at most every
  `CMFNET_AUTH_KEY_REFRESH_SECONDS`;
- algorithm: the token's `alg` must be one of `ALGORITHMS` (asymmetric: never `none`, never HMAC,
  so a public key can never serve as an HMAC secret) and fit the key;
- claims: the signature, `exp` (required), `iss` (the realm URI or the issuer), and the audience
  (`CMFNET_AUTH_AUDIENCE`, default `MONAI_LABEL_AUTH_CLIENT_ID`, in `aud`, or as `azp`, which
  Keycloak sets to the client a token was issued to).
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import RSAAlgorithm
from monailabel.config import settings

from lib.security.settings import CmfnetSecuritySettings

logger = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")

Keys = dict[str | None, dict]  # key id (None: a key without one) -> JWK


class InvalidToken(Exception):
    """The token is not accepted (401); the message says why."""


class KeysUnavailable(Exception):
    """The identity provider's keys cannot be fetched (503)."""


@dataclass(frozen=True)
class Identity:
    username: str
    email: str | None
    name: str | None
    roles: list[str]


def realm_keys(realm_uri: str, timeout: float) -> Keys:
    """The realm's RSA `public_key` (Keycloak's realm document), as a JWK without a key id."""
    document = _get_json(realm_uri, timeout)
    try:
        key = load_pem_public_key(
            f"-----BEGIN PUBLIC KEY-----\n{document['public_key']}\n-----END PUBLIC KEY-----".encode()
        )
    except (KeyError, TypeError, ValueError) as e:
        raise KeysUnavailable(f"{realm_uri} has no readable RSA 'public_key': {e}") from e
    if not isinstance(key, RSAPublicKey):
        raise KeysUnavailable(f"the 'public_key' of {realm_uri} is not an RSA key")
    return {None: RSAAlgorithm.to_jwk(key, as_dict=True)}


def oidc_keys(issuer: str, timeout: float) -> Keys:
    """The signing keys of an OpenID Connect provider: discovery document -> `jwks_uri` -> JWKS."""
    discovery = _get_json(f"{issuer.rstrip('/')}/.well-known/openid-configuration", timeout)
    if discovery.get("issuer") != issuer:
        raise KeysUnavailable(f"the discovery document of {issuer} names another issuer: {discovery.get('issuer')!r}")
    jwks = _get_json(discovery.get("jwks_uri", ""), timeout)
    keys = {
        key.get("kid"): key
        for key in jwks.get("keys", [])
        if isinstance(key, dict) and key.get("use", "sig") == "sig" and key.get("kty") in ("RSA", "EC")
    }
    if not keys:
        raise KeysUnavailable(f"the JWKS of {issuer} holds no RSA or EC signing key")
    return keys


def _get_json(url: str, timeout: float) -> dict:
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as e:
        raise KeysUnavailable(f"cannot fetch {url!r}: {e}") from e
    if not isinstance(document, dict):
        raise KeysUnavailable(f"{url} did not answer with a JSON object")
    return document


class KeySet:
    """Keys from `fetch`, fetched on first use and again at most every `refresh_seconds`."""

    def __init__(self, fetch: Callable[[], Keys], refresh_seconds: float):
        self._fetch = fetch
        self._refresh_seconds = refresh_seconds
        self._keys: Keys | None = None
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def find(self, kid: str | None) -> dict:
        """The key for a token's `kid`, fetching the keys again if it is unknown (a rotation)."""
        with self._lock:
            if self._keys is None:
                self._fetch_now()
            key = self._match(kid)
            if key is None and self._may_refresh():
                self._fetch_now()
                key = self._match(kid)
        if key is None:
            raise InvalidToken(f"the token is signed with an unknown key {kid!r}")
        return key

    def refresh(self) -> bool:
        """Fetch the keys again unless that was done in the last `refresh_seconds`; True if they changed."""
        with self._lock:
            if not self._may_refresh():
                return False
            before = self._keys
            self._fetch_now()
            return self._keys != before

    def _match(self, kid: str | None) -> dict | None:
        keys = self._keys or {}
        if kid in keys:
            return keys[kid]
        if None in keys:  # a realm's public_key has no id: it signs every token
            return keys[None]
        return next(iter(keys.values())) if kid is None and len(keys) == 1 else None

    def _may_refresh(self) -> bool:
        return time.monotonic() - self._fetched_at >= self._refresh_seconds

    def _fetch_now(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            self._keys = self._fetch()
        except KeysUnavailable:
            if self._keys is None:
                raise
            logger.exception("Could not fetch the identity provider's keys again; keeping those in hand")
        logger.info(f"Token signing keys: {sorted(str(k) for k in self._keys)}")


class TokenVerifier:
    def __init__(self, keys: KeySet, issuer: str, audience: str):
        self.keys = keys
        self.issuer = issuer
        self.audience = audience

    @classmethod
    def from_settings(cls) -> "TokenVerifier":
        ours = CmfnetSecuritySettings()
        timeout = settings.MONAI_LABEL_AUTH_TIMEOUT
        if ours.CMFNET_AUTH_ISSUER:
            issuer = ours.CMFNET_AUTH_ISSUER
            fetch = lambda: oidc_keys(issuer, timeout)  # noqa: E731
        else:
            issuer = settings.MONAI_LABEL_AUTH_REALM_URI
            fetch = lambda: realm_keys(issuer, timeout)  # noqa: E731
        audience = ours.CMFNET_AUTH_AUDIENCE or settings.MONAI_LABEL_AUTH_CLIENT_ID
        logger.info(f"Authentication on: tokens of {issuer} for audience {audience!r}")
        return cls(KeySet(fetch, ours.CMFNET_AUTH_KEY_REFRESH_SECONDS), issuer, audience)

    def verify(self, token: str) -> Identity:
        """The token's identity; InvalidToken saying why it is not accepted."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidToken(f"not a JWT: {e}") from e
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise InvalidToken(f"algorithm {algorithm!r} is not accepted (only {', '.join(ALGORITHMS)})")
        kid = header.get("kid")
        try:
            claims = self._decode(token, self.keys.find(kid), algorithm)
        except jwt.InvalidSignatureError:
            if not self.keys.refresh():  # a key without an id (a realm's) may have been rotated
                raise InvalidToken("the token's signature does not verify") from None
            claims = self._decode(token, self.keys.find(kid), algorithm)
        return _identity(claims)

    def _decode(self, token: str, jwk: dict, algorithm: str) -> dict:
        if jwk.get("alg", algorithm) != algorithm:
            raise InvalidToken(f"the token's algorithm {algorithm} is not its key's ({jwk['alg']})")
        try:
            claims = jwt.decode(
                token,
                jwt.PyJWK(jwk, algorithm=algorithm),
                algorithms=[algorithm],
                issuer=self.issuer,
                options={"require": ["exp", "iss"], "verify_aud": False},
            )
        except jwt.InvalidSignatureError:
            raise
        except jwt.PyJWTError as e:
            raise InvalidToken(str(e)) from e
        audiences = claims.get("aud", [])
        audiences = [audiences] if isinstance(audiences, str) else audiences
        if self.audience not in audiences and claims.get("azp") != self.audience:
            raise InvalidToken(f"the token is not for this server (audience {self.audience!r})")
        return claims


def _identity(claims: dict) -> Identity:
    roles = claims
    for key in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
        roles = roles.get(key) if isinstance(roles, dict) else None
    roles = [roles] if isinstance(roles, str) else roles
    return Identity(
        username=str(claims.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or claims.get("sub", "")),
        email=claims.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=claims.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=[str(role) for role in roles] if isinstance(roles, list) else [],
    )
