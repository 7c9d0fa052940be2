"""``logs`` with ``--tail``, ``-t``, ``--since``/``--until`` and ``-f``; the output of every run
(``run``, ``run -d``, ``start``, ``start -a``) kept, stdout and stderr apart."""

from __future__ import annotations

import re
import time

import pytest

from tests.container.conftest import IMAGE, wait_for

pytestmark = pytest.mark.timeout(180)

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"


def test_tail_timestamps_since_and_streams(px):
    px("run", "--name", "box", IMAGE, "sh", "-c",
       "echo one; echo err1 >&2; sleep 1.2; echo two; echo three; printf 'no end'")
    logs = px("logs", "box")
    assert logs.stdout == "one\ntwo\nthree\nno end"
    assert logs.stderr == "err1\n"
    assert px("logs", "--tail", "2", "box").stdout == "three\nno end"
    assert px("logs", "-n", "0", "box").stdout == ""
    assert px("logs", "--tail", "all", "box").stdout == logs.stdout
    assert px("logs", "--tail", "x", "box", check=False).returncode == 125  # usage
    stamped = px("logs", "-t", "box").stdout.splitlines()
    assert all(re.fullmatch(STAMP + r" \S.*", line) for line in stamped), stamped
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two", "three", "no end"]
    # --since the second line's time (the sleep lies between): from it on; --until before it
    second = stamped[1].split(" ", 1)[0]
    assert px("logs", "--since", second, "box").stdout == "two\nthree\nno end"
    assert px("logs", "--until", stamped[0].split(" ", 1)[0], "box").stdout == "one\n"
    assert px("logs", "--since", "1h", "box").stdout == logs.stdout
    assert px("logs", "--since", str(int(time.time()) + 60), "box").stdout == ""
    bad = px("logs", "--since", "yesterday", "box", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("pyunion: error: invalid time")


def test_follow_and_every_run_kept(px):
    px("run", "-d", "--name", "box", IMAGE, "sh", "-c",
       "echo first; sleep 1; printf 'prompt> '; sleep 1; echo done")
    follow = px.popen("logs", "-f", "box")
    # the unended piece is shown while the container runs
    wait_for(lambda: "prompt> " in follow.stdout(), timeout=30, what="the partial line")
    assert follow.wait(timeout=60) == 0
    assert follow.stdout() == "first\nprompt> done\n"
    # start -a: attached, and kept too; so is a plain run's
    attached = px("start", "-a", "box")
    assert attached.stdout == "first\nprompt> done\n"
    assert px("logs", "box").stdout == "first\nprompt> done\n" * 2
    assert px("logs", "--tail", "1", "box").stdout == "prompt> done\n"
