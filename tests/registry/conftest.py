"""Fixtures for the registry tests: real registries, real images, the real ``pyunion`` CLI.

* ``Registry``: one ``docker-registry serve`` (CNCF distribution 2.8) on 127.0.0.1, with its
  own config and filesystem storage; anonymous, htpasswd basic auth, or token auth against a
  ``TokenServer`` written here (RS256 JWTs signed by ``openssl``, the signing certificate in the
  JWT's ``x5c`` header and in the registry's ``rootcertbundle``). Its stdout is the access log
  (``"GET /v2/... HTTP/1.1" 200 1234``), parsed by ``requests()``.
* ``make_registry`` (per test): starts registries and always stops them (terminate, then kill),
  each by the pid it started.
* ``images`` (session): busybox images in a source store: ``base:1.0`` by ``pyunion import``;
  ``app:1.0``, ``app:2.0`` and ``big:1.0`` (a 50 MiB random layer) = base + one layer each,
  made with umoci on ``pyunion save --format oci-dir`` and loaded back with ``pyunion load``.
* ``shared_registry`` (session): anonymous, holding ``base:1.0``, ``app:1.0``, ``app:2.0``.
* ``cli``: runs ``pyunion --root STORE ...`` with an isolated environment (own auth file,
  empty $DOCKER_CONFIG and $XDG_RUNTIME_DIR, no registries.conf), output through files.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import mounts, treesnap
from tests.cli_helpers import TEST_NETWORK, run_through_files

PYUNION = [sys.executable, "-m", "unionfs.image.cli"]
REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
BUSYBOX = "/bin/busybox"
RUN_TIMEOUT = 90.0
ERROR_PREFIX = "pyunion: error: "
BIG_LAYER_BYTES = 50 << 20
TOKEN_ISSUER = "pyunion-test-issuer"
TOKEN_SERVICE = "pyunion-test-registry"
_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) '
                          r'(?P<size>\d+|-)')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the environment


def isolated_env(base: Path) -> dict[str, str]:
    """The caller's environment without PYUNION_* and proxy settings, with private config dirs:
    the host's logins (docker, podman) and registry settings are never read."""
    for name in ("auth", "docker", "run", "config"):
        (base / name).mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYUNION_") and "proxy" not in k.lower()}
    env.update({
        "PYUNION_AUTH_FILE": str(base / "auth" / "auth.json"),
        "DOCKER_CONFIG": str(base / "docker"),
        "XDG_RUNTIME_DIR": str(base / "run"),
        "XDG_CONFIG_HOME": str(base / "config"),
        "PYUNION_REGISTRIES_CONF": str(base / "registries.json"),
        **TEST_NETWORK,
    })
    return env


def run_command(cmd: list[str], *, env: dict[str, str] | None = None, input: str | None = None,
                timeout: float = RUN_TIMEOUT, check: bool = True,
                cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs ``cmd`` with output through files (a daemon keeping stdout cannot hang us)."""
    status, out, err = run_through_files(cmd, timeout=timeout, input=input, env=env,
                                         cwd=cwd or REPO_ROOT)
    result = subprocess.CompletedProcess(cmd, status, out.decode(errors="replace"),
                                         err.decode(errors="replace"))
    if check:
        assert result.returncode == 0, (
            f"{' '.join(map(str, cmd))} exited {result.returncode}:\n"
            f"{result.stderr.strip()}\n{result.stdout.strip()}")
    return result


@dataclass
class Cli:
    """``pyunion --root STORE ...`` in an isolated environment."""

    env: dict[str, str]

    def command(self, store: Path, *args: Any) -> list[str]:
        return [*PYUNION, "--root", str(store), *(str(a) for a in args)]

    def run(self, store: Path, *args: Any, check: bool = True, input: str | None = None,
            timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
        return run_command(self.command(store, *args), env=self.env, input=input,
                           timeout=timeout, check=check)

    def start(self, store: Path, *args: Any, out_dir: Path) -> subprocess.Popen:
        """In the background, in its own session, output to files in ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "stdout", "wb") as out, open(out_dir / "stderr", "wb") as err:
            return subprocess.Popen(self.command(store, *args), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, env=self.env, cwd=REPO_ROOT,
                                    start_new_session=True)

    def tool(self, *cmd: Any, check: bool = True) -> subprocess.CompletedProcess:
        """skopeo, umoci, ... with the same environment."""
        return run_command([str(c) for c in cmd], env=self.env, check=check)

    def skopeo(self, *args: Any, check: bool = True) -> subprocess.CompletedProcess:
        return self.tool("skopeo", "--insecure-policy", *args, check=check)

    # ------------------------------------------------------------------ queries

    def inspect(self, store: Path, image: str) -> dict[str, Any]:
        data = json.loads(self.run(store, "inspect", image).stdout)
        assert isinstance(data, list) and len(data) == 1, data
        return data[0]

    def image_ids(self, store: Path) -> list[str]:
        return self.run(store, "images", "-q", "--no-trunc").stdout.split()

    def images_rows(self, store: Path) -> list[dict[str, str]]:
        out = self.run(store, "images", "--format", "json", "--no-trunc").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def pull(self, store: Path, ref: str, *opts: str, check: bool = True
             ) -> subprocess.CompletedProcess:
        return self.run(store, "pull", *opts, ref, check=check)

    def push(self, store: Path, image: str, target: str) -> subprocess.CompletedProcess:
        return self.run(store, "push", "--image", image, target)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return isolated_env(tmp_path / "env")


