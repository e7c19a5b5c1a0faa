"""`python -m lib.server`: the server's routes and the role each needs, as a Markdown table.

It starts the app in-process with authentication on (so MONAI Label's login routes are there
too) on an empty datastore, walks the route table as the app serves it, and exits 1 if a route
has no rule in lib/security/roles.py (such a route needs admin).
"""

import sys
import tempfile
from pathlib import Path

from fastapi.testclient import TestClient
from monailabel.config import settings

from lib.security.roles import ROUTE_RULES
from lib.server.route_table import route_entries

APP = Path(__file__).resolve().parents[2] / "apps" / "cmfnet"


def main() -> int:
    with tempfile.TemporaryDirectory() as studies:
        settings.MONAI_LABEL_AUTH_ENABLE = True
        settings.MONAI_LABEL_APP_DIR = str(APP)
        settings.MONAI_LABEL_STUDIES = studies
        settings.MONAI_LABEL_APP_CONF = {"models": "cmfnet", "auto_train": "false"}
        from monailabel.app import app

        with TestClient(app):  # runs the app's start-up: it adds its own routes
            entries = route_entries(app)
    keys = list(dict.fromkeys(entry.key for entry in entries))
    missing = [key for key in keys if key not in ROUTE_RULES]
    for key in keys:
        print(f"| `{key}` | {ROUTE_RULES.get(key, 'NO RULE: admin')} |")
    if missing:
        print(f"\n{len(missing)} route(s) without a rule in lib/security/roles.py: {missing}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
