"""``pyunion create``: a container (the image's layers + an empty upper), not yet started.

The options here are shared with ``run``.
"""

from __future__ import annotations

import argparse
import re
import sys

from unionfs.image import reference
from unionfs.image.cli.common import (
    ID_PREFIX,
    Resolved,
    parse_labels,
    resolve,
    short_id,
    short_name,
    warn_foreign_platform,
)
from unionfs.image.container import lifecycle, network
from unionfs.image.container.bundle import check_spec
from unionfs.image.container.records import Container, RunSpec
from unionfs.image.errors import ImageError, NotFound
from unionfs.image.store import Store

HELP = "Create a new container from an image"
EPILOG = """examples:
  pyunion create --name web app:2.0
  pyunion create --name dev -e DEBUG=1 -v /srv/data:/data:ro app:2.0 /bin/sh
  pyunion create --pull always 127.0.0.1:5000/busybox:1.35
"""
PULL_POLICIES = ("missing", "always", "never", "newer")
# an image id (not a name a registry could have): sha256:HEX, or all 64 hex digits
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{1,64}|[0-9a-f]{64}")


def add_container_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="the container's name (default: generated)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set an environment variable (KEY alone takes the caller's value)")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("-u", "--user", help="user[:group] or uid[:gid] to run as")
    p.add_argument("--hostname", help="the container's host name")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CTR[:ro]",
                   help="bind-mount a host path")
    p.add_argument("--read-only", action="store_true", help="mount the rootfs read-only")
    p.add_argument("--network", "--net", metavar="bridge|host|none|NAME|slirp4netns",
                   help="bridge: the default network (pyunion, a bridge with NAT, as docker's "
                        "and podman's; root's default), NAME: a network of pyunion network "
                        "create (root), slirp4netns: a network of its own (an ordinary "
                        "user's default), host: the host's network, none: loopback only; "
                        "$PYUNION_NETWORK sets another default")
    p.add_argument("--entrypoint", help="override the image's entrypoint")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("--runtime", default="runc", choices=("runc", "crun"),
                   help="the OCI runtime (default runc)")
    p.add_argument("--rm", action="store_true",
                   help="remove the container when its process exits")
    p.add_argument("--pull", choices=PULL_POLICIES, default="missing",
                   help="pull the image: if it is missing (the default), always, never, or "
                        "if the registry has a newer one")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the pull output")
    p.add_argument("-p", "--publish", action="append", default=[],
                   metavar="[IP:][HOST:]CTR[/udp]",
                   help="forward a host port to the container's (a bridge or slirp4netns; "
                        "HOST left out: a free one; ranges of one length as 8080-8081:80-81); "
                        "discarded with --network host, as docker does")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="read KEY=VALUE lines (and KEY: the caller's value) from a file")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE",
                   help="set a label on the container")
    p.add_argument("--add-host", action="append", default=[], metavar="HOST:IP",
                   help="add a line to its /etc/hosts")
    p.add_argument("--init", action="store_true",
                   help="run catatonit as pid 1: it reaps zombies and forwards signals")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP",
                   help="add a capability (NET_ADMIN, ALL, …)")
    p.add_argument("--cap-drop", action="append", default=[], metavar="CAP",
                   help="drop a capability (CHOWN, ALL, …)")
    p.add_argument("--privileged", action="store_true",
                   help="every capability, no masked or read-only /proc paths, /sys writable")
    p.add_argument("--restart", default="no", type=restart_policy,
                   metavar="no|on-failure[:N]|always|unless-stopped",
                   help="restart it when it exits (a detached container; not after stop, "
                        "kill or rm)")
    p.add_argument("-m", "--memory", type=memory_bytes, metavar="BYTES",
                   help="memory limit (b, k, m, g); not above the caller's own (root only)")
    p.add_argument("--cpus", type=float, metavar="N",
                   help="CPUs the container may use; not above the caller's own (root only)")
    p.add_argument("--lazy", action="store_true",
                   help="a pull fetches eStargz layers lazily (see pyunion pull --lazy)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")


def restart_policy(text: str) -> str:
    name, _, count = text.partition(":")
    if name not in ("no", "on-failure", "always", "unless-stopped") or (
            count and (name != "on-failure" or not count.isdigit())):
        raise argparse.ArgumentTypeError(f"invalid restart policy {text!r}")
    return text


