"""An ordinary user (uid 65534) pulls from a real registry on 127.0.0.1 into a store of its
own, and runs and mounts what it pulled; owners of the image's files are kept (recorded)."""

from __future__ import annotations

import os

from tests.cli_helpers import NOBODY, public_dir
from tests.registry.conftest import Registry
from tests.test_rootless_images import WITH_USER_DEVICES, run_session

SESSION = """
set -e
{{p}} pull -q {ref} >/dev/null
{{p}} images
mkdir mnt
{{p}} mount-image {ref} mnt
stat -c 'owner %n %u %g %a' mnt/etc/secret
{{p}} umount-image mnt
{{p}} run --rm {ref} cat /etc/app.conf
"""


def test_an_ordinary_user_pulls_runs_and_mounts(shared_registry: Registry) -> None:
    ref = shared_registry.ref("app:1.0")
    with public_dir() as pub:
        os.chown(pub, NOBODY, NOBODY)
        out = run_session(pub, WITH_USER_DEVICES, SESSION.format(ref=ref))
        lines = out.splitlines()
        assert any(line.split()[:2] == [f"{shared_registry.host}/app", "1.0"] for line in lines)
        assert "owner mnt/etc/secret 0 42 640" in lines  # as the image has it, not the user's
        assert "version=1" in lines
        assert (pub / "data" / "pyunion" / "db.sqlite").stat().st_uid == NOBODY
