"""The benchmark's layered dataset: built once, deterministically, and cached on disk.

Layout of ``<cache>/dataset-v<VERSION>-<scale>/`` (lowers are listed top-most first: l1:l2:l3):

- ``l3/``  base: a rootfs-like tree of small files (a few bytes to 64 KiB), symlinks, hard links.
- ``l2/``  middle: overrides some base files, adds some, deletes some with kernel whiteouts
           (char 0/0, also whole directories) and replaces one directory with an opaque one
           (``trusted.overlay.opaque=y``).
- ``l1/``  top: a few large files (the largest is the sequential-read / copy-up file) and a few
           small overrides.
- ``l2-unionfs/``  ``l2`` in unionfs-fuse's own format (hard-link copy; whiteouts as
           ``.unionfs-fuse/<path>_HIDDEN~``), so unionfs-fuse shows the same tree as the others.
- ``merged/``  the merged tree as a plain directory (copied once from a read-only kernel
           overlay mount): the ``plain`` implementation and the expected tree for checks.
- ``src.tar``  a deterministic uncompressed tarball of source-like text files (untar workload).
- ``tree.txt``  the merged tree, one ``path<TAB>type<TAB>size`` line per entry (tree checks).
- ``manifest.json``  everything workloads need: paths, targets, the expected tree's digest,
                     and a fingerprint of the layers so a damaged cache is noticed and rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VERSION = 2
KiB = 1024
MiB = 1024 * KiB
SMALL_LIMIT = 1 * MiB  # regular files below this are "small files"
GREP_PATTERN = "BENCH_NEEDLE"
RM_SUBTREE = "usr/share/doc"


@dataclass(frozen=True)
class Scale:
    """How big the dataset and the write workloads are."""

    name: str
    files: int  # non-directory entries in the base layer
    large_sizes: tuple[int, ...]  # top layer's large files; the first one is "the" large file
    tar_files: int
    create_files: int
    create_dirs: int
    chmod_files: int


FULL = Scale("full", 20_000, (256 * MiB, 64 * MiB, 16 * MiB, 4 * MiB), 2_000, 5_000, 50, 1_000)
QUICK = Scale("quick", 3_000, (32 * MiB, 8 * MiB, 2 * MiB), 500, 1_000, 20, 300)

LARGE_NAMES = (
    "var/lib/images/disk.img",
    "usr/lib/x86_64-linux-gnu/libLLVM-15.so.1",
    "usr/share/fonts/opentype/noto/NotoSansCJK.ttc",
    "var/cache/apt/pkgcache.bin",
)

WORDS = (
    "the of and to in is for on that with as by this be are from or it an at not which "
    "return self value data file path name list dict error count buffer offset index node "
    "import def class if else while int char void static const struct size_t uint32_t "
    "license copyright version package debian install config option default enable disable"
).split()


@dataclass
class Dataset:
    """A built dataset on disk and its manifest."""

    root: Path
    scale: Scale
    manifest: dict[str, Any]

    @property
    def lowers(self) -> list[Path]:
        """Lower layers, top-most first."""
        return [self.root / "l1", self.root / "l2", self.root / "l3"]

    @property
    def unionfs_lowers(self) -> list[Path]:
        return [self.root / "l1", self.root / "l2-unionfs", self.root / "l3"]

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def tarball(self) -> Path:
        return self.root / "src.tar"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"


# ---------------------------------------------------------------------------------------------
# content


class Content:
    """Deterministic file contents: text slices of a word blob, or random bytes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        words = [rng.choice(WORDS) for _ in range(200_000)]
        lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
        self.text = ("\n".join(lines) + "\n").encode()

    def make(self, kind: str, size: int, header: str) -> bytes:
        if kind == "bin":
            return self.rng.randbytes(size)
        head = f"# {header}\n".encode()
        body_len = max(0, size - len(head))
        start = self.rng.randrange(0, len(self.text) - body_len - 1)
        return (head + self.text[start : start + body_len])[:size]


def small_size(rng: random.Random) -> int:
    """Log-uniform size from 8 bytes to 64 KiB (median ~700 B, mean ~7 KiB)."""
    return int(8 * (8 * KiB) ** rng.random())


# ---------------------------------------------------------------------------------------------
# the base layer: a plan of (path, kind, target) entries, then written to disk


@dataclass
class Entry:
    path: str
    kind: str  # "text" | "bin" | "symlink" | "hardlink"
    target: str = ""  # symlink target or hard-link source path


