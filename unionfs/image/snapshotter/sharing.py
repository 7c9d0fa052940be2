"""Layers stored once between the snapshotter's committed snapshots and the store's layers.

Both directions make hard links of the other side's files (``cp -a --link``: directories are
new, with the same attributes; every other entry is a link), never a directory of the other
side itself, so that removing a snapshot or a layer frees nothing the other still uses:

* ``pyunion snapshotter --share-layers``: a layer containerd unpacks that the store already
  has becomes links to the store's files (``Snapshots._share_with_store``);
* ``pyunion pull``: a layer the store lacks but a committed snapshot holds is made from the
  snapshot's files (``snapshot_layer``) instead of unpacking its blob again.

Only where both hold the layer in the same form: the same chain id on the same parent chain
(a directory a layer's tar never names takes its attributes from the layers below), overlay
whiteouts and real owners (a store of root's; an ordinary user's store records owners in
xattrs instead, and containerd's unpacking writes them as they are).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from unionfs.image.store import Store

COMMITTED = "committed"


def forms_match(store: Store) -> bool:
    """Whether the store's layers have the form the snapshotter's snapshots have."""
    return store.whiteout_format == "overlay" and not store.records_owners


def link_tree(source: str, target: str) -> bool:
    """``target`` (which must not exist) made a copy of ``source`` whose non-directories are
    hard links of ``source``'s; False (and nothing left at ``target``) if that failed."""
    try:
        subprocess.run(["cp", "-a", "--link", f"{source}/.", target], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(target, ignore_errors=True)
        return False
    return True


def snapshot_content(store: Store, directory: str) -> str:
    return os.path.join(store.root, "snapshots", directory, "fs")


def committed_snapshot(store: Store, chain: list[str]) -> str | None:
    """The directory name of a committed snapshot holding the layer ``chain[-1]`` (chain
    ids, base first) on the snapshots of ``chain[:-1]``, if the store's forms match."""
    if not forms_match(store):
        return None
    parent_chain = chain[-2] if len(chain) > 1 else None
    rows = store.db.execute(
        "SELECT s.dir, s.parent, p.chain_id AS parent_chain FROM snapshotter_snapshots s "
        "LEFT JOIN snapshotter_snapshots p ON p.key = s.parent "
        "WHERE s.chain_id = ? AND s.kind = ?", (chain[-1], COMMITTED)).fetchall()
    for row in rows:
        on_its_parents = row["parent_chain"] == parent_chain if parent_chain \
            else not row["parent"]
        if on_its_parents and os.path.isdir(snapshot_content(store, row["dir"])):
            return row["dir"]
    return None


def still_committed(store: Store, directory: str, chain_id: str) -> bool:
    """Whether the snapshot in ``directory`` is still there: a removal deletes its row before
    anything of its directory, so a row found after a copy means the copy saw it whole."""
    return store.db.execute(
        "SELECT 1 FROM snapshotter_snapshots WHERE dir = ? AND chain_id = ? AND kind = ?",
        (directory, chain_id, COMMITTED)).fetchone() is not None


def snapshot_layer(store: Store, chain: list[str], target: str) -> bool:
    """``target`` made the layer ``chain[-1]`` from a committed snapshot's files (links), if
    one holds it; False if none does or it went away meanwhile (nothing is left at
    ``target`` then)."""
    directory = committed_snapshot(store, chain)
    if directory is None or not link_tree(snapshot_content(store, directory), target):
        return False
    if not still_committed(store, directory, chain[-1]):
        shutil.rmtree(target, ignore_errors=True)
        return False
    return True
