"""``run`` and ``create`` pull a missing image (``--pull missing|always|never|newer``, podman's
meanings), and ``run`` exits as docker documents: 125 when pyunion itself fails, 126 when the
command cannot be invoked, 127 when it is not found, otherwise the process's own status
(``create`` and ``start`` exit 1 on failure, as docker's do). Every failure is one
``pyunion: error: ...`` line, never the runtime's raw log line.

A real registry (``docker-registry`` on 127.0.0.1, fed by ``pyunion push``), real runc, real
pyunion mounts; the stores are cleaned up and checked for leftovers as ``px``'s are.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.container.conftest import IMAGE, Pyunion, Result, _teardown, mounts_under
from tests.registry.conftest import ERROR_PREFIX, Registry, isolated_env

pytestmark = pytest.mark.timeout(240)

V2 = "busybox:v2"  # busybox:test with FOO=v2 (it has FOO=bar)
ECHO_FOO = ("sh", "-c", "echo $FOO")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def sources(base_tar, tmp_path_factory) -> Iterator[Pyunion]:
    """The store images are pushed from: busybox:test, and busybox:v2 committed from it."""
    base = tmp_path_factory.mktemp("pull-sources")
    store = Pyunion(base / "store", base)
    store.root.mkdir()
    try:
        store("load", "-q", "-i", base_tar)
        store("create", "--name", "v2", IMAGE)
        store("commit", "-q", "-c", "ENV FOO=v2", "v2", V2)
        store("rm", "v2")
        yield store
    finally:
        _teardown(store)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """No registry settings or logins of the host's (see tests/registry)."""
    return isolated_env(tmp_path / "env")


@pytest.fixture
def registry(tmp_path, sources, env) -> Iterator[Registry]:
    """A registry of this test's own holding busybox:test as library/busybox:1.35."""
    registry = Registry(tmp_path / "registry")
    try:
        registry.start()
        push(sources, IMAGE, registry.ref("library/busybox:1.35"), env)
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def fresh(tmp_path) -> Iterator[Pyunion]:
    """An empty store (nothing loaded), cleaned up and checked as px's is."""
    work = tmp_path / "fresh"
    store = Pyunion(work / "store", work)
    store.root.mkdir(parents=True)
    try:
        yield store
    finally:
        leftovers = _teardown(store)
    if leftovers:
        pytest.fail("left behind after the test:\n  " + "\n  ".join(leftovers), pytrace=False)


# --------------------------------------------------------------------------- helpers


def push(store: Pyunion, image: str, target: str, env: dict[str, str]) -> None:
    store("push", "-q", "--image", image, target, env=env)


def one_error(result: Result, status: int, cause: str) -> str:
    """Exit status ``status`` and exactly one stderr line, ``pyunion: error: ...`` matching
    ``cause`` (no runtime log line, no traceback, no usage text)."""
    lines = result.stderr.splitlines()
    assert result.returncode == status, str(result)
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), str(result)
    assert re.search(cause, lines[0]), f"{lines[0]!r} does not match /{cause}/"
    assert "level=" not in result.stderr and "runc run failed" not in result.stderr
    return lines[0][len(ERROR_PREFIX):]


def store_view(px: Pyunion) -> dict[str, Any]:
    """Images, tags, layers, blobs and containers: what a refused command must not change."""
    rows = px("images", "-a", "--no-trunc", "--format", "json").stdout.splitlines()

    def listing(*parts: str) -> list[str]:
        path = px.root.joinpath(*parts)
        return sorted(os.listdir(path)) if path.is_dir() else []

    images = [json.loads(row) for row in rows]
    return {"images": sorted((i["Repository"], i["Tag"], i["ID"], i["Digest"]) for i in images),
            "layers": listing("layers"), "blobs": listing("blobs", "sha256"),
            "containers": listing("containers")}


def fetched(registry: Registry, since: int) -> tuple[int, int]:
    """(manifest GETs, blob GETs) the registry answered since the mark."""
    got = [r for r in registry.requests(since) if r.method == "GET"]
    return (sum("/manifests/" in r.uri for r in got), sum("/blobs/" in r.uri for r in got))


def assert_clean(px: Pyunion) -> None:
    assert px("ps", "-aq").stdout == ""
    assert mounts_under(px.tmp) == []
    assert px.runc_containers() == []


# --------------------------------------------------------------------------- pull on demand


