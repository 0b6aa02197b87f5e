"""A real `saviorrec serve` process on a free port over a real local store (sqlite).

The serving world of tests/test_serving_fixture.py is applied and materialised into the local
profile; its config is written to a YAML file and served by the command line, as a user would.
Checked over real HTTP: a curl-style POST (form Content-Type), the body limit before any byte
is read, /readyz when the sqlite file goes away and comes back, the command's help, and
schemathesis (--checks all) over every operation of the running service.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import free_port, serve_process
from test_serving_fixture import REDIS_ENV, build_world, world_config

from saviorrec.cli import build_parser
from saviorrec.config import REPO_ROOT, Config, load_config
from saviorrec.lake import Lake

BODY = {"user_id": 1, "item_ids": [5, 1, 12, 3]}
MAX_BODY_BYTES = 1_048_576


@dataclass
class Service:
    cfg: Config
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sqlite(self) -> Path:
        return Lake.from_config(self.cfg).feast_data / "online.db"

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("service")
    cfg = load_config(REPO_ROOT / "configs" / "movielens.yaml").with_overrides(
        run={"root": str(root / "run")})
    cfg = world_config(cfg, profile="local", redis_env=REDIS_ENV)
    build_world(cfg)
    config = root / "serving.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert cfg.serving.max_body_bytes == MAX_BODY_BYTES  # the default is what is served
    port, log = free_port(), root / "serve.log"
    served = Service(cfg, port, log)
    with serve_process(config, port, log, lambda: served.get("/healthz")[0] == 200, timeout_s=180):
        yield served


def test_a_curl_style_post_is_ranked(service: Service) -> None:
    """urllib, like `curl -d`, sends Content-Type: application/x-www-form-urlencoded."""
    request = urllib.request.Request(service.url + "/rank", data=json.dumps(BODY).encode())
    assert request.get_method() == "POST"
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        body = json.load(response)
    assert request.get_header("Content-type") == "application/x-www-form-urlencoded"
    assert sorted(r["item_id"] for r in body["items"]) == sorted(BODY["item_ids"])
    scores = [r["score"] for r in body["items"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1


def read_response(sock: socket.socket) -> tuple[int, dict]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


def test_a_declared_oversize_body_is_refused_before_it_is_sent(service: Service) -> None:
    """50 MB announced, 1 byte sent: the 413 comes back at once. Without the limit the server
    would wait for the rest of the body (the socket times out)."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(b"POST /rank HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 50000000\r\n\r\n{")
        began = time.monotonic()
        status, body = read_response(sock)
    assert status == 413 and time.monotonic() - began < 5
    assert f"serving.max_body_bytes = {MAX_BODY_BYTES} bytes" in body["detail"]


def test_a_chunked_oversize_body_is_refused(service: Service) -> None:
    """No Content-Length: counted as it arrives; one byte over the limit is refused."""
    chunks = [b" " * 65536] * (MAX_BODY_BYTES // 65536) + [b" "]
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(b"POST /rank HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n")
        status, body = read_response(sock)
    assert status == 413
    assert "serving.max_body_bytes" in body["detail"]


def test_readyz_fails_while_the_sqlite_file_is_gone(service: Service) -> None:
    """Feast's open connection still reads a removed file: /readyz stayed ok before."""
    assert service.get("/readyz") == (200, {
        "ready": True, "checks": {"store": "ok", "rqvae_version": "ok", "model": "ok"},
        "store": f"sqlite online store at {service.sqlite}"})
    aside = service.sqlite.with_suffix(".aside")
    service.sqlite.rename(aside)
    try:
        status, body = service.get("/readyz")
        assert status == 503 and body["ready"] is False
        assert body["checks"]["store"] == (f"sqlite online store at {service.sqlite} cannot be "
                                           "read: the file does not exist")
        assert service.get("/healthz")[0] == 200  # the process is up all along
    finally:
        aside.rename(service.sqlite)
    assert service.get("/readyz")[0] == 200


def test_serve_help_names_host_port_and_profile(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--host HOST address to listen on (default: the config's serving.host, " \
           "127.0.0.1 if unset" in text
    assert "--port PORT TCP port (default: the config's serving.port, 8080 if unset; " \
           "TF-Serving's are 8500 gRPC and 8501 REST)" in text
    assert "--profile {local,production} online store: local reads the run's sqlite file" in text
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.profile) == (None, None, None)  # the config decides


def test_schemathesis_finds_nothing(service: Service, tmp_path: Path) -> None:
    """Every operation, every check: no 5xx, no undocumented status or content type, no
    response off its schema, no schema-valid request refused, no invalid one accepted."""
    command = [str(Path(sys.executable).parent / "schemathesis"), "run", "--checks", "all",
               "--max-examples", "100", "--seed", "27", "--workers", "1",
               "--generation-database", "none", "--no-color", f"{service.url}/openapi.json"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "4 selected / 4 total" in output and "No issues found" in output, output
