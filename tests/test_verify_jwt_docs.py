"""docs/verify-jwt.md works: its Python, Node and nginx examples verify tokens a real zerogate
issued to an origin, and refuse a token for another audience or a tampered one; the audience
they are given (``zerogate app show``) survives renaming the application in the API."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.request import Request, urlopen

import jwt
import pytest

from harness import free_port, wait_for, wait_for_port
from zerogate.admin.service import Actor, AdminService
from zerogate.model.objects import default_audience
from zg_harness import HttpBrowser, ThreadedOutbox, Zerogate, open_store

pytestmark = pytest.mark.e2e

DOC = Path(__file__).parent.parent / "docs" / "verify-jwt.md"
NODE_MODULES = Path(__file__).parent / "oidc_provider" / "node_modules"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


class _Capture(BaseHTTPRequestHandler):
    """The origin: keeps the last Zerogate-Jwt-Assertion it was sent."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Capture.seen.append(self.headers.get("Zerogate-Jwt-Assertion", ""))
        self.send_response(200)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args: Any) -> None:
        pass


def serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def zg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zerogate]:
    origin = serve(_Capture)
    box = ThreadedOutbox().start()
    zerogate = Zerogate(tmp_path_factory.mktemp("zg"), free_port(), box.port)
    zerogate.apply(
        f"""
identity_providers: [{{name: otp, type: onetimepin}}]
service_tokens: [{{name: ci-bot, duration: 24h}}]
applications:
  - name: api
    domain: api.localhost
    origin: http://127.0.0.1:{origin.server_address[1]}
    policies: [{{name: ci, decision: service_auth, include: [{{service_token: [ci-bot]}}]}}]
  - name: other
    domain: other.localhost
    origin: http://127.0.0.1:{origin.server_address[1]}
    policies: [{{name: ci, decision: service_auth, include: [{{service_token: [ci-bot]}}]}}]
"""
    )
    zerogate.start()
    try:
        yield zerogate
    finally:
        zerogate.stop()
        box.stop()
        origin.shutdown()