def test_run_pulls_a_missing_image_once(fresh, registry, env):
    ref = registry.ref("library/busybox:1.35")
    mark = registry.log_mark()
    first = fresh("run", "--rm", ref, *ECHO_FOO, env=env)
    assert first.stdout == "bar\n"  # stdout is the container's alone
    lines = first.stderr.splitlines()
    assert lines[:2] == [f"Unable to find image '{ref}' locally",
                         f"1.35: Pulling from {ref.rpartition(':')[0]}"], first.stderr
    assert lines[-2].startswith("Digest: sha256:"), first.stderr
    assert lines[-1] == f"Status: Downloaded newer image for {ref}", first.stderr
    manifests, blobs = fetched(registry, mark)
    assert manifests >= 1 and blobs >= 2, registry.requests(mark)  # config and the layer
    assert fresh("images", "-q").stdout.split() == [fresh.image_id(ref)[7:19]]

    mark = registry.log_mark()
    second = fresh("run", "--rm", ref, *ECHO_FOO, env=env)
    assert (second.stdout, second.stderr) == ("bar\n", "")
    assert registry.requests(mark) == []  # present: no pull, not even a manifest
    assert_clean(fresh)


def test_create_pulls_and_start_runs_it(fresh, registry, env):
    ref = registry.ref("library/busybox:1.35")
    made = fresh("create", "--name", "made", ref, *ECHO_FOO, env=env)
    assert re.fullmatch(r"[0-9a-f]{64}\n", made.stdout), made.stdout  # the id alone
    assert made.stderr.splitlines()[-1] == f"Status: Downloaded newer image for {ref}"
    assert fresh.container("made")["Image"] == ref
    started = fresh("start", "-a", "made")
    assert (started.stdout, started.stderr) == ("bar\n", "")
    fresh("rm", "made")
    quiet = fresh("create", "-q", "--pull", "always", ref, "true", env=env)
    assert quiet.stderr == "" and re.fullmatch(r"[0-9a-f]{64}\n", quiet.stdout)


def test_pull_never_fails_for_an_absent_image_and_changes_nothing(px, registry, env):
    ref = registry.ref("library/busybox:1.35")
    before = store_view(px)
    mark = registry.log_mark()
    for command, status in (("run", 125), ("create", 1)):
        result = px(command, "--pull", "never", ref, "true", check=False, env=env)
        assert one_error(result, status, "No such image") == f"No such image: {ref}"
        assert result.stdout == ""
    assert store_view(px) == before
    assert registry.requests(mark) == []
    # a present image runs as ever
    assert px("run", "--rm", "--pull", "never", IMAGE, *ECHO_FOO).stdout == "bar\n"
    assert_clean(px)


def test_pull_always_pulls_again(fresh, registry, env):
    ref = registry.ref("library/busybox:1.35")
    fresh("run", "--rm", ref, "true", env=env)
    mark = registry.log_mark()
    again = fresh("run", "--rm", "--pull", "always", ref, *ECHO_FOO, env=env)
    assert again.stdout == "bar\n"
    lines = again.stderr.splitlines()
    assert lines[0] == f"1.35: Pulling from {ref.rpartition(':')[0]}", again.stderr
    assert lines[-1] == f"Status: Image is up to date for {ref}", again.stderr
    manifests, blobs = fetched(registry, mark)
    assert manifests >= 1 and blobs == 0, registry.requests(mark)  # the layers are here
    assert_clean(fresh)


