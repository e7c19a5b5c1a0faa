"""Authentication and roles through a real server, against real identity providers.

Two servers with `MONAI_LABEL_AUTH_ENABLE=true`: one on a Keycloak-style realm (MONAI Label's
contract: the realm's RSA `public_key`, roles in `realm_access.roles`, login through MONAI
Label's `/auth/token`), one on `oidc-provider` (discovery, JWKS, audience, a `roles` claim).
Plus the route table: every route the server serves has a rule.
"""

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time

import jwt
import nibabel as nib
import numpy as np
import pytest
from fastapi import FastAPI
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from lib.security.roles import ROUTE_RULES
from lib.server.route_table import route_entries
from tests.conftest import ROOT, copy_of_demo, publish_untrained_model, running_server
from tests.identity import KeycloakRealm, OidcProvider, private_jwk, public_pem, rsa_key

USER, ANNOTATOR, REVIEWER, ADMIN = (f"monailabel-{r}" for r in ("user", "annotator", "reviewer", "admin"))
AUDIENCE = "urn:cmfnet-label"
VIEWER = "https://viewer.hospital.example"  # the one site allowed cross-origin access
CLIENTS = {
    "viewer": {"roles": [USER]},
    "annotator": {"roles": [ANNOTATOR]},
    "admin": {"roles": [ADMIN]},
    "nobody": {"roles": ["some-other-role"]},
    "short": {"roles": [ADMIN], "ttl": 1},
}


@pytest.fixture(scope="module")
def realm():
    realm = KeycloakRealm()
    realm.users = {"ada": ("pw-ada", [ANNOTATOR, "offline_access"]), "root": ("pw-root", [ADMIN])}
    yield realm
    realm.close()


@pytest.fixture(scope="module")
def realm_server(realm, demo, tmp_path_factory):
    studies = copy_of_demo(demo, tmp_path_factory.mktemp("auth_realm"))
    env = {
        "MONAI_LABEL_AUTH_ENABLE": "true",
        "MONAI_LABEL_AUTH_REALM_URI": realm.uri,
        "CMFNET_AUTH_KEY_REFRESH_SECONDS": "1",
        "CMFNET_CORS_ORIGINS": VIEWER,
    }
    with running_server(studies.parent, studies, {"auto_train": "false"}, env=env, probe="/auth/") as server:
        publish_untrained_model(server)
        yield server


@pytest.fixture(scope="module")
def providers(tmp_path_factory):
    """oidc-provider, and another one (another issuer) with the same keys."""
    folder = tmp_path_factory.mktemp("oidc")
    keys = [private_jwk(rsa_key(), "key-1")]
    provider = OidcProvider(folder, keys, CLIENTS, [AUDIENCE, "urn:other-service"])
    other = OidcProvider(folder, keys, CLIENTS, [AUDIENCE])
    yield provider, other, keys
    provider.stop()
    other.stop()


@pytest.fixture(scope="module")
def oidc_server(providers, demo, tmp_path_factory):
    provider = providers[0]
    studies = copy_of_demo(demo, tmp_path_factory.mktemp("auth_oidc"))
    env = {
        "MONAI_LABEL_AUTH_ENABLE": "true",
        "CMFNET_AUTH_ISSUER": provider.issuer,
        "CMFNET_AUTH_AUDIENCE": AUDIENCE,
        "MONAI_LABEL_AUTH_TOKEN_ROLES": "roles",
        "CMFNET_AUTH_KEY_REFRESH_SECONDS": "1",
    }
    with running_server(studies.parent, studies, {"auto_train": "false"}, env=env, probe="/auth/") as server:
        yield server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def strokes_upload(server, tmp_path, image_id="case_002"):
    ct = nib.load(server.studies / f"{image_id}.nii.gz")
    values = np.zeros(ct.shape, np.uint8)
    values[10:20, 30, 20] = 1
    path = tmp_path / "strokes.nii.gz"
    nib.save(nib.Nifti1Image(values, ct.affine), path)
    return path


def save_strokes(server, tmp_path, token: str | None):
    with open(strokes_upload(server, tmp_path), "rb") as f:
        return server.http.put(
            "/datastore/label",
            params={"image": "case_002", "tag": "scribbles"},
            files={"label": f},
            headers=bearer(token) if token else {},
        )


def upload_image(server, tmp_path, token: str, image_id: str):
    (tmp_path / "ct.nii.gz").write_bytes((server.studies / "case_002.nii.gz").read_bytes())
    with open(tmp_path / "ct.nii.gz", "rb") as f:
        return server.http.put("/datastore/image", params={"image": image_id}, files={"file": f}, headers=bearer(token))


