"""Layers stored once between the snapshotter's committed snapshots and the store's layers.

Both directions make hard links of the other side's files, never take a directory of the other
side itself, so that removing a snapshot or a layer frees nothing the other still uses:

* ``pyunion snapshotter --share-layers``: a layer containerd unpacks that the store already
  has becomes a copy of the store's layer whose non-directories are links (``link_tree``;
  ``Snapshots._share_with_store``);
* ``pyunion pull``: a layer the store lacks but a committed snapshot holds is unpacked from its
  blob as ever, except that its regular files are links of the snapshot's, checked against
  their tar entries (``LayerWriter.files_from``; ``Puller._add_from_snapshot``): its
  directories, whiteouts and opaque markers are pyunion's own unpacking's, where containerd's
  (through a pyunion mount) may differ in form (whiteouts of each entry of a directory the
  layer makes opaque, the mtime of a directory the tar does not name).

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