def test_pull_newer(fresh, registry, sources, env):
    ref = registry.ref("library/app:1")
    push(sources, IMAGE, ref, env)
    first = fresh("run", "--rm", "--pull", "newer", ref, *ECHO_FOO, env=env)
    assert first.stdout == "bar\n"
    assert f"Status: Downloaded newer image for {ref}" in first.stderr.splitlines()

    mark = registry.log_mark()
    same = fresh("run", "--rm", "--pull", "newer", ref, *ECHO_FOO, env=env)
    assert (same.stdout, same.stderr) == ("bar\n", f"Status: Image is up to date for {ref}\n")
    assert fetched(registry, mark)[1] == 0, registry.requests(mark)

    push(sources, V2, ref, env)  # the tag moves on in the registry
    newer = fresh("run", "--rm", "--pull", "newer", ref, *ECHO_FOO, env=env)
    assert newer.stdout == "v2\n"
    assert newer.stderr.splitlines()[-1] == f"Status: Downloaded newer image for {ref}"

    registry.stop()  # unreachable: newer uses the local image, always fails
    offline = fresh("run", "--rm", "--pull", "newer", ref, *ECHO_FOO, env=env)
    assert offline.returncode == 0 and offline.stdout == "v2\n", str(offline)
    assert offline.stderr.startswith(f"Status: Using the local image for {ref}"), str(offline)
    assert ERROR_PREFIX not in offline.stderr
    always = fresh("run", "--rm", "--pull", "always", ref, "true", check=False, env=env)
    assert always.returncode == 125, str(always)
    errors = [line for line in always.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and "cannot connect" in errors[0], always.stderr
    assert fresh("run", "--rm", ref, *ECHO_FOO, env=env).stdout == "v2\n"  # missing: present
    assert_clean(fresh)


# --------------------------------------------------------------------------- exit statuses


def test_bad_references_and_options_exit_125(px):
    for args in (["run", "--rm", "BAD//ref", "true"], ["run", "--rm", "UPPER:1", "true"],
                 ["run", "--rm", "a:b:c", "true"]):
        one_error(px(*args, check=False), 125, "invalid reference format")
    one_error(px("create", "BAD//ref", check=False), 1, "invalid reference format")
    for args in (["run", "--bogus", IMAGE, "true"], ["run", "--pull", "sometimes", IMAGE],
                 ["run"]):
        result = px(*args, check=False)
        assert result.returncode == 125, str(result)
        assert re.match(r"pyunion( run)?: error: ",  # as argparse says it
                        result.stderr.splitlines()[-1]), str(result)
    for args in (["create", "--bogus", IMAGE], ["images", "--bogus"]):  # every usage error
        assert px(*args, check=False).returncode == 125
    assert px("run", "--help").returncode == 0
    assert_clean(px)


def test_missing_command_exits_127(px):
    missing = px("run", "--rm", IMAGE, "nosuchcmd", check=False)
    assert one_error(missing, 127, "") == '"nosuchcmd": executable file not found in $PATH'
    assert missing.stdout == ""
    one_error(px("run", "--rm", IMAGE, "/nosuch/cmd", check=False), 127,
              r'"/nosuch/cmd": .*no such file or directory')
    assert_clean(px)

    one_error(px("run", "--name", "kept", IMAGE, "nosuchcmd", check=False), 127, "not found")
    row = px.container("kept")
    assert (row["State"], row["ExitCode"]) == ("exited", 127), row
    one_error(px("run", "-d", "--name", "away", IMAGE, "nosuchcmd", check=False), 127,
              "not found")
    assert px("logs", "away").stdout == ""  # the runtime's line is not the container's
    assert px.container("away")["ExitCode"] == 127
    assert mounts_under(px.tmp) == [] and px.runc_containers() == []


def test_command_that_cannot_be_invoked_exits_126(px):
    file = px("run", "--rm", IMAGE, "/etc/passwd", check=False)
    assert one_error(file, 126, "") == '"/etc/passwd": permission denied'
    one_error(px("run", "--rm", IMAGE, "/srv", check=False), 126, '"/srv": permission denied')
    one_error(px("run", "-d", "--rm", IMAGE, "/etc/passwd", check=False), 126, "permission")
    assert_clean(px)  # -d --rm: removed all the same


def test_process_status_is_runs_status(px):
    three = px("run", "--rm", IMAGE, "sh", "-c", "exit 3", check=False)
    assert (three.returncode, three.stdout, three.stderr) == (3, "", "")
    # the process's own stderr passes, even text like the runtime's, and its own 127 is its
    own = px("run", "--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; echo 'runc run "
             "failed: exec: \"x\": executable file not found in $PATH' >&2; exit 127",
             check=False)
    assert own.returncode == 127 and own.stdout == "out\n", str(own)
    assert own.stderr == ('err\nrunc run failed: exec: "x": executable file not found in '
                          "$PATH\n"), str(own)
    assert_clean(px)


def test_create_then_start_reports_one_line(px):
    px("create", "--name", "broken", IMAGE, "nosuchcmd")
    for args in (["start", "broken"], ["start", "-a", "broken"]):
        one_error(px(*args, check=False), 1, '"nosuchcmd": executable file not found')
    assert px.container("broken")["ExitCode"] == 127
    assert mounts_under(px.tmp) == [] and px.runc_containers() == []


def test_runtime_failure_is_one_line(px):
    """A failure of the runtime's that is not the command's: one line, status 125."""
    result = px("run", "--rm", "-w", "/etc/passwd", IMAGE, "true", check=False)
    message = one_error(result, 125, "runc: ")
    assert "/etc/passwd" in message and "not a directory" in message, message
    assert_clean(px)


def lock_files(root) -> list[str]:
    found = []
    for where in ("locks", "downloads", "tmp"):
        directory = root / where
        if directory.is_dir():
            found += [f"{where}/{n}" for n in os.listdir(directory) if n.endswith(".lock")]
    return sorted(found)


def test_lock_files_are_removed_when_free(fresh, registry, env, base_tar):
    fresh("load", "-q", "-i", base_tar)  # unpacks under a layer lock
    fresh("pull", "-q", registry.ref("library/busybox:1.35"), env=env)  # downloads too
    assert lock_files(fresh.root) == ["locks/database.lock", "locks/store.lock"]
