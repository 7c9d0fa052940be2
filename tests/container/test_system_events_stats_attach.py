"""``system df``, ``system prune``, ``events``, ``stats`` and ``attach`` on real containers
(runc, FUSE rootfs mounts): what they report checked against what the test made (file sizes,
a memory limit, a process count, a busy loop) and against the store (what prune leaves)."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from tests.container.conftest import IMAGE, wait_for

pytestmark = pytest.mark.timeout(240)


def _df(px) -> dict[str, dict]:
    rows = px("system", "df", "--format", "json").stdout.splitlines()
    return {r["Type"]: r for r in map(json.loads, rows)}


def test_system_df_and_prune(px):
    px("run", "--name", "wrote", IMAGE, "sh", "-c", "head -c 50000 /dev/zero > /big")
    px("create", "--name", "idle", IMAGE, "true")
    px("run", "-d", "--name", "busy", IMAGE, "sleep", "300")
    lines = px("system", "df").stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert [re.split(r"\s{2,}", line)[0] for line in lines[1:]] == [
        "Images", "Containers", "Local Volumes", "Build Cache"]
    df = _df(px)
    assert (df["Images"]["TotalCount"], df["Images"]["Active"]) == (1, 1)
    assert (df["Containers"]["TotalCount"], df["Containers"]["Active"]) == (3, 1)
    assert df["Containers"]["Size"] == "50kB"  # the file written, the only one in an upper
    assert df["Containers"]["Reclaimable"] == "50kB (100%)"  # the stopped ones'
    assert df["Images"]["Reclaimable"].startswith("0B")
    verbose = px("system", "df", "-v").stdout
    assert re.search(r"\nbusybox\s+test\s+[0-9a-f]{12}\s.*\s3\n", verbose), verbose
    assert re.search(r"\n[0-9a-f]{12}\s+busybox:test\s+50kB\s.*\sexited\s+wrote\n", verbose)

    px("commit", "wrote")  # a dangling image (no name), which wrote's removal leaves unused
    images = px("images", "-q", "--no-trunc").stdout.split()
    dangling = [i for i in images if i not in px("images", "-q", "--no-trunc", IMAGE).stdout]
    assert len(dangling) == 1
    # networks (definitions only: nothing of the host's network is made for them): one no
    # container uses, one whose only container is a stopped one, pruned first
    px("network", "create", "spare")
    px("network", "create", "kept")
    px("create", "--name", "holder", "--network", "kept", IMAGE)
    before = {n: row["ID"] for n, row in px.containers().items()}
    asked = px("system", "prune", input="n\n")  # no -f: asks, and "n" changes nothing
    assert "- all networks not used by at least one container\n" in asked.stdout
    assert "Are you sure you want to continue? [y/N]" in asked.stdout
    assert {n: row["ID"] for n, row in px.containers().items()} == before
    pruned = px("system", "prune", "-f").stdout
    assert pruned.startswith("Deleted Containers:\n")
    assert sorted(pruned.split("\n\n")[0].splitlines()[1:]) == sorted(
        [before["wrote"], before["idle"], before["holder"]])
    assert "\n\nDeleted Networks:\nkept\nspare\n\n" in pruned, pruned
    assert px("network", "ls", "-q").stdout == "pyunion\n"   # the default stays
    assert f"deleted: {dangling[0]}" in pruned
    freed = re.search(r"Total reclaimed space: (\S+)\n$", pruned)
    assert freed and freed.group(1) != "0B", pruned
    assert set(px.containers()) == {"busy"}
    assert px("images", "-q", "--no-trunc").stdout.split() == [  # busybox:test stays
        i for i in images if i != dangling[0]]
    # -a: every image no container uses; busybox:test is busy's
    assert "Deleted Images" not in px("system", "prune", "-a", "-f").stdout
    assert px("images", IMAGE, "-q").stdout.strip()
    px("rm", "-f", "busy")
    last = px("system", "prune", "-a", "-f").stdout
    assert "untagged: busybox:test" in last and "deleted: sha256:" in last
    assert px("images", "-q").stdout == ""
    assert _df(px)["Images"]["TotalCount"] == 0


def test_events_record_the_lifecycle(px):
    start = time.time()
    follow = px.popen("events", "--filter", "event=start", "--format",
                      "{{.Actor.Attributes.name}} {{.Action}}")
    time.sleep(0.5)  # let it open the log
    px("run", "--rm", "--name", "once", "-l", "tier=web", IMAGE, "sh", "-c", "exit 3",
       check=False)
    px("run", "-d", "--name", "web", IMAGE, "sleep", "300")
    px("pause", "web")
    px("unpause", "web")
    px("rename", "web", "web2")
    px("kill", "web2")
    px("wait", "web2")
    px("rm", "web2")
    wait_for(lambda: follow.stdout().count("\n") >= 2, timeout=20, what="followed events")
    follow.proc.terminate()
    follow.wait()
    assert follow.stdout().splitlines() == ["once start", "web start"]

    until = str(time.time() + 0.001)
    past = px("events", "--since", str(start), "--until", until, "--format",
              "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}").stdout.splitlines()
    assert past == ["container create once", "container start once", "container die once",
                    "container destroy once", "container create web", "container start web",
                    "container pause web", "container unpause web", "container rename web2",
                    "container kill web2", "container die web2", "container destroy web2"]
    lines = px("events", "--since", "1h", "--until", until, "--filter",
               "container=once").stdout.splitlines()
    assert len(lines) == 4
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d)"
    assert re.fullmatch(stamp + r" container die [0-9a-f]{64} \(exitCode=3, "
                        r"image=busybox:test, name=once, tier=web\)", lines[2]), lines
    died = px("events", "--since", "1h", "--until", until, "--filter", "event=die",
              "--filter", "container=web2", "--format", "json").stdout.splitlines()
    assert [json.loads(line)["Actor"]["Attributes"]["exitCode"] for line in died] == ["137"]
    assert px("events", "--since", "1h", "--until", until, "--filter", "label=tier=web",
              "--filter", "event=destroy", "--format", "{{.Actor.Attributes.name}}"
              ).stdout == "once\n"
    assert px("events", "--since", until, "--until", until).stdout == ""
    px("tag", IMAGE, "other:1")
    px("rmi", "other:1")
    assert px("events", "--since", until, "--until", str(time.time() + 0.001), "--filter",
              "type=image", "--format", "{{.Action}} {{.Actor.Attributes.name}}"
              ).stdout == "tag other:1\nuntag other:1\n"
    bad = px("events", "--filter", "nosuch=1", "--until", "0s", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("pyunion: error: invalid filter")


@pytest.mark.skipif(os.geteuid() != 0, reason="-m needs a cgroup of the container's own")
def test_stats_from_the_cgroup(px):
    px("run", "-d", "--name", "spin", "-m", "64m", IMAGE, "sh", "-c",
       "sleep 300 & while :; do :; done")
    px("run", "-d", "--name", "idle", IMAGE, "sh", "-c", "sleep 300 & sleep 301")
    px("create", "--name", "never", IMAGE, "true")
    table = px("stats", "--no-stream").stdout.splitlines()
    assert re.split(r"\s{2,}", table[0]) == ["CONTAINER ID", "NAME", "CPU %",
                                             "MEM USAGE / LIMIT", "MEM %", "NET I/O",
                                             "BLOCK I/O", "PIDS"]
    assert sorted(re.split(r"\s{2,}", line)[1] for line in table[1:]) == ["idle", "spin"]
    rows = {r["Name"]: r for r in map(json.loads, px(
        "stats", "--no-stream", "--format", "json", "spin", "idle").stdout.splitlines())}
    spin, idle = rows["spin"], rows["idle"]
    assert spin["MemUsage"].endswith(" / 64MiB"), spin
    for name in ("spin", "idle"):  # the processes the host's ps sees in it (top)
        assert rows[name]["PIDs"] == str(len(px("top", name).stdout.splitlines()) - 1)
    assert spin["PIDs"] == "2"  # sh (the loop) and sleep
    # a busy loop against sleeps (the machine is shared: what share the loop gets varies)
    busy, resting = (float(r["CPUPerc"].rstrip("%")) for r in (spin, idle))
    assert busy > 5 and resting < 2 and busy > 5 * resting, (spin, idle)
    assert px("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", "never").stdout == \
        "never 0\n"
    assert px("stats", "--no-stream", "nosuch", check=False).returncode == 1


def test_attach_output_stdin_and_status(px):
    px("run", "-d", "--name", "late", IMAGE, "sh", "-c", "echo early; sleep 1.5; echo late; "
       "echo err >&2; exit 3")
    attached = px("attach", "late", check=False)
    assert (attached.returncode, attached.stdout, attached.stderr) == (3, "late\n", "err\n")
    refused = px("attach", "late", check=False)
    assert refused.returncode == 1 and "start it first" in refused.stderr

    px("run", "-d", "-i", "--name", "reader", IMAGE, "sh", "-c",
       "read a; echo got $a; read b; echo got $b >&2; exit 7")
    fed = px("attach", "reader", input="one\ntwo\n", check=False)
    assert (fed.returncode, fed.stdout, fed.stderr) == (7, "got one\n", "got two\n")
    assert px("logs", "reader").stdout == "got one\n"

    # signals reach the container (sig-proxy): SIGTERM ends the trap's loop with status 9
    px("run", "-d", "--name", "trap", IMAGE, "sh", "-c",
       "trap 'echo caught; exit 9' TERM; echo ready; while :; do sleep 0.1; done")
    wait_for(lambda: px("logs", "trap").stdout == "ready\n", timeout=20, what="ready")
    proxy = px.popen("attach", "trap")
    time.sleep(1)
    proxy.proc.terminate()
    assert proxy.wait(timeout=30) == 9
    assert proxy.stdout() == "caught\n"
