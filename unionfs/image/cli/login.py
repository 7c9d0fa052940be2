"""``pyunion login`` / ``logout``: credentials for a registry, checked before they are kept."""

from __future__ import annotations

import getpass
import sys

import trio

from unionfs.image.cli.pull import add_registry_options
from unionfs.image.errors import ImageError
from unionfs.image.registry.client import RegistryClient
from unionfs.image.registry.config import (
    DOCKER_HUB,
    Credentials,
    remove_credentials,
    store_credentials,
)
from unionfs.image.store import Store

HELP = "Log in to a registry (credentials are checked, then kept in a file only you can read)"
LOGOUT_HELP = "Log out from a registry"


def register(commands) -> None:
    p = commands.add_parser("login", help=HELP, description=HELP,
                            epilog="example:\n  echo \"$PASS\" | pyunion login 127.0.0.1:5000 "
                                   "-u user --password-stdin")
    p.add_argument("server", nargs="?", default=DOCKER_HUB, metavar="SERVER")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add_registry_options(p)
    p.set_defaults(run=run)
    o = commands.add_parser("logout", help=LOGOUT_HELP, description=LOGOUT_HELP)
    o.add_argument("server", nargs="?", default=DOCKER_HUB, metavar="SERVER")
    o.set_defaults(run=run_logout)


def _credentials(args) -> Credentials:
    username = args.username
    if not username:
        if not sys.stdin.isatty():
            raise ImageError("give a username with -u")
        username = input("Username: ").strip()
    if args.password_stdin:
        if args.password:
            raise ImageError("--password and --password-stdin are mutually exclusive")
        password = sys.stdin.read().rstrip("\n")
    elif args.password is not None:
        password = args.password
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise ImageError("give a password with --password-stdin")
    if not username or not password:
        raise ImageError("a username and a password are required")
    return Credentials(username, password)


async def _check(server: str, credentials: Credentials, insecure: bool) -> None:
    async with RegistryClient(server, insecure=insecure, credentials=credentials) as client:
        await client.ping()


def run(args, store: Store) -> int:
    credentials = _credentials(args)
    trio.run(_check, args.server, credentials, args.insecure)
    store_credentials(args.server, credentials)
    print("Login Succeeded")
    return 0


def run_logout(args, store: Store) -> int:
    if remove_credentials(args.server):
        print(f"Removing login credentials for {args.server}")
    else:
        print(f"Not logged in to {args.server}")
    return 0