@pytest.fixture
def cli(env) -> Cli:
    return Cli(env)


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


def expect_error(result: subprocess.CompletedProcess, cause: str) -> str:
    """Exit status 1, and the last stderr line is the only ``pyunion: error: ...`` line (no
    traceback), matching the case-insensitive regular expression ``cause``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (
        f"expected exit 1, got {result.returncode}; stderr:\n{result.stderr.strip()}")
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and lines[-1] == errors[0], (
        f"expected one final '{ERROR_PREFIX}...' line, got:\n{result.stderr.strip()}")
    assert "Traceback" not in result.stderr, result.stderr
    message = errors[0][len(ERROR_PREFIX):]
    assert re.search(cause, message, re.IGNORECASE), (
        f"error message does not mention /{cause}/: {message!r}")
    return message


def store_state(cli: Cli, store: Path) -> dict[str, Any]:
    """What a failing command must not change: images, tags, repo digests, layer dirs, blobs."""
    rows = sorted((r["Repository"], r["Tag"], r["ID"], r["Digest"])
                  for r in cli.images_rows(store))  # every image has a row, tagged or not
    layers = store / "layers"
    blobs = store / "blobs" / "sha256"
    return {
        "rows": rows,
        "layers": sorted(os.listdir(layers)) if layers.is_dir() else [],
        "blobs": sorted(os.listdir(blobs)) if blobs.is_dir() else [],
    }


# --------------------------------------------------------------------------- registries


@dataclass
class Request:
    method: str
    uri: str
    status: int
    size: int


class Registry:
    """One ``docker-registry serve`` on 127.0.0.1:PORT with its own config and storage."""

    def __init__(self, workdir: Path, *, htpasswd: dict[str, str] | None = None,
                 token: TokenServer | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.storage = workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.access_log = workdir / "access.log"
        self.error_log = workdir / "registry.err"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "error"},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)},
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "pyunion-registry-tests"},
        }
        if htpasswd is not None:
            lines = [run_command(["htpasswd", "-Bbn", user, password]).stdout.strip()
                     for user, password in htpasswd.items()]
            path = workdir / "htpasswd"
            path.write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "test", "path": str(path)}}
        if token is not None:
            config["auth"] = {"token": {"realm": token.realm, "service": TOKEN_SERVICE,
                                        "issuer": TOKEN_ISSUER,
                                        "rootcertbundle": str(token.cert_path)}}
        self.config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ref(self, name: str) -> str:
        return f"{self.host}/{name}"

    def start(self, timeout: float = 15.0) -> Registry:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.access_log, "ab") as out, open(self.error_log, "ab") as err:
            self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(self.config_path)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited {self.proc.returncode}: "
                                   f"{self.error_log.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v2/")
                conn.getresponse().read()
                conn.close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"docker-registry on {self.host} did not answer "
                                       f"GET /v2/ in {timeout}s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _log_size(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def _settle(self, quiet: float = 0.1, limit: float = 3.0) -> int:
        """The access log's size once it stopped growing: the registry writes a request's line
        after the response, so a client can be done before its last line is there."""
        deadline = time.monotonic() + limit
        size = self._log_size()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self._log_size()
            if now == size:
                break
            size = now
        return size

    def log_mark(self) -> int:
        return self._settle()

    def requests(self, since: int = 0) -> list[Request]:
        """The access log (from byte offset ``since``) as parsed requests."""
        self._settle()
        with open(self.access_log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        found = []
        for line in text.splitlines():
            m = _ACCESS_LINE.search(line)
            if m:
                size = 0 if m["size"] == "-" else int(m["size"])
                found.append(Request(m["method"], m["uri"], int(m["status"]), size))
        return found

    def blob_data(self, digest: str) -> Path:
        hex_part = digest.partition(":")[2]
        return (self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_part[:2]
                / hex_part / "data")


@pytest.fixture
def make_registry(tmp_path):
    """Factory: ``make_registry(name="registry", htpasswd=None, token=None)`` -> a started
    ``Registry``; every registry started here is stopped at teardown."""
    started: list[Registry] = []

    def make(name: str = "registry", **auth: Any) -> Registry:
        registry = Registry(tmp_path / name, **auth)
        started.append(registry)
        return registry.start()

    try:
        yield make
    finally:
        for registry in started:
            registry.stop()


# --------------------------------------------------------------------------- token auth


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A docker token server (the registry's ``auth: token`` realm) on 127.0.0.1.

    ``GET /token?service=...&scope=type:name:actions`` with HTTP basic credentials of one of
    ``users`` answers ``{"token": JWT, "expires_in": 300}``, granting every action asked for.
    The JWT is RS256, signed with openssl by a key whose self-signed certificate is both the
    registry's rootcertbundle and the JWT header's ``x5c`` chain (distribution 2.8 accepts a
    signing key named by ``x5c``, ``jwk`` or a libtrust ``kid``). Each request is recorded.
    """

    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.users = users
        self.key_path = workdir / "token-key.pem"
        self.cert_path = workdir / "token-cert.pem"
        run_command(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                     "-keyout", str(self.key_path), "-out", str(self.cert_path), "-days", "2",
                     "-subj", "/CN=pyunion test token issuer"])
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert_path), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key_path)],
                                   input=signing_input.encode(), capture_output=True,
                                   check=True).stdout
        return signing_input + "." + _b64url(signature)

    def _user(self, handler: http.server.BaseHTTPRequestHandler) -> str | None:
        header = handler.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(user) == password:
                return user
        return None

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(url.query)
        user = self._user(handler)
        scopes = [s for value in query.get("scope", []) for s in value.split()]
        with self._lock:
            self.log.append({"user": user, "scopes": scopes,
                             "service": query.get("service", [""])[0],
                             "authorization": "Authorization" in handler.headers})
        if url.path != "/token":
            handler.send_error(404)
            return
        if user is None:
            body = b'{"details": "unauthorized"}'
            handler.send_response(401)
            handler.send_header("WWW-Authenticate", 'Basic realm="pyunion test tokens"')
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) >= 3:
                access.append({"type": parts[0], "name": ":".join(parts[1:-1]),
                               "actions": parts[-1].split(",")})
        now = int(time.time())
        claims = {"iss": TOKEN_ISSUER, "sub": user, "aud": TOKEN_SERVICE, "iat": now,
                  "nbf": now - 10, "exp": now + 300, "jti": f"{now}-{random.random()}",
                  "access": access}
        token = self.sign(claims)
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300,
                           "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                      time.gmtime(now))}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


