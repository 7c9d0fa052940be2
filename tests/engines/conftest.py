"""Fixtures of the engine tests: the busybox base image of the container tests and the OCI
layout of the registry tests are reused (imported here so pytest registers them)."""

from tests.container.conftest import base_tar  # noqa: F401
from tests.registry.conftest import images, session_env  # noqa: F401
