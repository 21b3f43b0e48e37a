"""``/docs`` works offline: Swagger UI's page references only this server, and its assets answer."""

import re

from fastapi.testclient import TestClient

from mnist_cnn.folder import save_model
from mnist_cnn.models import create_model
from mnist_cnn.serve import Settings, create_app


def test_docs_page_uses_only_local_assets(tmp_path):
    run = save_model(tmp_path / "m", create_model("fast"), {"architecture": "fast"})
    with TestClient(create_app(run, Settings(runtime="torch"))) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        assert re.findall(r"https?://[^\s\"')]+", page.text) == []  # no CDN: renders without internet
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ['"]([^'"]+)['"]""", page.text)
        urls = {a or b for a, b in urls}
        assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/openapi.json"} <= urls, urls
        for url in urls:
            r = client.get(url)
            assert r.status_code == 200, url
        assert client.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
        assert client.get("/docs/assets/index.html").status_code == 404
        assert client.get("/docs/assets/..%2Fapp.py").status_code == 404
        assert client.get("/redoc").status_code == 404  # ReDoc loads from a CDN: not offered
