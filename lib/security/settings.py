"""Security settings: MONAI Label's `MONAI_LABEL_AUTH_*` plus four of ours.

MONAI Label's (read from its settings object, so its `.env` file and environment apply):
`MONAI_LABEL_AUTH_ENABLE` (off by default), `MONAI_LABEL_AUTH_REALM_URI` (a Keycloak-style realm
whose JSON carries the RSA `public_key`), `MONAI_LABEL_AUTH_TIMEOUT`, `MONAI_LABEL_AUTH_CLIENT_ID`,
`MONAI_LABEL_AUTH_TOKEN_ROLES` (the roles claim; `#` separates nested keys, default
`realm_access#roles`), `MONAI_LABEL_AUTH_TOKEN_USERNAME|EMAIL|NAME` and the role names.

Ours (environment or `.env`):

| variable | default | meaning |
| --- | --- | --- |
| `CMFNET_AUTH_ISSUER` | empty | an OpenID Connect issuer: keys from its JWKS (discovery), not a realm |
| `CMFNET_AUTH_AUDIENCE` | `MONAI_LABEL_AUTH_CLIENT_ID` | a token's `aud` must contain it (or its `azp` be it) |
| `CMFNET_AUTH_KEY_REFRESH_SECONDS` | `30` | fetch the keys again (rotation) at most this often |
| `CMFNET_CORS_ORIGINS` | empty | sites (`https://host[:port]`, comma-separated) whose pages may call the API |

`CMFNET_CORS_ORIGINS` stands in for MONAI Label's `MONAI_LABEL_CORS_ORIGINS`, with which
`monailabel start_server` 0.8.5 does not start (it fails to log the setting as JSON).
"""

from pydantic_settings import BaseSettings, SettingsConfigDict


class CmfnetSecuritySettings(BaseSettings):
    CMFNET_AUTH_ISSUER: str = ""
    CMFNET_AUTH_AUDIENCE: str = ""
    CMFNET_AUTH_KEY_REFRESH_SECONDS: float = 30.0
    CMFNET_CORS_ORIGINS: str = ""

    @property
    def cors_origins(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.CMFNET_CORS_ORIGINS.split(",") if origin.strip()]

    model_config = SettingsConfigDict(env_file=".env", case_sensitive=True, extra="ignore")
