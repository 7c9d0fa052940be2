"""``mount.pyunion``: the command line, in mount(8)'s conventions.

Forms::

    mount.pyunion LOWER[:LOWER...] UPPER MOUNTPOINT [-f] [-d] [-o OPTIONS]
    mount.pyunion LOWER[:LOWER...] MOUNTPOINT [-o upperdir=UPPER[,workdir=DIR]]
    mount.pyunion SOURCE MOUNTPOINT -o lowerdir=L1:L2[,upperdir=U,workdir=W]

mount(8) calls a helper as ``mount.TYPE SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]``; ``-n``, ``-s``
and ``-v`` concern mount(8) only and are ignored (mount(8)'s ``-f`` is a fake mount and never
reaches a helper, so ``-f`` here means foreground, as for FUSE programs).
"""

from __future__ import annotations

import logging
import os
import sys

from unionfs.fs.options import (
    MountConfig,
    MountError,
    apply_options,
    split_lowers,
    split_options,
)

MAX_DEFAULT_FSNAME = 1024

USAGE = """usage: mount.pyunion LOWER[:LOWER...] [UPPER] MOUNTPOINT [-f] [-d] [-o OPTIONS]
       mount.pyunion SOURCE MOUNTPOINT -o lowerdir=L1:L2[,upperdir=U,workdir=W][,...]

Lowers are listed top-most first, as overlayfs's lowerdir. Without an upper the merged view is
read-only. Options: workdir= ro allow_other fsname= dev nodev suid nosuid exec noexec noatime
redirect_dir=on|off|follow|nofollow|copy index=on|off userxattr volatile timeout=SECONDS
stats=FILE debug nonempty. -f stays in the foreground, -d logs every request. A mountpoint
with entries is refused (the mount would hide them) unless -o nonempty.
"""


def parse_args(argv: list[str]) -> tuple[MountConfig, int | None]:
    """The mount asked for, and the ``--ready-fd`` given by ``unionfs.mount()`` (if any)."""
    positional: list[str] = []
    ready_fd = None
    option_strings: list[str] = []
    foreground = debug = False
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help"):
            print(USAGE, end="")
            sys.exit(0)
        if arg == "-o":
            value = next(args, None)
            if value is None:
                raise MountError("-o needs an option string")
            option_strings.append(value)
        elif arg.startswith("-o"):
            option_strings.append(arg[2:])
        elif arg == "-f":
            foreground = True
        elif arg.startswith("--ready-fd="):
            ready_fd = _fd_number(arg.partition("=")[2])
        elif arg == "-d":
            debug = foreground = True
        elif arg in ("-n", "-s", "-v", "-sn", "-ns", "-nv", "-vn"):
            continue
        elif arg.startswith("-") and arg != "-":
            raise MountError(f"unknown flag '{arg}' (see --help)")
        else:
            positional.append(arg)
    options = [opt for text in option_strings for opt in split_options(text)]
    config = _config_from(positional, dict(options))
    config.foreground, config.debug = foreground, debug
    apply_options(config, options)
    return config, ready_fd


def _fd_number(text: str) -> int:
    if not text.isdigit():
        raise MountError(f"--ready-fd={text}: not a file descriptor number")
    return int(text)


def _config_from(positional: list[str], options: dict[str, str | None]) -> MountConfig:
    lowerdir, upperdir = options.get("lowerdir"), options.get("upperdir")
    if lowerdir is not None:  # overlayfs form: the source is only a label
        if len(positional) != 2:
            raise MountError("with -o lowerdir= give exactly SOURCE and MOUNTPOINT")
        source, mountpoint = positional
        return MountConfig(lowers=split_lowers(lowerdir), upper=upperdir,
                           mountpoint=mountpoint, source=source)
    if len(positional) == 3:
        lowers, upper, mountpoint = positional
        if upperdir is not None:
            raise MountError("the upper directory is given twice (argument and upperdir=)")
    elif len(positional) == 2:
        lowers, mountpoint = positional
        upper = upperdir
    elif len(positional) > 3:
        extra = " ".join(positional[3:])
        raise MountError(f"too many arguments: '{extra}' (see --help)")
    else:
        raise MountError("expected LOWER[:LOWER...] [UPPER] MOUNTPOINT (see --help)")
    return MountConfig(lowers=split_lowers(lowers), upper=upper, mountpoint=mountpoint,
                       source=default_fsname(lowers))


def default_fsname(lowers: str) -> str:
    """The lower list itself, or where that would not fit in the kernel's one page of mount
    options (128 store layers do not), the top lower and a count."""
    if len(lowers.encode()) <= MAX_DEFAULT_FSNAME:
        return lowers
    layers = split_lowers(lowers)
    label = f"{layers[0]}(+{len(layers) - 1} lowers)"
    return label if len(label.encode()) <= MAX_DEFAULT_FSNAME else "pyunion"


ARGS_FROM_FD = "--args-from-fd="


def _args_from_fd(flag: str) -> list[str] | None:
    """The command line ``unionfs.api.prestart_daemon`` sends once it knows the mount
    (NUL-separated, up to end of file); None if it sent nothing (no mount was needed)."""
    with open(_fd_number(flag.removeprefix(ARGS_FROM_FD)), "rb") as pipe:
        data = pipe.read()
    return [os.fsdecode(arg) for arg in data.split(b"\0")] if data else None


def _show_command_line(argv: list[str]) -> None:
    """ps and /proc/PID/cmdline show the mount's command line, as if the daemon had been
    started with it (as far as the kernel's argument area allows: it is not enlarged)."""
    import setproctitle

    setproctitle.setproctitle(" ".join([sys.executable, "-m", "mount_helper", *argv]))


def main(argv: list[str] | None = None) -> int:
    from unionfs.fs.daemon import mount  # imports pyfuse3: keep --help and parse errors fast

    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) == 1 and argv[0].startswith(ARGS_FROM_FD):  # started ahead of its mount
            sent = _args_from_fd(argv[0])
            if sent is None:
                return 0
            argv = sent
            _show_command_line(argv)
        config, ready_fd = parse_args(argv)
        return mount(config, ready_fd)
    except MountError as e:
        print(f"mount.pyunion: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def exit_now(status: int) -> None:
    """Ends the process without the interpreter's teardown (collecting every module, joining
    trio's worker threads: 40-100 ms after each unmount, which ``umount`` and ``pyunion run
    --rm`` wait for). By then the file system is unmounted and its files are closed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    exit_now(main())
