"""Where registries are reached and with which credentials.

Credentials are kept in docker's ``config.json`` ``auths`` format, in a file only its owner can
read (``$PYUNION_AUTH_FILE``, else ``$XDG_CONFIG_HOME/pyunion/auth.json``). Logins made by
docker (``$DOCKER_CONFIG/config.json``, ``~/.docker/config.json``) and podman
(``$XDG_RUNTIME_DIR/containers/auth.json``) are read too.

Registry settings (``$PYUNION_REGISTRIES_CONF``, else
``$XDG_CONFIG_HOME/pyunion/registries.json``)::

    {"insecure": ["registry.lan:5000"], "mirrors": {"docker.io": ["https://mirror.lan"]}}

Insecure registries may be reached over plain HTTP (after HTTPS fails); loopback addresses are
insecure-allowed by default, as docker does.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import tempfile
from dataclasses import dataclass, field

from unionfs.image.errors import ImageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"


def _config_home() -> str:
    return os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")


def auth_file() -> str:
    return os.environ.get("PYUNION_AUTH_FILE") or os.path.join(_config_home(), "pyunion",
                                                               "auth.json")


def _other_auth_files() -> list[str]:
    files = []
    docker_config = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"),
                                                                     ".docker")
    files.append(os.path.join(docker_config, "config.json"))
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        files.append(os.path.join(runtime_dir, "containers", "auth.json"))
    return files


@dataclass
class Credentials:
    username: str
    password: str


def _auth_keys(host: str) -> list[str]:
    keys = [host, f"https://{host}", f"http://{host}"]
    if host == DOCKER_HUB:
        keys += [DOCKER_HUB_AUTH_KEY, DOCKER_HUB_ENDPOINT, "index.docker.io"]
    return keys


def _read_auths(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    auths = data.get("auths") if isinstance(data, dict) else None
    return auths if isinstance(auths, dict) else {}


def find_credentials(host: str) -> Credentials | None:
    for path in [auth_file()] + _other_auth_files():
        auths = _read_auths(path)
        for key in _auth_keys(host):
            entry = auths.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                    return Credentials(user, password)
    return None


def _write_private_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".auth-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp makes it 0600
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _read_own_file() -> dict:
    path = auth_file()
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"auths": {}}
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        return {"auths": {}}
    data.setdefault("auths", {})
    return data


def store_credentials(host: str, credentials: Credentials) -> str:
    data = _read_own_file()
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    data["auths"][DOCKER_HUB_AUTH_KEY if host == DOCKER_HUB else host] = {"auth": token}
    _write_private_json(auth_file(), data)
    return auth_file()


def remove_credentials(host: str) -> bool:
    data = _read_own_file()
    removed = False
    for key in _auth_keys(host):
        removed |= data["auths"].pop(key, None) is not None
    if removed:
        _write_private_json(auth_file(), data)
    return removed


@dataclass
class RegistrySettings:
    insecure: set[str] = field(default_factory=set)
    mirrors: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls) -> RegistrySettings:
        path = os.environ.get("PYUNION_REGISTRIES_CONF") or os.path.join(
            _config_home(), "pyunion", "registries.json")
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as e:
            raise ImageError(f"cannot read {path}: {e}") from None
        insecure = data.get("insecure", []) if isinstance(data, dict) else []
        mirrors = data.get("mirrors", {}) if isinstance(data, dict) else {}
        return cls(set(insecure), {k: list(v) for k, v in mirrors.items()})

    def is_insecure(self, host: str) -> bool:
        return host in self.insecure or is_loopback(host)


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.index("]")]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def endpoint_host(domain: str) -> str:
    """The host to connect to for a reference's domain."""
    return DOCKER_HUB_ENDPOINT if domain == DOCKER_HUB else domain