def status(response) -> int:
    return response.status_code


# -- a Keycloak-style realm (MONAI Label's contract) ---------------------------------------------


def test_realm_no_token_is_401_on_reads_and_writes(realm_server, tmp_path):
    for response in (
        realm_server.http.get("/info/"),
        realm_server.http.get("/datastore/", params={"output": "all"}),
        realm_server.http.post("/infer/cmfnet?image=case_000&output=json"),
        save_strokes(realm_server, tmp_path, None),
        realm_server.http.post("/reload"),
    ):
        assert status(response) == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")


def hs256(claims: dict, secret: bytes) -> str:
    """A token signed with HMAC-SHA256 by hand (PyJWT refuses to use a public key as the secret)."""
    encode = lambda data: base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")  # noqa: E731
    signing_input = encode({"alg": "HS256", "typ": "JWT"}) + b"." + encode(claims)
    signature = base64.urlsafe_b64encode(hmac.new(secret, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


def test_realm_bad_tokens_are_401(realm_server, realm):
    now = int(time.time())
    other = rsa_key()
    claims = {"iss": realm.uri, "azp": "monailabel-app", "exp": now + 300, "realm_access": {"roles": [ADMIN]}}
    bad = {
        "expired": realm.token([ADMIN], exp=now - 10, iat=now - 400),
        "other issuer": realm.token([ADMIN], iss="http://127.0.0.1:1/realms/other"),
        "wrong audience": realm.token([ADMIN], azp="another-client", aud="another-client"),
        "no expiry": jwt.encode({k: v for k, v in claims.items() if k != "exp"}, realm.key, "RS256"),
        "other key": realm.token([ADMIN], key=other),
        "alg none": jwt.encode(claims, None, "none"),
        # the realm's public key used as an HMAC secret: the classic algorithm confusion attack
        "HS256 keyed with the public key": hs256(claims, public_pem(realm.key)),
        "not a JWT": "abc.def",
    }
    for what, token in bad.items():
        response = realm_server.http.get("/info/", headers=bearer(token))
        assert status(response) == 401, f"{what}: {response.text}"


def test_realm_roles_decide_what_each_user_may_do(realm_server, realm, tmp_path):
    user, annotator, reviewer, admin = (realm.token([role]) for role in (USER, ANNOTATOR, REVIEWER, ADMIN))
    http = realm_server.http
    assert status(http.get("/info/", headers=bearer(user))) == 200
    assert status(http.post("/infer/cmfnet?image=case_001&output=json", headers=bearer(user))) == 200
    assert status(save_strokes(realm_server, tmp_path, user)) == 403
    assert status(http.post("/infer/cmfnet_scribbles?image=case_001", headers=bearer(user))) == 403  # stores strokes

    assert status(save_strokes(realm_server, tmp_path, annotator)) == 200
    assert status(save_strokes(realm_server, tmp_path, reviewer)) == 200
    refused = status(http.post("/train/cmfnet", json={"max_steps": 1}, headers=bearer(annotator)))
    assert refused == 403
    assert status(upload_image(realm_server, tmp_path, annotator, "by_annotator")) == 403
    assert status(http.delete("/datastore/image", params={"id": "case_001"}, headers=bearer(annotator))) == 403
    assert status(http.delete("/model/cmfnet", headers=bearer(annotator))) == 403  # MONAI Label itself lets annotators

    assert status(upload_image(realm_server, tmp_path, admin, "by_admin")) == 200
    assert status(http.delete("/datastore/image", params={"id": "by_admin"}, headers=bearer(admin))) == 200
    assert status(http.post("/train/cmfnet", json={"max_steps": 1}, headers=bearer(admin))) == 200
    assert status(http.delete("/train/", headers=bearer(admin))) == 200
    detail = http.post("/train/", headers=bearer(user)).json()["detail"]
    assert "admin" in detail


def test_realm_key_is_fetched_once_and_again_on_rotation(realm_server, realm):
    admin = realm.token([ADMIN])
    assert status(realm_server.http.get("/info/", headers=bearer(admin))) == 200
    fetches = realm.key_fetches
    for _ in range(5):
        assert status(realm_server.http.get("/info/", headers=bearer(realm.token([USER])))) == 200
    assert realm.key_fetches == fetches, "the realm's key is not fetched per request"

    realm.rotate()
    time.sleep(1.2)  # CMFNET_AUTH_KEY_REFRESH_SECONDS
    assert status(realm_server.http.get("/info/", headers=bearer(realm.token([USER])))) == 200
    assert realm.key_fetches == fetches + 1
    for _ in range(3):  # tokens of the old key: refused, without a fetch each
        assert status(realm_server.http.get("/info/", headers=bearer(admin))) == 401
    assert realm.key_fetches <= fetches + 2


def test_only_the_configured_site_gets_cross_origin_access(realm_server, realm):
    preflight = {"Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "authorization"}
    allowed = realm_server.http.options("/datastore/label", headers={"Origin": VIEWER, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == VIEWER
    refused = realm_server.http.options("/datastore/label", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers
    response = realm_server.http.get("/info/", headers={"Origin": VIEWER, **bearer(realm.token([USER]))})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == VIEWER


def test_monailabel_client_logs_in_through_the_server_and_works(realm_server, realm, tmp_path):
    """Slicer's path: MONAI Label's client, its `/auth/token` login against the realm, then calls."""
    client = MONAILabelClient(realm_server.url, tmpdir=str(tmp_path))
    assert client.auth_enabled()
    client.update_auth(client.auth_token("ada", "pw-ada"))
    assert client.auth_valid_token()
    assert "cmfnet" in client.info()["models"]
    saved = client.save_label("case_002", str(strokes_upload(realm_server, tmp_path)), tag="scribbles")
    assert saved["label"] == "case_002"
    with pytest.raises(MONAILabelClientException) as refused:
        client.train_start("cmfnet", {"max_steps": 1})
    assert "Status: 403" in refused.value.msg


# -- any OpenID Connect provider: oidc-provider ---------------------------------------------------


def test_oidc_no_token_expired_other_issuer_or_audience_are_401(oidc_server, providers):
    provider, other, _ = providers
    expiring = provider.token("short", AUDIENCE)
    time.sleep(2.5)
    bad = {
        "no token": None,
        "expired": expiring,
        "other issuer": other.token("admin", AUDIENCE),
        "wrong audience": provider.token("admin", "urn:other-service"),
    }
    for what, token in bad.items():
        response = oidc_server.http.get("/info/", headers=bearer(token) if token else {})
        assert status(response) == 401, f"{what}: {response.text}"
    assert status(oidc_server.http.get("/info/", headers=bearer(provider.token("admin", AUDIENCE)))) == 200


def test_oidc_roles_from_a_configured_claim(oidc_server, providers, tmp_path):
    provider = providers[0]
    token = {client: provider.token(client, AUDIENCE) for client in ("viewer", "annotator", "admin", "nobody")}
    assert status(oidc_server.http.get("/info/", headers=bearer(token["nobody"]))) == 403
    assert status(oidc_server.http.get("/auth/token/valid", headers=bearer(token["nobody"]))) == 200
    assert status(oidc_server.http.get("/info/", headers=bearer(token["viewer"]))) == 200
    assert status(save_strokes(oidc_server, tmp_path, token["viewer"])) == 403
    assert status(save_strokes(oidc_server, tmp_path, token["annotator"])) == 200
    assert status(upload_image(oidc_server, tmp_path, token["annotator"], "oidc_case")) == 403
    assert status(upload_image(oidc_server, tmp_path, token["admin"], "oidc_case")) == 200


def test_oidc_signing_key_rotation(oidc_server, providers):
    provider, _, keys = providers
    assert status(oidc_server.http.get("/info/", headers=bearer(provider.token("viewer", AUDIENCE)))) == 200
    provider.restart([private_jwk(rsa_key(), "key-2"), *keys])  # signs with key-2 from now on
    token = provider.token("viewer", AUDIENCE)
    assert jwt.get_unverified_header(token)["kid"] == "key-2"
    time.sleep(1.2)  # CMFNET_AUTH_KEY_REFRESH_SECONDS
    assert status(oidc_server.http.get("/info/", headers=bearer(token))) == 200


# -- every route has a rule ------------------------------------------------------------------------


def test_every_route_of_the_server_has_a_rule():
    """The real app's route table, walked in-process with authentication on (its login routes too)."""
    run = subprocess.run([sys.executable, "-m", "lib.server"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| `POST /infer/{model}` | user; annotator for a scribbles model |" in run.stdout
    assert "| `PUT /datastore/image` | admin |" in run.stdout


def test_a_new_route_without_a_rule_is_found():
    app = FastAPI()

    @app.post("/something/new")
    def new_route():
        return {}

    keys = [entry.key for entry in route_entries(app)]
    assert "POST /something/new" in keys and "POST /something/new" not in ROUTE_RULES
