"""``--filter`` and Go-template ``--format`` for ``images``, ``ps``, ``history`` and
``inspect``; ``inspect`` of a container; the ``image …`` and ``container …`` groups."""

from __future__ import annotations

import json
import re

import pytest

from tests.container.conftest import IMAGE

pytestmark = pytest.mark.timeout(180)


def test_images_filters_and_formats(px):
    px("tag", IMAGE, "other/app:1")
    px("create", "--name", "c", IMAGE)
    px("commit", "-q", "-c", "LABEL tier=web", "c", "app:2")
    image_id = px.image_id(IMAGE)
    names = px("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert sorted(names) == ["app:2", "busybox:test", "other/app:1"]
    assert px("images", "--filter", "reference=busy*", "--format",
              "{{.Repository}}").stdout == "busybox\n"
    assert px("images", "-f", "reference=*/app:*", "--format",
              "{{.Repository}}").stdout == "other/app\n"
    assert px("images", "-f", "label=tier=web", "--format", "{{.Tag}}").stdout == "2\n"
    assert px("images", "-f", "since=busybox:test", "--format", "{{.Tag}}").stdout == "2\n"
    assert sorted(px("images", "-f", "before=app:2", "--format", "{{.Tag}}").stdout.split()) \
        == ["1", "test"]
    assert px("images", "-f", "dangling=true").stdout.count("\n") == 1  # the header only
    table = px("images", "--format", "table {{.ID}}\\t{{.Repository}}").stdout.splitlines()
    assert re.fullmatch(r"IMAGE ID\s{3,}REPOSITORY", table[0]), table
    assert any(line.startswith(image_id[7:19]) for line in table[1:])
    rows = [json.loads(line) for line in px("images", "--format", "json").stdout.splitlines()]
    assert {"ID", "Repository", "Tag", "CreatedAt", "Size"} <= set(rows[0])
    for bad in (["-f", "nonsense=1"], ["-f", "dangling"], ["--format", "{{.Nope}}"],
                ["--format", "{{range .X}}"]):
        result = px("images", *bad, check=False)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result
    # rmi of one of two names leaves no <none> row
    px("rmi", "other/app:1")
    assert "<none>" not in px("images").stdout


def test_ps_filters_and_formats(px):
    px("run", "--name", "done", IMAGE, "sh", "-c", "exit 3", check=False)
    px("run", "-d", "--name", "up", IMAGE, "sleep", "300")
    px("create", "--name", "fresh", IMAGE)
    names = lambda *f: sorted(px("ps", "-a", *f, "--format", "{{.Names}}").stdout.split())  # noqa: E731
    assert names() == ["done", "fresh", "up"]
    assert names("-f", "status=exited") == ["done"]
    assert names("-f", "status=running") == ["up"]
    assert names("-f", "status=created") == ["fresh"]
    assert names("-f", "exited=3") == ["done"]
    assert names("-f", "name=^fr") == ["fresh"]
    assert names("-f", "ancestor=busybox:test") == ["done", "fresh", "up"]
    assert names("-f", "before=fresh") == ["done", "up"]
    assert names("-f", "since=done") == ["fresh", "up"]
    assert names("-f", "status=exited", "-f", "status=created") == ["done", "fresh"]
    assert px("ps", "--format", "{{.Names}} {{.State}}").stdout == "up running\n"
    row = json.loads(px("ps", "--format", "json").stdout)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000 UTC", row["CreatedAt"]), row
    assert row["RunningFor"].endswith("ago") and isinstance(row["Created"], int)
    header = px("ps", "--format", "table {{.ID}}\\t{{.Names}}").stdout.splitlines()[0]
    assert re.fullmatch(r"CONTAINER ID\s+NAMES", header), header
    assert px("ps", "-a", "-n", "1", "--format", "{{.Names}}").stdout == "fresh\n"


def test_inspect_containers_and_templates(px):
    px("run", "-d", "--name", "web", "-e", "X=1", "-w", "/srv", IMAGE, "sleep", "300")
    data = json.loads(px("inspect", "web").stdout)[0]
    assert data["Name"] == "/web" and data["Path"] == "sleep" and data["Args"] == ["300"]
    assert data["State"]["Status"] == "running" and data["State"]["Running"] is True
    assert data["State"]["Pid"] > 0 and data["Image"] == px.image_id(IMAGE)
    assert "X=1" in data["Config"]["Env"] and data["Config"]["WorkingDir"] == "/srv"
    assert px("inspect", "-f", "{{.State.Status}} {{.Config.Image}}", "web").stdout \
        == "running busybox:test\n"
    env = json.loads(px("inspect", IMAGE).stdout)[0]["Config"]["Env"]
    assert px("inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", IMAGE).stdout \
        == "".join(f"{item}\n" for item in env) + "\n"
    assert px("inspect", "-f", "{{index .Config.Env 0}}", IMAGE).stdout == env[0] + "\n"
    # the pid of the container's process on the host
    with open(f"/proc/{data['State']['Pid']}/cmdline", "rb") as f:
        assert f.read() == b"sleep\x00300\x00"
    assert px("inspect", "-f", "{{json .RepoTags}}", IMAGE).stdout == '["busybox:test"]\n'
    px("stop", "-t", "1", "web")
    stopped = json.loads(px("container", "inspect", "web").stdout)[0]["State"]
    assert stopped["Status"] == "exited" and stopped["ExitCode"] == 137
    assert px("image", "inspect", "web", check=False).returncode == 1
    assert px("container", "inspect", IMAGE, check=False).returncode == 1
    assert px("inspect", "nothing", check=False).returncode == 1


def test_groups_are_aliases(px):
    assert px("image", "ls", "--format", "{{.Repository}}").stdout == "busybox\n"
    assert px("image", "history", "-q", IMAGE).stdout == px("history", "-q", IMAGE).stdout
    px("image", "tag", IMAGE, "copy:1")
    px("image", "rm", "copy:1")
    px("container", "create", "--name", "c", IMAGE)
    assert px("container", "ls", "-a", "--format", "{{.Names}}").stdout == "c\n"
    px("container", "rename", "c", "d")
    px("container", "rm", "d")
    assert px("container", "ls", "-aq").stdout == ""
    px("run", "--name", "stopped", IMAGE, "true")
    px("run", "-d", "--name", "running", IMAGE, "sleep", "300")
    pruned = px("container", "prune", "-f").stdout.split()
    assert len(pruned) == 3 and pruned[:2] == ["Deleted", "Containers:"], pruned
    assert px("container", "ls", "-a", "--format", "{{.Names}}").stdout == "running\n"
    assert px("image", "prune", "-f").returncode == 0
    help_text = px("image", "--help").stdout
    assert "ls" in help_text and "prune" in help_text
