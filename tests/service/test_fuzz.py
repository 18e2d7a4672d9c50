"""Property-based fuzzing of the OpenAPI schema: no request makes the service answer 5xx."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from service.app import create_app
from service.settings import ServiceSettings

# The schema is loaded at import, so the app (no workers: jobs stay queued) is built here.
_DATA = tempfile.TemporaryDirectory(prefix="heygem-fuzz-")
_ROOT = Path(_DATA.name)
(_ROOT / "media").mkdir()
APP = create_app(
    ServiceSettings(
        data_dir=_ROOT / "data",
        pipeline={"cache_dir": _ROOT / "cache"},
        media_root=_ROOT / "media",
        workers=0,
        max_queue=1000,
        max_upload_bytes=2**20,
    )
)
# /readyz answers 503 by design while no worker is warm; that is not a server error.
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path="/readyz")


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