def _name(rng: random.Random, parts: int = 2) -> str:
    syll = ["lib", "gnu", "py", "x", "core", "net", "ssl", "utils", "data", "io", "fs", "gtk"]
    syll += ["perl", "compat", "tools", "common", "base", "media", "text", "sql", "auth", "zip"]
    return "-".join(rng.choice(syll) for _ in range(parts)) + str(rng.randrange(1, 99))


def _packages(rng: random.Random, n: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = _name(rng, rng.randrange(1, 4))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def plan_base(rng: random.Random, total: int) -> list[Entry]:
    """The base layer's non-directory entries (about ``total`` of them)."""
    pkgs = _packages(rng, max(40, total // 60))
    quota = {
        "python": 0.36,
        "lib": 0.10,
        "doc": 0.15,
        "locale": 0.07,
        "man": 0.07,
        "include": 0.08,
        "bin": 0.04,
        "etc": 0.06,
        "dpkg": 0.07,
    }
    out: list[Entry] = []
    for cat, frac in quota.items():
        n = int(total * frac)
        out += CATEGORY_PLANNERS[cat](rng, pkgs, n)
    # a few base-layer hard links: duplicate files elsewhere in the tree
    regular = [e for e in out if e.kind in ("text", "bin")]
    for i, src in enumerate(rng.sample(regular, max(5, total // 400))):
        d = os.path.dirname(src.path)
        out.append(Entry(f"{d}/hl{i}-{os.path.basename(src.path)}", "hardlink", src.path))
    return _dedup(out)


def _dedup(entries: list[Entry]) -> list[Entry]:
    seen: set[str] = set()
    result = []
    for e in entries:
        if e.path not in seen:
            seen.add(e.path)
            result.append(e)
    return result


def _plan_python(rng: random.Random, pkgs: list[str], n: int) -> list[Entry]:
    out: list[Entry] = []
    while len(out) < n:
        pkg = rng.choice(pkgs).replace("-", "_")
        base = f"usr/lib/python3/dist-packages/{pkg}"
        out.append(Entry(f"{base}/__init__.py", "text"))
        for _ in range(rng.randrange(3, 40)):
            sub = f"/{rng.choice(['core', 'util', 'tests', 'backends', 'io'])}" * (
                rng.random() < 0.4
            )
            out.append(Entry(f"{base}{sub}/{_name(rng, 1).replace('-', '_')}.py", "text"))
        info = f"usr/lib/python3/dist-packages/{pkg}-{rng.randrange(1, 9)}.0.dist-info"
        out += [Entry(f"{info}/{n}", "text") for n in ("METADATA", "RECORD", "WHEEL")]
    return out[:n]


def _plan_lib(rng: random.Random, pkgs: list[str], n: int) -> list[Entry]:
    out: list[Entry] = []
    d = "usr/lib/x86_64-linux-gnu"
    while len(out) < n:
        name = rng.choice(pkgs).replace("-", "")
        major = rng.randrange(0, 9)
        real = f"lib{name}.so.{major}.{rng.randrange(0, 30)}.{rng.randrange(0, 9)}"
        out.append(Entry(f"{d}/{real}", "bin"))
        out.append(Entry(f"{d}/lib{name}.so.{major}", "symlink", real))
        if rng.random() < 0.3:
            out.append(Entry(f"{d}/{name}/plugin-{_name(rng, 1)}.so", "bin"))
    return out[:n]


def _plan_doc(rng: random.Random, pkgs: list[str], n: int) -> list[Entry]:
    out: list[Entry] = []
    i = 0
    while len(out) < n:
        pkg = pkgs[i % len(pkgs)] + (f"-{i // len(pkgs)}" if i >= len(pkgs) else "")
        i += 1
        d = f"{RM_SUBTREE}/{pkg}"
        out.append(Entry(f"{d}/copyright", "text"))
        out.append(Entry(f"{d}/changelog.Debian.gz", "bin"))
        if rng.random() < 0.5:
            out.append(Entry(f"{d}/README.Debian", "text"))
        if rng.random() < 0.2:
            out += [Entry(f"{d}/examples/ex{j}.txt", "text") for j in range(rng.randrange(2, 12))]
    return out[:n]


def _plan_locale(rng: random.Random, pkgs: list[str], n: int) -> list[Entry]:
    langs = ["de", "fr", "es", "it", "ja", "pt_BR", "ru", "zh_CN", "pl", "nl", "sv", "cs"]
    out = [
        Entry(f"usr/share/locale/{rng.choice(langs)}/LC_MESSAGES/{rng.choice(pkgs)}.mo", "bin")
        for _ in range(n * 2)
    ]
    return _dedup(out)[:n]


def _plan_man(rng: random.Random, pkgs: list[str], n: int) -> list[Entry]:
    out = []
    for _ in range(n * 2):
        sec = rng.choice("11111358")
        out.append(Entry(f"usr/share/man/man{sec}/{_name(rng, 2)}.{sec}.gz", "bin"))
    return _dedup(out)[:n]


def _plan_include(rng: random.Random, pkgs: list[str], n: int) -> list[Entry]:
    out = []
    for _ in range(n * 2):
        sub = rng.choice(pkgs)
        out.append(Entry(f"usr/include/{sub}/{_name(rng, 1)}.h", "text"))
    return _dedup(out)[:n]


def _plan_bin(rng: random.Random, pkgs: list[str], n: int) -> list[Entry]:
    out: list[Entry] = []
    while len(out) < n:
        name = _name(rng, 1)
        out.append(Entry(f"usr/bin/{name}", "bin"))
        r = rng.random()
        if r < 0.15:
            out.append(Entry(f"usr/bin/{name}-alias", "hardlink", f"usr/bin/{name}"))
        elif r < 0.35:
            out.append(Entry(f"usr/bin/{name}-link", "symlink", name))
    return _dedup(out)[:n]


def _plan_etc(rng: random.Random, pkgs: list[str], n: int) -> list[Entry]:
    out: list[Entry] = [Entry("etc/os-release", "text"), Entry("etc/hostname", "text")]
    while len(out) < n:
        pkg = rng.choice(pkgs)
        r = rng.random()
        if r < 0.5:
            out.append(Entry(f"etc/{pkg}/{_name(rng, 1)}.conf", "text"))
        elif r < 0.8:
            out.append(Entry(f"etc/{pkg}.d/{rng.randrange(10, 99)}-{_name(rng, 1)}", "text"))
        else:
            out.append(Entry(f"etc/alternatives/{_name(rng, 1)}", "symlink", f"/usr/bin/{pkg}"))
    return _dedup(out)[:n]


def _plan_dpkg(rng: random.Random, pkgs: list[str], n: int) -> list[Entry]:
    out: list[Entry] = []
    for pkg in pkgs * 10:
        for ext in ("list", "md5sums", "postinst", "prerm", "conffiles"):
            out.append(Entry(f"var/lib/dpkg/info/{pkg}-{len(out)}.{ext}", "text"))
        if len(out) >= n:
            break
    return out[:n]


CATEGORY_PLANNERS = {
    "python": _plan_python,
    "lib": _plan_lib,
    "doc": _plan_doc,
    "locale": _plan_locale,
    "man": _plan_man,
    "include": _plan_include,
    "bin": _plan_bin,
    "etc": _plan_etc,
    "dpkg": _plan_dpkg,
}


def write_entries(root: Path, entries: list[Entry], content: Content) -> None:
    """Create the planned entries under ``root`` (hard links after their sources)."""
    rng = content.rng
    for e in sorted(entries, key=lambda e: (e.kind == "hardlink", e.path)):
        p = root / e.path
        p.parent.mkdir(parents=True, exist_ok=True)
        if e.kind == "symlink":
            os.symlink(e.target, p)
        elif e.kind == "hardlink":
            os.link(root / e.target, p)
        else:
            p.write_bytes(content.make(e.kind, small_size(rng), e.path))
            if e.path.startswith("usr/bin/") or ".so" in e.path:
                p.chmod(0o755)


def _set_tree_mtimes(root: Path) -> None:
    """Fixed mtimes, so the dataset does not depend on when it was built."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (1_700_000_000, 1_700_000_000),
                     follow_symlinks=False)
    os.utime(root, (1_700_000_000, 1_700_000_000))


# ---------------------------------------------------------------------------------------------
# middle and top layers


def whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def build_middle(l2: Path, base: list[Entry], rng: random.Random, content: Content) -> None:
    """Overrides (4%), new files (2%), file whiteouts (3%), 2 dir whiteouts, 1 opaque dir."""
    regular = sorted(e.path for e in base if e.kind in ("text", "bin"))
    pydirs = sorted({"/".join(p.split("/")[:5]) for p in regular
                     if p.startswith("usr/lib/python3/dist-packages/")})
    gone_dirs = set(rng.sample(pydirs[:-1], 2))
    opaque_dir = pydirs[-1]
    special = gone_dirs | {opaque_dir}
    candidates = [p for p in regular if "/".join(p.split("/")[:5]) not in special]
    chosen = rng.sample(candidates, int(len(regular) * 0.07))
    n_over = int(len(regular) * 0.04)
    for path in chosen[:n_over]:
        p = l2 / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.make("text", small_size(rng), "override " + path))
    for path in chosen[n_over:]:
        whiteout(l2 / path)
    for d in gone_dirs:
        whiteout(l2 / d)
    (l2 / opaque_dir).mkdir(parents=True)
    os.setxattr(l2 / opaque_dir, "trusted.overlay.opaque", b"y")
    for i in range(5):
        (l2 / opaque_dir / f"replaced{i}.py").write_bytes(content.make("text", 2000, opaque_dir))
    for i in range(int(len(regular) * 0.02)):
        d = os.path.dirname(rng.choice(candidates))
        p = l2 / d / f"added-{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.make("text", small_size(rng), "added"))
    for i in range(20):
        p = l2 / "opt/newapp/share" / f"asset{i}.dat"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.make("bin", small_size(rng), ""))


def build_top(l1: Path, scale: Scale, rng: random.Random, content: Content) -> None:
    for name, size in zip(LARGE_NAMES, scale.large_sizes, strict=False):
        p = l1 / name
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            for off in range(0, size, MiB):
                f.write(rng.randbytes(min(MiB, size - off)))
    for name in ("etc/os-release", "etc/hostname"):
        p = l1 / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.make("text", 200, "top " + name))


def convert_for_unionfs(l2: Path, out: Path) -> None:
    """Hard-link copy of ``l2`` with kernel whiteouts/opaque dirs in unionfs-fuse form.

    unionfs-fuse 1.0 reads ``<branch>/.unionfs-fuse/<path>_HIDDEN~`` in any branch and hides
    that path in the branches below (a hidden *directory* hides a whole subtree).
    """
    subprocess.run(["cp", "-al", str(l2), str(out)], check=True)
    meta = out / ".unionfs-fuse"
    for dirpath, dirnames, filenames in os.walk(out):
        rel = os.path.relpath(dirpath, out)
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            st = p.lstat()
            relp = os.path.normpath(os.path.join(rel, name))
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                p.unlink()
                hidden = meta / (relp + "_HIDDEN~")
                hidden.parent.mkdir(parents=True, exist_ok=True)
                # which kind was deleted does not matter for hiding; a dir hides a subtree
                hidden.mkdir()
            elif stat.S_ISDIR(st.st_mode) and _is_opaque(l2 / relp):
                hidden = meta / (relp + "_HIDDEN~")
                hidden.parent.mkdir(parents=True, exist_ok=True)
                hidden.mkdir()


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque") == b"y"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# tarball, merged tree, manifest


def build_tarball(path: Path, n: int, rng: random.Random, content: Content) -> None:
    """A source-like tree of ``n`` text files; ~5% contain GREP_PATTERN."""
    exts = [".c", ".h", ".py", ".md", ".txt", ".rs"]
    mods = [f"module{i:02d}" for i in range(max(4, n // 60))]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        names = sorted({f"project-1.0/src/{rng.choice(mods)}/{_name(rng, 1)}{rng.choice(exts)}"
                        for _ in range(n * 2)})[:n]
        dirs = sorted({os.path.dirname(p) for p in names} | {"project-1.0", "project-1.0/src"})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for i, name in enumerate(names):
            data = content.make("text", int(200 * (160 ** rng.random())), name)
            if i % 20 == 0:
                data += f"\n/* {GREP_PATTERN} {i} */\n".encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


def copy_merged(lowers: list[Path], dest: Path, mnt: Path) -> None:
    """Copy the merged view (a read-only kernel overlay of ``lowers``) to ``dest``."""
    mnt.mkdir()
    opts = "lowerdir=" + ":".join(str(p) for p in lowers)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True)
    try:
        subprocess.run(["cp", "-a", f"{mnt}/.", str(dest)], check=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    mnt.rmdir()


def tree_lines(root: Path) -> list[str]:
    """One ``path type size`` line per entry below ``root``, sorted; what every mount must show.

    Sizes of directories are left out (they differ between filesystems).
    """
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            relp = os.path.normpath(os.path.join(rel, name))
            st = os.lstat(os.path.join(dirpath, name))
            kind = stat.S_IFMT(st.st_mode)
            size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
            lines.append(f"{relp}\t{kind:o}\t{size}")
    lines.sort()
    return lines


def fingerprint(paths: list[Path]) -> str:
    """Digest of names, types, modes, sizes and mtimes below ``paths`` (detects any change)."""
    h = hashlib.sha256()
    for root in paths:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root.parent)
            for name in sorted(dirnames + filenames) + ["."]:
                st = os.lstat(os.path.join(dirpath, name))
                h.update(f"{rel}/{name} {st.st_mode} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def make_manifest(root: Path, scale: Scale) -> dict[str, Any]:
    merged = root / "merged"
    lines = tree_lines(merged)
    (root / "tree.txt").write_text("\n".join(lines) + "\n")
    paths, small, from_base = [], [], []
    for line in lines:
        path, kind, size = line.split("\t")
        paths.append(path)
        if int(kind, 8) == stat.S_IFREG and int(size) < SMALL_LIMIT:
            small.append(path)
            st = os.lstat(merged / path)
            if st.st_nlink == 1 and not any(os.path.lexists(root / layer / path)
                                            for layer in ("l1", "l2")):
                from_base.append(path)
    step = max(1, len(from_base) // scale.chmod_files)
    rm_count = sum(1 for p in paths if p.startswith(RM_SUBTREE + "/"))
    return {
        "version": VERSION,
        "scale": asdict(scale),
        "paths": paths,
        "small_files": small,
        "large_file": LARGE_NAMES[0],
        "large_files": [p for p, k, size in (ln.split("\t") for ln in lines)
                        if int(k, 8) == stat.S_IFREG and int(size) >= SMALL_LIMIT],
        "large_size": scale.large_sizes[0],
        "append_file": LARGE_NAMES[0],
        "chmod_files": from_base[::step][: scale.chmod_files],
        "rm_subtree": RM_SUBTREE,
        "rm_subtree_entries": rm_count,
        "tarball": "src.tar",
        "grep_pattern": GREP_PATTERN,
        "tree_digest": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        "counts": {
            "entries": len(paths),
            "small_files": len(small),
            "dirs": sum(1 for ln in lines if int(ln.split("\t")[1], 8) == stat.S_IFDIR),
            "symlinks": sum(1 for ln in lines if int(ln.split("\t")[1], 8) == stat.S_IFLNK),
        },
    }


def build(root: Path, scale: Scale) -> None:
    """Build the whole dataset into ``root`` (which must not exist)."""
    rng = random.Random(f"pyunion-bench-{VERSION}-{scale.name}")
    content = Content(rng)
    root.mkdir(parents=True)
    base = plan_base(rng, scale.files)
    write_entries(root / "l3", base, content)
    build_middle(root / "l2", base, rng, content)
    build_top(root / "l1", scale, rng, content)
    for layer in ("l1", "l2", "l3"):
        _set_tree_mtimes(root / layer)
    convert_for_unionfs(root / "l2", root / "l2-unionfs")
    build_tarball(root / "src.tar", scale.tar_files, rng, content)
    lowers = [root / "l1", root / "l2", root / "l3"]
    copy_merged(lowers, root / "merged", root / "mnt-build")
    manifest = make_manifest(root, scale)
    manifest["fingerprint"] = fingerprint(_protected(root))
    (root / "manifest.json").write_text(json.dumps(manifest))


def _protected(root: Path) -> list[Path]:
    return [root / n for n in ("l1", "l2", "l3", "l2-unionfs", "merged")]


def ensure(cache: Path, scale: Scale, log: Any = print) -> Dataset:
    """The cached dataset for ``scale``, built (or rebuilt, if damaged) as needed."""
    root = cache / f"dataset-v{VERSION}-{scale.name}"
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if fingerprint(_protected(root)) == manifest["fingerprint"]:
            return Dataset(root, scale, manifest)
        log(f"dataset {root} was modified since it was built: rebuilding it")
    if root.exists():
        _assert_nothing_mounted_below(root)
        shutil.rmtree(root)
    tmp = root.with_name(root.name + ".building")
    if tmp.exists():
        _assert_nothing_mounted_below(tmp)
        shutil.rmtree(tmp)
    log(f"building dataset {root} ({scale.name}: {scale.files} base files) ...")
    build(tmp, scale)
    tmp.rename(root)
    manifest = json.loads(manifest_path.read_text())
    return Dataset(root, scale, manifest)


def _assert_nothing_mounted_below(path: Path) -> None:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if (point + "/").startswith(prefix):
                raise RuntimeError(f"{point} is mounted below {path}; not deleting it")
