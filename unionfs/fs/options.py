"""Mount options: parsing the ``-o`` string and validating a stack before anything is touched.

Everything here only reads the filesystem; nothing is created until validation has passed, so
bad input changes nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass, field

from unionfs.fs.override import IdMapping

# Mount flags handed to the kernel through libfuse (mount(8) semantics).
FUSE_MOUNT_FLAGS = {
    "ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime",
    "diratime", "nodiratime", "sync", "async", "dirsync",
}
# What mount(8) or fstab pass that does not concern a filesystem, and kernel overlayfs
# options whose only value we implement is the default.
IGNORED_OPTIONS = {
    "rw", "defaults", "nofail", "_netdev", "auto", "noauto", "user", "users", "nouser",
    "owner", "group", "relatime", "norelatime", "strictatime", "lazytime", "nolazytime",
    "default_permissions", "allow_root",
}
IGNORED_PREFIXES = ("x-", "comment=", "helper=")
REDIRECT_MODES = ("on", "follow", "nofollow", "off", "copy")
DEFAULT_TIMEOUT = 3600.0


class MountError(Exception):
    """Bad input or a failed mount; the message is one line for the user."""


@dataclass
class MountConfig:
    """A mount as asked for, before validation resolves the paths."""

    lowers: list[str]
    upper: str | None
    mountpoint: str
    workdir: str | None = None
    source: str = "pyunion"
    readonly: bool = False
    foreground: bool = False
    debug: bool = False
    # As root, other users may use the mount (as overlayfs); an ordinary user's mount is
    # private to that user unless -o allow_other asks otherwise.
    allow_other: bool = field(default_factory=lambda: os.geteuid() == 0)
    fuse_flags: list[str] = field(default_factory=list)
    redirect_dir: str = "on"
    userxattr: bool = False
    timeout: float = DEFAULT_TIMEOUT
    fsync: bool = True
    metacopy: bool = False
    stats_file: str | None = None
    # A mountpoint with entries is refused (the mount would hide them) unless -o nonempty,
    # libfuse 2's word for it.
    nonempty: bool = False
    # How long an open of a lazily pulled file waits for its registry (fs/lazy.py) before EIO.
    lazy_timeout: float = 30.0
    # Bytes a second at which the rest of a lazily pulled layer follows in the background
    # (fs/lazy.py); None: the rate its pull recorded (or the default), 0: none.
    lazy_rate: int | None = None
    # A file the daemon appends the path of each lower file first opened to, once each
    # (``push --prefetch-from``: what a command uses at start-up).
    open_log: str | None = None
    # FUSE passthrough: auto (where granted), on (or fail), off; $PYUNION_PASSTHROUGH sets
    # the default for every mount of a process tree (a test run without it, say).
    passthrough: str = field(
        default_factory=lambda: os.environ.get("PYUNION_PASSTHROUGH", "auto"))
    # Owners, modes and device nodes recorded in user.containers.override_stat (see
    # override.py), and how recorded ids are shown.
    override_stat: bool = False
    uid_mapping: IdMapping = field(default_factory=IdMapping)
    gid_mapping: IdMapping = field(default_factory=IdMapping)

    @property
    def writable(self) -> bool:
        return self.upper is not None and not self.readonly

    @property
    def follow_redirects(self) -> bool:
        return self.redirect_dir in ("on", "follow", "copy")


def split_options(text: str) -> list[tuple[str, str | None]]:
    """``a=1,b,c=x\\,y`` -> [("a", "1"), ("b", None), ("c", "x,y")]; malformed -> MountError."""
    if not text:
        raise MountError("empty option string after -o")
    out = []
    for part in re.split(r"(?<!\\),", text):
        part = part.replace("\\,", ",")
        if not part:
            raise MountError(f"malformed option string '{text}': empty option")
        key, sep, value = part.partition("=")
        if not key:
            raise MountError(f"malformed option '{part}': no name before '='")
        if sep and not value:
            raise MountError(f"option '{key}' needs a value")
        out.append((key, value if sep else None))
    return out


def split_lowers(text: str) -> list[str]:
    """Colon-separated lower dirs, top-most first; ``\\:`` escapes a colon in a path."""
    if "::" in text.replace("\\:", ""):
        raise MountError("data-only lower layers ('::' in the lower list) are not supported")
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", text)]
    if not parts or any(p == "" for p in parts):
        raise MountError(f"malformed lower directory list '{text}'")
    return parts


PASSTHROUGH_MODES = ("auto", "on", "off")  # (see passthrough.py)
_VALUE_OPTIONS = ("lowerdir", "upperdir", "workdir", "fsname", "subtype", "timeout",
                  "redirect_dir", "index", "xino", "metacopy", "uuid", "nfs_export", "stats",
                  "xattr_permissions", "uidmapping", "gidmapping", "passthrough",
                  "lazy_timeout", "lazy_rate", "open_log")


def apply_options(config: MountConfig, options: list[tuple[str, str | None]]) -> None:
    """Applies parsed ``-o`` options (except lowerdir/upperdir, handled by the caller)."""
    for key, value in options:
        if key in _VALUE_OPTIONS and value is None:
            raise MountError(f"option '{key}' needs a value")
        if key in IGNORED_OPTIONS or key.startswith(IGNORED_PREFIXES):
            continue
        if key in FUSE_MOUNT_FLAGS:
            _no_value(key, value)
            if key == "ro":
                config.readonly = True
            else:
                config.fuse_flags.append(key)
        elif key in ("lowerdir", "upperdir"):
            continue
        elif key == "workdir":
            config.workdir = value
        elif key in ("fsname", "subtype"):
            if key == "fsname":
                config.source = value or config.source
        elif key == "allow_other":
            _no_value(key, value)
            config.allow_other = True
        elif key in ("debug", "userxattr", "volatile"):
            _no_value(key, value)
            _apply_flag(config, key)
        elif key == "timeout":
            config.timeout = _seconds(value)
        elif key == "lazy_timeout":
            config.lazy_timeout = _seconds(value)
        elif key == "lazy_rate":
            config.lazy_rate = parse_rate(value)
        elif key == "open_log":
            config.open_log = os.path.abspath(value or "")
        elif key == "redirect_dir":
            if value not in REDIRECT_MODES:
                modes = ", ".join(REDIRECT_MODES)
                raise MountError(f"redirect_dir={value}: expected one of {modes}")
            config.redirect_dir = value
        elif key == "index":
            _on_off(key, value)  # hard links are always kept one file (the index=on view)
        elif key == "metacopy":
            config.metacopy = _on_off(key, value)
        elif key == "nfs_export":
            if _on_off(key, value):
                raise MountError(f"{key}=on is not supported")
        elif key in ("xino", "uuid"):
            continue  # inode numbers are always made unique; no fsid is stored
        elif key == "stats":
            config.stats_file = value
        elif key == "nonempty":
            _no_value(key, value)
            config.nonempty = True
        elif key == "passthrough":
            if value not in PASSTHROUGH_MODES:
                raise MountError(f"passthrough={value}: expected one of "
                                 f"{', '.join(PASSTHROUGH_MODES)}")
            config.passthrough = value
        elif key in ("override_stat", "xattr_permissions", "uidmapping", "gidmapping"):
            _apply_override_option(config, key, value)
        else:
            raise MountError(f"unknown mount option '{key}'")


def _apply_override_option(config: MountConfig, key: str, value: str | None) -> None:
    """``override_stat`` (or fuse-overlayfs's ``xattr_permissions=2``), and the id mappings,
    which imply it."""
    if key == "override_stat":
        _no_value(key, value)
        config.override_stat = True
    elif key == "xattr_permissions":
        if value not in ("0", "2"):
            raise MountError(f"xattr_permissions={value}: only 0 (off) and 2 "
                             "(user.containers.override_stat) are supported")
        config.override_stat = value == "2"
    else:
        assert value is not None
        try:
            mapping = IdMapping.parse(value)
        except ValueError as e:
            raise MountError(f"{key}={e}") from None
        if key == "uidmapping":
            config.uid_mapping = mapping
        else:
            config.gid_mapping = mapping
        config.override_stat = True


def _apply_flag(config: MountConfig, key: str) -> None:
    if key == "debug":
        config.debug = True
    elif key == "userxattr":
        config.userxattr = True
    elif key == "volatile":
        config.fsync = False


def _no_value(key: str, value: str | None) -> None:
    if value is not None:
        raise MountError(f"option '{key}' takes no value")


def _on_off(key: str, value: str | None) -> bool:
    if value in ("on", "off"):
        return value == "on"
    raise MountError(f"{key}={value}: expected 'on' or 'off'")


_RATE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_rate(value: str | None) -> int:
    """Bytes a second: ``0``, ``500000``, ``512k``, ``4M`` (binary units)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", value or "")
    if found is None:
        raise MountError(f"lazy_rate={value}: expected bytes a second (e.g. 4M, 512k, 0)")
    return int(float(found.group(1)) * _RATE_UNITS[found.group(2).lower()])


def _seconds(value: str | None) -> float:
    try:
        seconds = float(value or "")
    except ValueError:
        raise MountError(f"timeout={value}: not a number of seconds") from None
    if seconds < 0 or seconds != seconds:
        raise MountError(f"timeout={value}: must be zero or more seconds")
    return seconds


# ----------------------------------------------------------------------------------------------
# Validation


def default_workdir(upper: str) -> str:
    """A sibling of the upper: on its filesystem, never inside it, never in the merged view."""
    parent, name = os.path.split(upper.rstrip("/"))
    return os.path.join(parent, f".{name}.work")


def mounted_points() -> set[str]:
    points = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            points.add(line.split()[4].encode().decode("unicode_escape"))
    return points


def _inside(path: str, other: str) -> bool:
    """True when ``path`` is ``other`` or lies below it (both real paths)."""
    return path == other or path.startswith(other.rstrip("/") + "/")


def _existing_dir(path: str, what: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise MountError(f"{what} {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"{what} {path} is not a directory")
    return os.path.realpath(path)


def _writable_fs(path: str, what: str) -> None:
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        raise MountError(f"{what} {path} is on a read-only filesystem")
    if not os.access(path, os.W_OK):
        raise MountError(f"{what} {path} is not writable")


def validate(config: MountConfig) -> MountConfig:
    """Checks the stack and returns a copy with real paths and the workdir filled in."""
    if config.metacopy and config.redirect_dir not in ("on", "follow"):
        raise MountError(f"metacopy=on needs redirect_dir=on, not {config.redirect_dir}")
    if not config.lowers:
        raise MountError("no lower directory given")
    lowers = [_existing_dir(p, "lower directory") for p in config.lowers]
    upper = _existing_dir(config.upper, "upper directory") if config.upper else None
    mountpoint = _existing_dir(config.mountpoint, "mountpoint")
    if mountpoint in mounted_points():
        raise MountError(f"mountpoint {mountpoint} is already a mount point")
    if not config.nonempty and _has_entries(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not empty: the mount would hide what is "
                         "in it (-o nonempty mounts over it anyway)")
    layers = [("lower directory", p) for p in lowers]
    if upper:
        layers.append(("upper directory", upper))
    _check_distinct(layers)
    _check_nesting(layers, mountpoint)
    workdir = None
    if upper and not config.readonly:
        _writable_fs(upper, "upper directory")
        workdir = _check_workdir(config, upper, lowers, mountpoint)
    _check_fuse_device(config)
    if config.passthrough not in PASSTHROUGH_MODES:
        raise MountError(f"PYUNION_PASSTHROUGH={config.passthrough}: expected one of "
                         f"{', '.join(PASSTHROUGH_MODES)}")
    if config.passthrough == "on":
        from unionfs.fs import passthrough  # (pyfuse3 and trio: not for the other commands)

        reason = passthrough.unavailable_because()
        if reason:
            raise MountError(f"passthrough=on: {reason}")
    return _replace(config, lowers=lowers, upper=upper, mountpoint=mountpoint, workdir=workdir)


def _has_entries(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    except OSError:
        return False  # unreadable: left to the mount to report


def _check_distinct(layers: list[tuple[str, str]]) -> None:
    seen: dict[tuple[int, int], str] = {}
    for what, path in layers:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise MountError(f"{what} {path} is the same directory as {seen[key]}")
        seen[key] = path


def _check_nesting(layers: list[tuple[str, str]], mountpoint: str) -> None:
    upper = [p for what, p in layers if what.startswith("upper")]
    for what, path in layers:
        if _inside(mountpoint, path):
            raise MountError(f"mountpoint {mountpoint} is inside {what} {path}")
        if _inside(path, mountpoint):
            raise MountError(f"{what} {path} is inside the mountpoint {mountpoint}")
        for up in upper:
            if what.startswith("lower") and _inside(path, up):
                raise MountError(f"lower directory {path} is inside the upper directory {up}")
            if what.startswith("lower") and _inside(up, path):
                raise MountError(f"upper directory {up} is inside lower directory {path}")


def _check_workdir(config: MountConfig, upper: str, lowers: list[str], mountpoint: str) -> str:
    if config.workdir:
        workdir = _existing_dir(config.workdir, "workdir")
    else:
        workdir = default_workdir(upper)
        if os.path.lexists(workdir) and not os.path.isdir(workdir):
            raise MountError(f"default workdir {workdir} exists and is not a directory")
    probe = workdir if os.path.isdir(workdir) else os.path.dirname(workdir)
    if _inside(workdir, upper) or _inside(upper, workdir):
        raise MountError(f"workdir {workdir} and upper directory {upper} are nested")
    for lower in lowers:
        if _inside(workdir, lower) or _inside(lower, workdir):
            raise MountError(f"workdir {workdir} and lower directory {lower} are nested")
    if _inside(workdir, mountpoint) or _inside(mountpoint, workdir):
        raise MountError(f"workdir {workdir} and mountpoint {mountpoint} are nested")
    if os.stat(probe).st_dev != os.stat(upper).st_dev:
        hint = "" if config.workdir else " (give one with -o workdir=DIR)"
        raise MountError(f"workdir {workdir} is not on the upper directory's filesystem{hint}")
    _writable_fs(probe, "workdir")
    return workdir


FUSE_CONF = "/etc/fuse.conf"


def _check_fuse_device(config: MountConfig) -> None:
    """What the mount needs: as root, /dev/fuse; for anyone else, the setuid fusermount3 and a
    /dev/fuse they may open themselves (fusermount3 opens it with the caller's permissions)."""
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse does not exist (is the fuse kernel module loaded?)")
    if os.geteuid() == 0:
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise MountError("permission denied for /dev/fuse")
        return
    helper = shutil.which("fusermount3") or next(
        (p for p in ("/usr/bin/fusermount3", "/bin/fusermount3") if os.path.exists(p)), None)
    if helper is None:
        raise MountError("fusermount3 is not installed; ordinary users mount FUSE filesystems "
                         "through it (Debian package fuse3)")
    st = os.stat(helper)
    if st.st_uid != 0 or not st.st_mode & stat.S_ISUID:
        raise MountError(f"{helper} is not setuid root, so ordinary users cannot mount FUSE "
                         "filesystems (chmod u+s it, as the fuse3 package installs it)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        # fusermount3 opens the device with the caller's own permissions (observed:
        # "fusermount3: failed to open /dev/fuse: Permission denied" with a 0600 /dev/fuse)
        mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
        raise MountError(f"/dev/fuse (mode {mode:04o}) is not readable and writable by you, and "
                         "fusermount3 opens it with your permissions: make it 0666, as udev "
                         "does on most systems (chmod 0666 /dev/fuse)")
    if config.allow_other and not user_allow_other():
        raise MountError(f"-o allow_other needs 'user_allow_other' in {FUSE_CONF} for an "
                         "ordinary user (or mount without allow_other: private to you)")


def user_allow_other() -> bool:
    try:
        with open(FUSE_CONF) as f:
            return any(line.split("#")[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def _replace(config: MountConfig, **changes) -> MountConfig:
    values = {**config.__dict__, **changes}
    return MountConfig(**values)