@pytest.fixture
def token_server(tmp_path) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path / "token", {"alice": "wonderland"})
    try:
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- images


@dataclass
class Image:
    name: str            # the name in the source store, e.g. "app:1.0"
    id: str              # sha256:... (the config digest)
    manifest: str        # the manifest digest as stored (and pushed verbatim)
    diff_ids: list[str] = field(default_factory=list)


@dataclass
class ImageSet:
    store: Path                      # the source store: base:1.0, app:1.0, app:2.0, big:1.0
    layout: Path                     # the OCI layout they were made in
    rootfs: Path                     # the busybox rootfs the base was imported from
    images: dict[str, Image]

    def __getitem__(self, name: str) -> Image:
        return self.images[name]


def make_rootfs(root: Path) -> None:
    """A small busybox rootfs with a few odd modes and owners."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "ls", "cat", "echo", "true"):
        os.symlink("busybox", root / "bin" / applet)
    etc = root / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:"
                                "/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nuser:x:1000:\n")
    (etc / "secret").write_text("s3cret\n")
    os.chmod(etc / "secret", 0o640)
    os.chown(etc / "secret", 0, 42)
    os.symlink("/etc/passwd", etc / "passwd.link")
    home = root / "home" / "user"
    home.mkdir(parents=True)
    (home / ".profile").write_text("export PS1='$ '\n")
    for path in (home, home / ".profile"):
        os.chown(path, 1000, 1000)
    os.chmod(home, 0o750)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "empty").touch()
    (root / "var" / "log").mkdir(parents=True)


def big_content() -> bytes:
    """The 50 MiB of /opt/big.bin in big:1.0 (random, so it does not compress)."""
    return random.Random(1234).randbytes(BIG_LAYER_BYTES)


def _umoci_layer(layout: Path, work: Path, source_tag: str, new_tag: str, files: dict) -> None:
    """``new_tag`` = ``source_tag`` + one layer writing ``files`` ({relpath: bytes or
    (bytes, mode)})."""
    bundle = work / f"bundle-{new_tag}"
    run_command(["umoci", "unpack", "--image", f"{layout}:{source_tag}", str(bundle)])
    rootfs = bundle / "rootfs"
    for rel, content in files.items():
        path = rootfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data, mode = content if isinstance(content, tuple) else (content, 0o644)
        path.write_bytes(data)
        path.chmod(mode)
    run_command(["umoci", "repack", "--image", f"{layout}:{new_tag}", str(bundle)])
    shutil.rmtree(bundle)


def build_images(workdir: Path, cli: Cli) -> ImageSet:
    store = workdir / "source-store"
    rootfs = workdir / "rootfs"
    make_rootfs(rootfs)
    cli.run(store, "import", "-q", "-c", 'CMD ["/bin/sh"]', "-m", "busybox base", rootfs,
            "base:1.0")
    layout = workdir / "layout"
    cli.run(store, "save", "--format", "oci-dir", "-o", layout, "base:1.0")
    index = json.loads((layout / "index.json").read_text())
    base_tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    app_run = b"#!/bin/sh\necho app\n"
    _umoci_layer(layout, workdir, base_tag, "app1",
                 {"etc/app.conf": b"version=1\n", "opt/app/run": (app_run, 0o755)})
    _umoci_layer(layout, workdir, base_tag, "app2",
                 {"etc/app.conf": b"version=2\n", "opt/app/run": (app_run + b"echo two\n", 0o755),
                  "opt/app/data/two.txt": b"two\n"})
    _umoci_layer(layout, workdir, base_tag, "big",
                 {"opt/big.bin": big_content()})
    names = {base_tag: "docker.io/library/base:1.0", "app1": "docker.io/library/app:1.0",
             "app2": "docker.io/library/app:2.0", "big": "docker.io/library/big:1.0"}
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        annotations = entry.setdefault("annotations", {})
        annotations["io.containerd.image.name"] = names[
            annotations["org.opencontainers.image.ref.name"]]
    (layout / "index.json").write_text(json.dumps(index))
    cli.run(store, "load", "-q", "-i", layout)
    images = {}
    for name in ("base:1.0", "app:1.0", "app:2.0", "big:1.0"):
        info = cli.inspect(store, name)
        images[name] = Image(name, info["Id"], info["ManifestDigest"], info["RootFS"]["Layers"])
    return ImageSet(store, layout, rootfs, images)


@pytest.fixture(scope="session")
def session_env(tmp_path_factory) -> dict[str, str]:
    return isolated_env(tmp_path_factory.mktemp("session-env"))


@pytest.fixture(scope="session")
def images(tmp_path_factory, session_env) -> ImageSet:
    return build_images(tmp_path_factory.mktemp("images"), Cli(session_env))


@pytest.fixture(scope="session")
def shared_registry(tmp_path_factory, images, session_env) -> Iterator[Registry]:
    """An anonymous registry holding base:1.0, app:1.0 and app:2.0 (pushed by pyunion).

    Tests only read it (or push to repositories of their own)."""
    registry = Registry(tmp_path_factory.mktemp("shared-registry"))
    try:
        registry.start()
        cli = Cli(session_env)
        for name in ("base:1.0", "app:1.0", "app:2.0"):
            cli.push(images.store, name, registry.ref(name))
        yield registry
    finally:
        registry.stop()


# --------------------------------------------------------------------------- rootfs views


def rootfs_view(root: Path) -> dict[str, dict[str, Any]]:
    """Names, types, modes, owners, sizes, contents and link targets below ``root``."""
    snap = treesnap.snapshot(root)
    keys = ("type", "mode", "uid", "gid", "size", "sha256", "target", "rdev")
    return {path: {k: entry[k] for k in keys if k in entry}
            for path, entry in snap["entries"].items()}


def assert_same_rootfs(a: dict, b: dict, what: str) -> None:
    diffs = []
    for path in sorted(set(a) | set(b)):
        if a.get(path) != b.get(path):
            diffs.append(f"{path}: {a.get(path)} != {b.get(path)}")
    assert not diffs, f"{what} differ:\n  " + "\n  ".join(diffs[:20])


@contextlib.contextmanager
def mounted_image(cli: Cli, store: Path, image: str, mnt: Path) -> Iterator[Path]:
    mnt.mkdir(parents=True, exist_ok=True)
    cli.run(store, "mount-image", image, mnt)
    try:
        yield mnt
    finally:
        cli.run(store, "umount-image", mnt, check=False)
        if mounts.is_mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def wait_for(predicate, timeout: float, interval: float = 0.002, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def kill_process(proc: subprocess.Popen) -> None:
    """SIGKILL the process we started (by its pid) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

