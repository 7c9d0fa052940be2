"""``push``: an image from the store to a registry, uploading only the blobs it lacks.

Each blob is checked with HEAD first; a missing one is mounted from another repository of the
same registry where the store knows one that has it, else uploaded (one streamed PUT). The
manifest goes last, exactly as stored, so the registry's digest is the store's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import trio

from unionfs.image.archive.convert import ConvertedImage
from unionfs.image.progress import Progress
from unionfs.image.reference import Reference
from unionfs.image.registry.client import RegistryClient, RegistryError, repository_scope
from unionfs.image.store import Store

PARALLEL_UPLOADS = 3
CHUNK = 1 << 20


@dataclass
class Blob:
    digest: str
    size: int
    label: str  # what the progress shows (diff_id for layers, the digest for the config)


@dataclass
class PushResult:
    manifest_digest: str
    manifest_size: int
    uploaded: int


async def _file_chunks(path: str) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


class Pusher:
    def __init__(self, store: Store, client: RegistryClient, ref: Reference, image_id: str,
                 progress: Progress, converted: ConvertedImage | None = None) -> None:
        self.store = store
        self.converted = converted  # pushed instead of the stored image (push --format)
        self.client = client
        self.ref = ref
        self.image_id = image_id
        self.progress = progress
        self.scope = repository_scope(ref.path, "pull,push")
        self.uploaded = 0

    def _blobs(self) -> list[Blob]:
        if self.converted is not None:
            return [Blob(b.digest, b.size, b.label) for b in self.converted.blobs]
        rows = self.store.db.execute(
            "SELECT il.diff_id, il.blob_digest, b.size FROM image_layers il "
            "JOIN blobs b ON b.digest = il.blob_digest WHERE il.image_id = ? "
            "ORDER BY il.position", (self.image_id,)).fetchall()
        blobs = {r["blob_digest"]: Blob(r["blob_digest"], r["size"], r["diff_id"]) for r in rows}
        config_size = os.path.getsize(self.store.blob_path(self.image_id))
        blobs[self.image_id] = Blob(self.image_id, config_size, self.image_id)
        return list(blobs.values())

    def _mount_sources(self) -> list[str]:
        """Other repositories of this registry that the store knows hold this image's blobs."""
        prefix = self.ref.domain + "/"
        sources = set()
        for row in self.store.db.execute(
                "SELECT name FROM repo_digests WHERE name LIKE ?", (prefix + "%",)):
            repository = row["name"].partition("@")[0][len(prefix):]
            if repository != self.ref.path:
                sources.add(repository)
        return sorted(sources)

    async def _exists(self, blob: Blob) -> bool:
        async with self.client.request("HEAD", f"/v2/{self.ref.path}/blobs/{blob.digest}",
                                       scope=self.scope, ok=(200, 404)) as response:
            return response.status_code == 200

    async def _try_mount(self, blob: Blob, source: str) -> str | None:
        """Cross-repository mount: None when mounted, else the upload location to use."""
        scope = f"{self.scope} {repository_scope(source, 'pull')}"
        async with self.client.request(
                "POST", f"/v2/{self.ref.path}/blobs/uploads/", scope=scope,
                params={"mount": blob.digest, "from": source}, ok=(201, 202)) as response:
            if response.status_code == 201:
                return None
            return response.headers.get("Location")

    async def _start_upload(self) -> str:
        async with self.client.request("POST", f"/v2/{self.ref.path}/blobs/uploads/",
                                       scope=self.scope, ok=(202,)) as response:
            location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.client.domain}: the upload answer has no Location")
        return location

    async def _upload(self, blob: Blob, location: str) -> None:
        url = httpx.URL(await self.client.base_url()).join(location)
        url = url.copy_merge_params({"digest": blob.digest})
        path = self.converted.path_of(blob.digest) if self.converted is not None \
            else self.store.blob_path(blob.digest)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in _file_chunks(path):
                self.progress.layer_advanced(blob.label, len(chunk))
                yield chunk

        self.progress.layer_started(blob.label, blob.size)
        async with self.client.request(
                "PUT", str(url), scope=self.scope, content=body(),
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(blob.size)}, ok=(201, 204)):
            pass
        self.uploaded += 1

    async def _push_blob(self, blob: Blob, limit: trio.Semaphore) -> None:
        async with limit:
            if await self._exists(blob):
                self.progress.layer_done(blob.label, "Layer already exists")
                return
            location = None
            for source in self._mount_sources():
                location = await self._try_mount(blob, source)
                if location is None:
                    self.progress.layer_done(blob.label, f"Mounted from {source}")
                    return
                break  # the registry declined the mount and opened an upload instead
            await self._upload(blob, location or await self._start_upload())
            self.progress.layer_done(blob.label, "Pushed")

    async def push(self) -> PushResult:
        row = self.store.db.execute(
            "SELECT manifest_digest, manifest_media_type FROM images WHERE id = ?",
            (self.image_id,)).fetchone()
        if self.converted is not None:
            manifest = self.converted.manifest
            row = {"manifest_digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                   "manifest_media_type": self.converted.media_type}
        else:
            with open(self.store.blob_path(row["manifest_digest"]), "rb") as f:
                manifest = f.read()
        limit = trio.Semaphore(PARALLEL_UPLOADS)
        async with trio.open_nursery() as nursery:
            for blob in self._blobs():
                nursery.start_soon(self._push_blob, blob, limit)
        tag = self.ref.tag or "latest"
        async with self.client.request(
                "PUT", f"/v2/{self.ref.path}/manifests/{tag}", scope=self.scope,
                content=manifest, headers={"Content-Type": row["manifest_media_type"]},
                ok=(201, 200, 202)) as response:
            served = response.headers.get("Docker-Content-Digest")
        if served and served != row["manifest_digest"]:
            raise RegistryError(f"{self.client.domain}: the registry stored the manifest as "
                                f"{served}, not {row['manifest_digest']}")
        if self.converted is not None:  # not the stored image: nothing to record
            return PushResult(row["manifest_digest"], len(manifest), self.uploaded)
        with self.store.transaction() as db:
            db.execute("INSERT OR REPLACE INTO repo_digests VALUES (?, ?)",
                       (f"{self.ref.repository}@{row['manifest_digest']}", self.image_id))
        return PushResult(row["manifest_digest"], len(manifest), self.uploaded)
