"""mount.pyunion as an ordinary user (uid 65534), through the setuid fusermount3.

Each run happens in a private mount namespace whose /dev/fuse is 0666, as udev makes it on most
systems (this machine's own is root's 0600, which fusermount3 cannot open for another user).
"""

from __future__ import annotations

import os
import stat

from tests.cli_helpers import public_dir, run_as_nobody_with_fuse

SCRIPT = """
set -e
{helper} l u m
grep " $PWD/m " /proc/self/mountinfo
cat m/keep
rm m/gone
rm -r m/dir && mkdir m/dir && echo new > m/dir/inside
echo added > m/added
fusermount3 -u m
"""


def test_ordinary_user_mounts_privately_with_user_xattr_markers() -> None:
    with public_dir() as pub:
        for d in ("l", "l/dir", "u", "m"):
            (pub / d).mkdir()
        (pub / "l/keep").write_text("kept\n")
        (pub / "l/gone").write_text("x\n")
        (pub / "l/dir/old").write_text("old\n")
        result = run_as_nobody_with_fuse(pub, SCRIPT)
        assert result.returncode == 0, result.stderr
        mountinfo = result.stdout.splitlines()[0]
        assert "fuse.pyunion" in mountinfo and "allow_other" not in mountinfo, mountinfo
        assert "user_id=65534" in mountinfo, mountinfo
        assert result.stdout.splitlines()[1] == "kept"
        whiteout = os.lstat(pub / "u/gone")
        assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
        assert os.getxattr(pub / "u/dir", "user.overlay.opaque") == b"y"
        assert not any(n.startswith("trusted.") for n in os.listxattr(pub / "u/dir"))
        assert (pub / "u/added").read_text() == "added\n"
        assert (pub / "l/gone").exists(), "a lower changed"