def jwks_mirror(zg: Zerogate) -> ThreadingHTTPServer:
    """``/.zerogate/certs`` of the running server, on a plain local address (the examples'
    ``ISSUER`` is ``https://auth.localhost:PORT``, which this machine cannot reach as such)."""

    class Mirror(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            request = Request(
                f"http://127.0.0.1:{zg.port}/.zerogate/certs", headers={"Host": zg.portal}
            )
            with urlopen(request, timeout=10) as answer:
                body = answer.read()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return serve(Mirror)


async def assertion_for(zg: Zerogate, host: str, headers: dict[str, str]) -> str:
    async def fresh() -> str | None:
        before = len(_Capture.seen)
        async with HttpBrowser() as client:
            reply = await client.get(zg.url(host, "/"), headers=headers)
        if reply.status != 200 or len(_Capture.seen) == before:
            return None
        return _Capture.seen[-1]

    return await wait_for(fresh, timeout=15, what=f"a token for {host}")


def tampered(token: str) -> str:
    head, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "service-token:someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


async def test_the_documented_examples_verify_real_tokens(zg: Zerogate, tmp_path: Path) -> None:
    async with open_store(zg) as store:
        service = AdminService(store)
        credential, secret = await service.rotate_service_token("ci-bot", Actor("test"))
    headers = {"Zerogate-Client-Id": credential.client_id, "Zerogate-Client-Secret": secret}
    before = await assertion_for(zg, "api.localhost", headers)
    other_app = await assertion_for(zg, "other.localhost", headers)

    # rename the application through the admin service (as the panel and API do)
    async with open_store(zg) as store:
        service = AdminService(store)
        item = await service.get("applications", "api")
        assert item.spec.get("audience") is None  # applied from a file: derived from its name
        await service.update(
            "applications",
            "api",
            {**item.spec, "name": "api-v2"},
            version=item.version,
            actor=Actor("test"),
        )
    shown = await asyncio.to_thread(zg.cli, "app", "show", "api-v2", "-c", str(zg.config), "--json")
    assert shown.returncode == 0, shown.stderr
    app = json.loads(shown.stdout)
    assert app["audience"] == default_audience("api"), "the rename kept the audience"
    assert app["issuer"] == f"https://{zg.portal}"
    assert app["jwks_url"] == f"https://{zg.portal}/.zerogate/certs"

    async def renamed_token() -> str | None:
        token = await assertion_for(zg, "api.localhost", headers)
        unverified = jwt.decode(token, options={"verify_signature": False})
        return token if unverified["common_name"] == "ci-bot" and token != before else None

    token = await wait_for(renamed_token, timeout=15, what="a token after the rename")

    mirror = jwks_mirror(zg)
    jwks_url = f"http://127.0.0.1:{mirror.server_address[1]}/.zerogate/certs"
    try:
        # ---- Python
        namespace: dict[str, Any] = {}
        exec(blocks("python")[0], namespace)
        namespace.update(
            ISSUER=app["issuer"], AUDIENCE=app["audience"], jwks=jwt.PyJWKClient(jwks_url)
        )
        verify = namespace["verify"]
        claims = verify(token)
        assert claims["sub"] == "service-token:ci-bot" and claims["type"] == "app"
        assert verify(before)["aud"] == [app["audience"]], "same audience before the rename"
        for bad in (other_app, tampered(token), token[:-4] + "AAAA"):
            with pytest.raises(jwt.PyJWTError):
                verify(bad)

        # ---- Node
        node = shutil.which("node")
        assert node is not None, "node is needed for the Node example"
        work = tmp_path / "node"
        work.mkdir()
        (work / "node_modules").symlink_to(NODE_MODULES.resolve())
        script = (
            blocks("javascript")[0]
            .replace("https://auth.example.com", app["issuer"])
            .replace("0123456789abcdef0123456789abcdef", app["audience"])
            .replace("`${ISSUER}/.zerogate/certs`", json.dumps(jwks_url))
        )
        script += (
            "\ntry { console.log(JSON.stringify(await verify(process.argv[2]))); }"
            "\ncatch (e) { console.error(String(e)); process.exit(3); }\n"
        )
        (work / "verify.mjs").write_text(script)

        def run_node(text: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [node, "verify.mjs", text],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )

        good, forged, foreign = await asyncio.gather(
            *(asyncio.to_thread(run_node, t) for t in (token, tampered(token), other_app))
        )
        assert good.returncode == 0, good.stderr
        assert json.loads(good.stdout)["sub"] == "service-token:ci-bot"
        assert forged.returncode == 3 and "signature" in forged.stderr.lower()
        assert foreign.returncode == 3 and "aud" in foreign.stderr

        # ---- nginx: auth_request to the documented verifier
        await nginx_example(tmp_path, app, jwks_url, token, other_app)
    finally:
        mirror.shutdown()


async def nginx_example(
    tmp_path: Path, app: dict[str, Any], jwks_url: str, token: str, foreign: str
) -> None:
    work = tmp_path / "nginx"
    work.mkdir()
    verifier_port, nginx_port = free_port(), free_port()
    python_example, verifier = blocks("python")[0], blocks("python")[1]
    program = python_example.replace("https://auth.example.com", app["issuer"]).replace(
        "0123456789abcdef0123456789abcdef", app["audience"]
    ).replace('f"{ISSUER}/.zerogate/certs"', json.dumps(jwks_url)) + verifier.replace(
        "9901", str(verifier_port)
    )
    (work / "verifier.py").write_text(program)

    class Application(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (self.headers.get("X-Verified-User") or "nobody").encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    application = serve(Application)
    (nginx_conf,) = blocks("nginx")
    server = (
        nginx_conf.replace("listen 8080;", f"listen 127.0.0.1:{nginx_port};")
        .replace("127.0.0.1:3000", f"127.0.0.1:{application.server_address[1]}")
        .replace("127.0.0.1:9901", f"127.0.0.1:{verifier_port}")
    )
    (work / "nginx.conf").write_text(
        f"daemon off;\npid {work}/nginx.pid;\nerror_log {work}/error.log warn;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n access_log off;\n client_body_temp_path {work}/body;\n"
        f" proxy_temp_path {work}/proxy;\n fastcgi_temp_path {work}/fastcgi;\n"
        f" uwsgi_temp_path {work}/uwsgi;\n scgi_temp_path {work}/scgi;\n{server}\n}}\n"
    )
    verifier_proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, str(work / "verifier.py")],
        cwd=work,
        env=dict(os.environ),
    )
    argv = [NGINX, "-p", str(work), "-e", str(work / "error.log"), "-c", str(work / "nginx.conf")]
    nginx = await asyncio.to_thread(subprocess.Popen, argv, cwd=work)
    try:
        await asyncio.to_thread(wait_for_port, verifier_port, verifier_proc)
        await asyncio.to_thread(wait_for_port, nginx_port, nginx)

        async def get(assertion: str | None) -> tuple[int, str]:
            headers = {"Zerogate-Jwt-Assertion": assertion} if assertion else {}
            async with HttpBrowser() as client:
                reply = await client.get(f"http://127.0.0.1:{nginx_port}/", headers=headers)
            return reply.status, reply.text

        assert await get(token) == (200, "service-token:ci-bot")
        assert (await get(foreign))[0] == 401
        assert (await get(tampered(token)))[0] == 401
        assert (await get(None))[0] == 401
    finally:
        for proc in (nginx, verifier_proc):
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)
        application.shutdown()
