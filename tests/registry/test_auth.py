"""login / logout, and push / pull with credentials: htpasswd basic auth, docker's and podman's
credential files, and the registry's token auth against a token server of our own."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

from tests.registry.conftest import (
    Cli,
    ImageSet,
    TokenServer,
    expect_error,
    store_state,
)

USER, PASSWORD = "alice", "wonderland"
def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def login(cli: Cli, host: str, password: str, check: bool = True):
    return cli.run(Path(cli.env["XDG_CONFIG_HOME"]) / "unused-store", "login", host, "-u", USER,
                   "--password-stdin", input=password + "\n", check=check)


def seed(cli: Cli, source: str, registry, name: str) -> None:
    """Copies an image into an authenticated registry with skopeo (not pyunion push: see
    test_push_with_basic_auth)."""
    cli.skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-creds",
               f"{USER}:{PASSWORD}", f"docker://{source}", f"docker://{registry.ref(name)}")


def test_htpasswd_login_pull_logout(cli: Cli, env: dict, images: ImageSet, make_registry,
                                    shared_registry, tmp_path: Path):
    registry = make_registry(htpasswd={USER: PASSWORD})
    seed(cli, shared_registry.ref("app:1.0"), registry, "app:1.0")
    host = registry.host
    auth_file = Path(env["PYUNION_AUTH_FILE"])
    store = tmp_path / "store"

    before = store_state(cli, store)
    anonymous = cli.pull(store, registry.ref("app:1.0"), check=False)
    expect_error(anonymous, rf"{host}.*authentication required.*pyunion login {host}")
    assert store_state(cli, store) == before

    wrong = login(cli, host, "not-the-password", check=False)
    message = expect_error(wrong, r"credentials")
    assert host in message
    assert "Login Succeeded" not in wrong.stdout
    assert not auth_file.exists()

    right = login(cli, host, PASSWORD)
    assert right.stdout.strip() == "Login Succeeded"
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    assert json.loads(auth_file.read_text()) == {"auths": {host: {"auth": basic(USER,
                                                                                 PASSWORD)}}}

    cli.pull(store, registry.ref("app:1.0"))
    assert cli.image_ids(store) == [images["app:1.0"].id]

    out = cli.run(store, "logout", host)
    assert out.stdout.strip() == f"Removing login credentials for {host}"
    assert json.loads(auth_file.read_text()) == {"auths": {}}
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    assert cli.run(store, "logout", host).stdout.strip() == f"Not logged in to {host}"

    other = tmp_path / "other-store"
    before = store_state(cli, other)
    refused = cli.pull(other, registry.ref("app:1.0"), check=False)
    expect_error(refused, r"authenticat")
    assert store_state(cli, other) == before


def test_push_with_basic_auth(cli: Cli, images: ImageSet, make_registry, tmp_path: Path):
    """pyunion push to an htpasswd registry, a few times (each push checks its blobs with
    several requests at once)."""
    registry = make_registry(htpasswd={USER: PASSWORD})
    login(cli, registry.host, PASSWORD)
    for i in range(4):
        result = cli.run(images.store, "push", "--image", "app:1.0",
                         registry.ref(f"basic-{i}:1.0"), check=False)
        assert result.returncode == 0, result.stderr
        cli.pull(tmp_path / f"store-{i}", registry.ref(f"basic-{i}:1.0"))
        assert cli.image_ids(tmp_path / f"store-{i}") == [images["app:1.0"].id]


def test_docker_and_podman_logins_are_honoured(cli: Cli, env: dict, images: ImageSet,
                                               make_registry, shared_registry, tmp_path: Path):
    registry = make_registry(htpasswd={USER: PASSWORD})
    seed(cli, shared_registry.ref("base:1.0"), registry, "base:1.0")
    docker_config = Path(env["DOCKER_CONFIG"]) / "config.json"
    docker_config.write_text(json.dumps(
        {"auths": {registry.host: {"auth": basic(USER, PASSWORD)}},
         "credsStore": "", "HttpHeaders": {"User-Agent": "docker"}}))
    cli.pull(tmp_path / "store", registry.ref("base:1.0"))
    assert cli.image_ids(tmp_path / "store") == [images["base:1.0"].id]
    assert not Path(env["PYUNION_AUTH_FILE"]).exists()

    # Wrong credentials in docker's file are an authentication error, not a crash.
    docker_config.write_text(json.dumps(
        {"auths": {f"http://{registry.host}": {"auth": basic(USER, "nope")}}}))
    before = store_state(cli, tmp_path / "store2")
    refused = cli.pull(tmp_path / "store2", registry.ref("base:1.0"), check=False)
    expect_error(refused, r"credentials")
    assert store_state(cli, tmp_path / "store2") == before

    # podman's auth file ($XDG_RUNTIME_DIR/containers/auth.json)
    docker_config.unlink()
    podman = Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    podman.parent.mkdir()
    podman.write_text(json.dumps({"auths": {registry.host: {"auth": basic(USER, PASSWORD)}}}))
    cli.pull(tmp_path / "store3", registry.ref("base:1.0"))
    assert cli.image_ids(tmp_path / "store3") == [images["base:1.0"].id]


def test_token_auth(cli: Cli, env: dict, images: ImageSet, make_registry,
                    token_server: TokenServer, tmp_path: Path):
    registry = make_registry(token=token_server)
    host = registry.host
    store = tmp_path / "store"

    before = store_state(cli, store)
    anonymous = cli.pull(store, registry.ref("app:1.0"), check=False)
    expect_error(anonymous, rf"token server refused anonymous access.*pyunion login {host}")
    assert store_state(cli, store) == before
    assert token_server.log and token_server.log[-1]["user"] is None

    wrong = login(cli, host, "not-the-password", check=False)
    expect_error(wrong, r"refused the credentials")
    assert not Path(env["PYUNION_AUTH_FILE"]).exists()

    assert login(cli, host, PASSWORD).stdout.strip() == "Login Succeeded"
    token_server.log.clear()
    cli.push(images.store, "app:1.0", registry.ref("app:1.0"))
    push_scopes = {s for entry in token_server.log for s in entry["scopes"]}
    assert "repository:app:pull,push" in push_scopes, token_server.log
    assert all(entry["user"] == USER for entry in token_server.log)

    token_server.log.clear()
    cli.pull(store, registry.ref("app:1.0"))
    assert cli.image_ids(store) == [images["app:1.0"].id]
    assert [s for entry in token_server.log for s in entry["scopes"]] == ["repository:app:pull"]
    assert {entry["service"] for entry in token_server.log} == {"pyunion-test-registry"}

    found = cli.run(store, "search", "--registry", host, "app").stdout.splitlines()
    assert found[1].split() == [f"{host}/app", "1.0"]
    assert any("registry:catalog:*" in entry["scopes"] for entry in token_server.log)