def memory_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (as 512m or 1g)")
    scale = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2)]
    return int(float(match.group(1)) * scale)


def read_env_files(paths: list[str]) -> list[str]:
    """docker's --env-file: KEY=VALUE or KEY lines; blank lines and # comments skipped."""
    items = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise ImageError(f"cannot read the env file {path}: {e.strerror}") from None
        for number, line in enumerate(lines, 1):
            text = line.lstrip()
            if not text or text.startswith("#"):
                continue
            key = text.partition("=")[0]
            if not key or any(c.isspace() for c in key):
                raise ImageError(f"{path}:{number}: invalid variable name {key!r}")
            items.append(text)
    return items


def spec_from_args(args) -> RunSpec:
    if args.restart != "no" and args.rm:
        raise ImageError("--restart and --rm conflict (a restarted container is not removed)")
    spec = RunSpec(
        command=args.command or None,
        entrypoint=[args.entrypoint] if args.entrypoint is not None else None,
        env=read_env_files(args.env_file) + args.env, workdir=args.workdir, user=args.user,
        hostname=args.hostname, volumes=args.volume, read_only=args.read_only,
        tty=args.tty, interactive=args.interactive,
        runtime=args.runtime, auto_remove=args.rm, labels=parse_labels(args.label),
        extra_hosts=args.add_host, init=args.init, cap_add=args.cap_add,
        cap_drop=args.cap_drop, privileged=args.privileged, restart=args.restart,
        memory=args.memory, cpus=args.cpus)
    check_spec(spec)
    return spec


def find_image(store: Store, text: str, policy: str, quiet: bool = False,
               lazy: bool = False, spec: RunSpec | None = None) -> Resolved:
    """The image by name, digest or id, pulled first as ``policy`` says (docker's and podman's
    ``--pull``); "invalid reference format" for text that is neither a name nor an id. A lazy
    pull for the container ``spec`` fetches the files it opens first along with the TOCs."""
    if not ID_PREFIX.fullmatch(text):
        reference.parse(text)
    try:
        local: Resolved | None = resolve(store, text)
    except NotFound:
        local = None
    by_id = local is not None and local.name is None and "@" not in text
    if policy == "never" or _IMAGE_ID.fullmatch(text) or by_id or (
            local is not None and policy == "missing"):
        if local is None:
            raise NotFound(f"No such image: {text}")
        return local
    from unionfs.image.cli.pull import image_for_container  # the registry client: only now

    first_paths = None
    if lazy and spec is not None:
        from unionfs.image.early import paths_opened_first

        def first_paths(config: dict) -> list[list[str]]:
            return paths_opened_first(config, spec.entrypoint, spec.command, spec.env,
                                      spec.workdir)

    return image_for_container(store, reference.parse(text), policy, local, quiet, lazy,
                               first_paths)


def network_options(args, store: Store) -> tuple[str, list[str]]:
    """``--network`` as the spec keeps it (a network's name for a bridge) and the ``-p`` kept:
    none with the host's network (docker's warning), refused with no network."""
    mode = network.check_mode(store, args.network or network.default_mode())
    network.parse_all(args.publish)
    if args.publish and mode == "host":
        print("pyunion: warning: published ports are discarded when using host network mode "
              "(the container's ports are the host's)", file=sys.stderr)
        return mode, []
    if args.publish and mode == "none":
        raise ImageError("-p/--publish needs a bridge network: --network none has none")
    return mode, list(args.publish)


def create_from_args(args, store: Store) -> Container:
    spec = spec_from_args(args)  # bad options are refused before anything is pulled
    spec.network, spec.publish = network_options(args, store)
    found = find_image(store, args.image, args.pull, args.quiet, args.lazy, spec)
    warn_foreign_platform(store, found.image_id)
    label = short_name(found.name) if found.name else short_id(found.image_id)
    return lifecycle.create(store, found.image_id, label, args.name, spec)


def register(commands) -> None:
    p = commands.add_parser("create", help=HELP, description=HELP, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_container_options(p)
    p.set_defaults(run=run)


def run(args, store: Store) -> int:
    print(create_from_args(args, store).id)
    return 0
