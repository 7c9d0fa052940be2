"""``pyunion build`` on a terminal shows what a step is doing while it has no output of its own
(a spinner, rich's); a pipe or a log gets the STEP lines and the build's output only."""

from __future__ import annotations

import json
import shlex
import subprocess

from tests.build.conftest import write_context
from tests.container.conftest import IMAGE, REPO_ROOT, clean_env

PHASES = ("writing the step's layer", "copying into the step's layer",
          "storing the step's image")


def test_a_terminal_sees_each_phase_a_pipe_none(px, tmp_path):
    context = write_context(tmp_path / "ctx", {
        "Containerfile": f"FROM {IMAGE}\nRUN touch /made\nCOPY f /f\n", "f": "x\n"})
    piped = px("build", "--no-cache", "-t", "piped:1", context)
    assert not [phase for phase in PHASES if phase in piped.stdout + piped.stderr], piped

    command = " ".join(shlex.quote(word) for word in
                       px.command("build", "--no-cache", "-t", "shown:1", context))
    shown = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                           timeout=300, cwd=REPO_ROOT, env=clean_env(),
                           stdin=subprocess.DEVNULL)
    output = shown.stdout.decode(errors="replace")
    assert shown.returncode == 0, output
    assert [phase for phase in PHASES if phase not in output] == [], output
    # the spinner changes nothing but the screen: the same steps, layers and history
    piped_image, shown_image = (json.loads(px("inspect", name).stdout)[0]
                                for name in ("piped:1", "shown:1"))
    assert len(shown_image["RootFS"]["Layers"]) == len(piped_image["RootFS"]["Layers"])
