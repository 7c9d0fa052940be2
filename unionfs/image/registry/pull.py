"""``pull``: an image from a registry into the store, fetching only the layers it lacks.

The manifest is resolved with every manifest media type accepted (an index picks this machine's
platform), then the config, then each missing layer: downloaded (a few at once) into
``downloads/<hex>.partial``, verified against its descriptor while streaming, resumed with a
Range request after a broken connection or a killed pull, and unpacked in a worker thread as
soon as it is complete, the same way ``load`` unpacks. The image is recorded last, with its
repo digest.

A layer that a committed snapshot of ``pyunion snapshotter`` holds (same chain id, same
parents: an image ``ctr`` pulled into this store) is stored once: its blob is downloaded and
unpacked as ever (the store keeps every layer's blob, for ``save`` and ``push``), but its
regular files are hard links of the snapshot's instead of written again
(unionfs/image/snapshotter/sharing.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import httpx
import trio

from unionfs.image import mediatypes as mt
from unionfs.image.archive import estargz
from unionfs.image.archive.formats import (
    ImageSpec,
    LayerSpec,
    Platform,
    parse_json,
    validate_config,
)
from unionfs.image.archive.sources import DirectorySource
from unionfs.image.archive.unpack import LayerError, unpack_layer
from unionfs.image.early import EarlyFetch
from unionfs.image.errors import ImageError
from unionfs.image.lazy import (
    LazyToc,
    RangeIgnored,
    add_lazy_layer,
    complete_lazy_layer,
    is_incomplete,
)
from unionfs.image.progress import Progress
from unionfs.image.reference import Reference
from unionfs.image.registry.client import (
    MANIFEST_ACCEPT,
    RegistryClient,
    RegistryError,
    repository_scope,
)
from unionfs.image.snapshotter import sharing
from unionfs.image.store import Store, digest_hex
from unionfs.image.store.adding import AddedLayer, ImageAdder, chain_ids
from unionfs.image.store.locks import FileLock

PARALLEL_DOWNLOADS = 3
DOWNLOAD_ATTEMPTS = 5
MAX_TOC_BYTES = 64 << 20
# The blob's tail fetched for an eStargz footer: it holds the TOC too when the layer has up to
# some 1,200 files (a compressed TOC takes some 50 bytes a file), so one request brings both.
# A TOC that starts before it is fetched from its start to the tail's: a tail smaller than the
# TOC costs nothing; one larger costs the file data before the TOC (64 KiB: 5 ms at 100 Mbit/s,
# less than a round trip).
TOC_TAIL_BYTES = 64 << 10


@dataclass
class PullResult:
    image_id: str
    manifest_digest: str
    downloaded: bool          # False when every layer was already in the store
    bytes_received: int
    updated: bool = False     # something new: layers fetched, a new image, or the tag moved


async def read_limited(response: httpx.Response, limit: int, what: str) -> bytes:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise RegistryError(f"{what} is larger than the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Puller:
    def __init__(self, store: Store, client: RegistryClient, ref: Reference,
                 platform: Platform | None, progress: Progress, *, lazy: bool = False) -> None:
        self.store = store
        self.lazy = lazy  # eStargz layers made present from their TOCs (unionfs.image.lazy)
        self.lazy_rate: int | None = None  # recorded for the mounts' background fetch
        self.tocs: dict[str, LazyToc] = {}  # by blob digest: the layers pulled lazily
        # (run/create --lazy) the image's config -> the paths its container opens first,
        # fetched while the lazy layers' directories are made (unionfs.image.early)
        self.first_paths: Callable[[dict], list[list[str]]] | None = None
        self.early: EarlyFetch | None = None
        self.client = client
        self.ref = ref
        self.path = ref.path
        self.scope = repository_scope(ref.path, "pull")
        self.platform = platform
        self.repo_digest = ""
        self.progress = progress
        self.downloads = os.path.join(store.root, "downloads")
        # awaited after each piece of a blob download, with its size: a background download
        # (the rest of a lazy layer, unionfs.fs.lazy) keeps to its rate with it
        self.throttle: Callable[[int], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ documents

    async def fetch_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index, verified."""
        limit = self.store.limits.max_json_bytes
        async with self.client.request("GET", f"/v2/{self.path}/manifests/{reference}",
                                       scope=self.scope,
                                       headers={"Accept": MANIFEST_ACCEPT}) as response:
            data = await read_limited(response, limit, f"manifest {reference}")
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        digest = _digest(data)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"{self.client.domain}: manifest digest mismatch (asked for "
                                f"{reference}, got {digest})")
        document = parse_json(data, f"{self.client.domain}: manifest {reference}")
        if not isinstance(document, dict):
            raise RegistryError(f"{self.client.domain}: manifest {reference} is not an object")
        body_type = document.get("mediaType")
        if media_type in ("", "application/json", "text/plain") and isinstance(body_type, str):
            media_type = body_type
        if isinstance(body_type, str) and body_type != media_type:
            raise RegistryError(f"{self.client.domain}: manifest {reference} says it is "
                                f"{body_type} but was served as {media_type}")
        if media_type == mt.DOCKER_SCHEMA1 or document.get("schemaVersion") == 1:
            raise RegistryError(f"{self.client.domain}: {self.ref.name} has only a Docker "
                                "schema 1 manifest, which is not supported")
        return data, media_type, digest

    async def resolve(self) -> tuple[bytes, str, str, dict]:
        """The image manifest for this machine's platform (through an index if need be).

        ``self.repo_digest`` is set to the digest the reference resolves to (the index's, for
        a multi-platform image), as docker records it."""
        wanted = self.ref.digest or self.ref.tag or "latest"
        seen: set[str] = set()
        for _ in range(3):
            data, media_type, digest = await self.fetch_manifest(wanted)
            if not seen:
                self.repo_digest = digest
            if digest in seen:
                raise RegistryError(f"{self.client.domain}: the index {digest} points at itself")
            seen.add(digest)
            document = json.loads(data)
            if media_type in mt.MANIFESTS:
                return data, media_type, digest, document
            if media_type not in mt.INDEXES:
                raise RegistryError(f"{self.client.domain}: unknown manifest media type "
                                    f"{media_type!r}")
            wanted = self._choose(document)["digest"]
        raise RegistryError(f"{self.client.domain}: indexes nested too deeply")

    def _choose(self, index: dict) -> dict:
        platform = self.platform or Platform.host()
        manifests = index.get("manifests")
        if not isinstance(manifests, list) or len(manifests) > 1000:
            raise RegistryError(f"{self.client.domain}: malformed image index")
        for descriptor in manifests:
            if isinstance(descriptor, dict) and isinstance(descriptor.get("platform"), dict) \
                    and platform.matches(descriptor["platform"]) \
                    and isinstance(descriptor.get("digest"), str):
                return descriptor
        offered = sorted({"/".join(str(d["platform"].get(k)) for k in ("os", "architecture")
                                   if d["platform"].get(k))
                          for d in manifests if isinstance(d, dict)
                          and isinstance(d.get("platform"), dict)})
        raise RegistryError(f"{self.ref.name}: no image for platform {platform} (the index "
                            f"offers {', '.join(offered) or 'none'})")

    async def fetch_config(self, descriptor: dict) -> bytes:
        digest = descriptor["digest"]
        if descriptor.get("size", 0) > self.store.limits.max_json_bytes:
            raise RegistryError(f"{self.ref.name}: the config is declared {descriptor['size']:,}"
                                " bytes, more than the limit")
        async with self.client.request("GET", f"/v2/{self.path}/blobs/{digest}",
                                       scope=self.scope) as response:
            data = await read_limited(response, self.store.limits.max_json_bytes, "config")
        if _digest(data) != digest:
            raise RegistryError(f"{self.client.domain}: config digest mismatch (expected "
                                f"{digest}, got {_digest(data)})")
        return data

    # ------------------------------------------------------------------ blobs

    async def download(self, layer: LayerSpec) -> str:
        """The verified blob in ``downloads/``, fetched (or resumed) as needed."""
        assert layer.digest is not None and layer.size is not None
        os.makedirs(self.downloads, mode=0o700, exist_ok=True)
        name = digest_hex(layer.digest)
        final = os.path.join(self.downloads, name)
        lock = FileLock(final + ".lock", remove_when_free=True)
        await trio.to_thread.run_sync(lambda: lock.acquire(exclusive=True),
                                      abandon_on_cancel=True)
        try:
            if os.path.exists(final):
                return final
            await self._fetch_to(final + ".partial", layer)
            os.rename(final + ".partial", final)
            return final
        finally:
            lock.release()

    async def _fetch_to(self, partial: str, layer: LayerSpec) -> None:
        assert layer.digest is not None and layer.size is not None
        hasher = hashlib.sha256()
        offset = 0
        with contextlib.suppress(FileNotFoundError), open(partial, "rb") as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
                offset += len(chunk)
        if offset > layer.size:
            os.unlink(partial)
            hasher, offset = hashlib.sha256(), 0
        self.progress.layer_started(layer.diff_id, layer.size)
        if offset:
            self.progress.layer_advanced(layer.diff_id, offset)
        for attempt in range(DOWNLOAD_ATTEMPTS):
            if offset == layer.size:
                break
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                async with self.client.request("GET", f"/v2/{self.path}/blobs/{layer.digest}",
                                               scope=self.scope, headers=headers,
                                               ok=(200, 206)) as response:
                    if response.status_code == 200 and offset:
                        hasher, offset = hashlib.sha256(), 0  # no range support: start again
                        with open(partial, "wb"):
                            pass
                    with open(partial, "ab") as out:
                        piece_size = (64 << 10) if self.throttle else (1 << 20)
                        async for chunk in response.aiter_bytes(piece_size):
                            offset += len(chunk)
                            if offset > layer.size:
                                raise RegistryError(f"layer {layer.digest[:19]} is larger than "
                                                    f"its descriptor's {layer.size:,} bytes")
                            out.write(chunk)
                            hasher.update(chunk)
                            self.client.bytes_received += len(chunk)
                            self.progress.layer_advanced(layer.diff_id, len(chunk))
                            if self.throttle is not None:
                                out.flush()  # what a killed daemon leaves is resumed
                                await self.throttle(len(chunk))
            except (httpx.TransportError, httpx.StreamError) as e:
                if attempt == DOWNLOAD_ATTEMPTS - 1:
                    raise RegistryError(f"{self.client.domain}: downloading {layer.digest[:19]}"
                                        f" failed: {e or type(e).__name__}") from None
                await trio.sleep(0.5 * 2 ** attempt)
        if offset != layer.size:
            raise RegistryError(f"{self.client.domain}: layer {layer.digest[:19]} ended at "
                                f"{offset:,} of {layer.size:,} bytes")
        if "sha256:" + hasher.hexdigest() != layer.digest:
            os.unlink(partial)
            raise RegistryError(f"{self.client.domain}: layer blob digest mismatch (expected "
                                f"{layer.digest}, got sha256:{hasher.hexdigest()})")

    # ------------------------------------------------------------------ lazy layers

    async def _range(self, digest: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (inclusive) of a blob; RangeIgnored on a whole answer."""
        async with self.client.request("GET", f"/v2/{self.path}/blobs/{digest}",
                                       scope=self.scope, ok=(200, 206),
                                       headers={"Range": f"bytes={start}-{end}"}) as response:
            if response.status_code == 200:
                raise RangeIgnored(f"{self.client.domain} ignores Range requests")
            data = await read_limited(response, end - start + 1, f"blob {digest[:19]}")
        self.client.bytes_received += len(data)
        if len(data) != end - start + 1:
            raise RegistryError(f"{self.client.domain}: a Range request for {digest[:19]} "
                                f"answered {len(data):,} bytes, not {end - start + 1:,}")
        return data

    async def fetch_toc(self, descriptor: dict, toc_digest: str) -> LazyToc:
        """An eStargz layer's TOC, from its footer, checked against ``toc_digest``.

        One Range request for the blob's last ``TOC_TAIL_BYTES`` (or the whole blob, if
        smaller): the footer, and the TOC with it when the TOC starts within them. Only a TOC
        that starts before the tail costs a second request, for the bytes from its start to
        the tail's (as stargz-snapshotter reads a layer's footer: with a tail that usually
        holds the TOC too)."""
        digest, size = descriptor["digest"], descriptor["size"]
        try:
            if size < estargz.FOOTER_SIZE:
                raise estargz.EstargzError("the blob is smaller than an eStargz footer")
            tail_start = max(0, size - TOC_TAIL_BYTES)
            tail = await self._range(digest, tail_start, size - 1)
            offset = estargz.parse_footer(tail[-estargz.FOOTER_SIZE:])
            toc_end = size - estargz.FOOTER_SIZE
            if not 0 <= offset < toc_end or toc_end - offset > MAX_TOC_BYTES:
                raise estargz.EstargzError(f"the footer's TOC offset {offset} is out of range")
            member = tail[max(offset - tail_start, 0):-estargz.FOOTER_SIZE]
            if offset < tail_start:  # the TOC's first bytes are before the tail
                member = await self._range(digest, offset, tail_start - 1) + member
            toc = LazyToc(offset, *estargz.parse_toc_member(member, toc_digest))
            toc.files()  # a malformed chunk list fails here
        except estargz.EstargzError as e:
            raise RegistryError(f"{self.ref.name}: layer {digest[:19]}: {e}") from None
        declared = (descriptor.get("annotations") or {}).get(
            estargz.UNCOMPRESSED_SIZE_ANNOTATION, "")
        toc.tar_size = int(declared) if isinstance(declared, str) and declared.isdigit() \
            else None
        return toc

    async def _fetch_tocs(self, descriptors: list[dict], layers: list[LayerSpec]) -> None:
        """The TOC of every eStargz layer the store lacks (the others are pulled whole); all
        of them pulled whole if the registry ignores Range."""
        chain = chain_ids([layer.diff_id for layer in layers])
        try:
            for i, (descriptor, layer) in enumerate(zip(descriptors, layers, strict=True)):
                annotations = descriptor.get("annotations")
                toc_digest = annotations.get(estargz.TOC_DIGEST_ANNOTATION) \
                    if isinstance(annotations, dict) else None
                if isinstance(toc_digest, str) and layer.digest \
                        and not self.store.layer_recorded(chain[i]):
                    self.tocs[layer.digest] = await self.fetch_toc(descriptor, toc_digest)
        except RangeIgnored as e:
            print(f"pyunion: {e}: pulling {self.ref.name} whole, not lazily", file=sys.stderr,
                  flush=True)
            self.tocs = {}

    def _lazy_source(self) -> dict:
        source = {"registry": self.client.domain, "repository": self.path,
                  "insecure": self.client.insecure}
        return source if self.lazy_rate is None else {**source, "rate": self.lazy_rate}

    # ------------------------------------------------------------------ the whole pull

    def _layers(self, manifest: dict, diff_ids: list[str]) -> list[LayerSpec]:
        layers = []
        for descriptor, diff_id in zip(manifest["layers"], diff_ids, strict=True):
            if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str)\
                    or not isinstance(descriptor.get("size"), int):
                raise RegistryError(f"{self.ref.name}: malformed layer descriptor")
            media_type = descriptor.get("mediaType", "")
            if mt.is_foreign(media_type):
                raise RegistryError(f"{self.ref.name}: foreign (non-distributable) layers are "
                                    "not supported")
            if media_type not in mt.LAYERS:
                raise RegistryError(f"{self.ref.name}: unknown layer media type {media_type!r}")
            if descriptor["size"] < 0 or descriptor["size"] > self.store.limits.max_layer_bytes:
                raise RegistryError(f"{self.ref.name}: a layer is declared "
                                    f"{descriptor['size']:,} bytes, more than the limit")
            digest_hex(descriptor["digest"])
            layers.append(LayerSpec(digest_hex(descriptor["digest"]), media_type,
                                    descriptor["digest"], descriptor["size"], diff_id))
        return layers

    def _already_stored(self, manifest_digest: str) -> str | None:
        """The image with this manifest, if the store has it whole (its layers too)."""
        row = self.store.db.execute("SELECT id FROM images WHERE manifest_digest = ?",
                                    (manifest_digest,)).fetchone()
        if row is None:
            return None
        for layer in self.store.db.execute(
                "SELECT chain_id FROM image_layers WHERE image_id = ?", (row["id"],)):
            if not os.path.isdir(self.store.layer_path(layer["chain_id"])) or (
                    not self.lazy and is_incomplete(self.store, layer["chain_id"])):
                return None
        return row["id"]

    def _tagged_image(self) -> str | None:
        """The image the reference's tag names in the store before this pull."""
        if not self.ref.tag:
            return None
        row = self.store.db.execute("SELECT image_id FROM tags WHERE name = ?",
                                    (self.ref.name,)).fetchone()
        return row["image_id"] if row else None

    async def pull(self) -> PullResult:
        data, media_type, manifest_digest, manifest = await self.resolve()
        stored = self._already_stored(manifest_digest)
        before = self._tagged_image()
        if stored is not None:  # up to date: no config or layer is fetched again
            with self.store.transaction() as db:
                if self.ref.tag:
                    db.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)",
                               (self.ref.name, stored, time.time()))
            self._record_repo_digest(stored, self.repo_digest)
            # docker's "Downloaded newer image" whenever the tag now names another image
            return PullResult(stored, self.repo_digest, False, self.client.bytes_received,
                              updated=bool(self.ref.tag) and before != stored)
        if not isinstance(manifest.get("layers"), list) or not isinstance(
                manifest.get("config"), dict):
            raise RegistryError(f"{self.ref.name}: the manifest lacks config or layers")
        if len(manifest["layers"]) > self.store.limits.max_layers:
            raise RegistryError(f"{self.ref.name}: {len(manifest['layers'])} layers, more than "
                                f"the limit of {self.store.limits.max_layers}")
        config_bytes = await self.fetch_config(manifest["config"])
        config = parse_json(config_bytes, f"{self.ref.name}: config")
        diff_ids = validate_config(config, len(manifest["layers"]), self.ref.name,
                                   self.store.limits)
        layers = self._layers(manifest, diff_ids)
        if self.lazy:
            await self._fetch_tocs(manifest["layers"], layers)
            if self.tocs and self.first_paths is not None:
                self.early = EarlyFetch({layer.digest: self.tocs[layer.digest]
                                         for layer in layers if layer.digest in self.tocs},
                                        self.first_paths(config))
        names = [self.ref.name] if self.ref.tag else []
        spec = ImageSpec(config_bytes, config, layers, names, data, media_type)
        with self.store.adding() as space:
            adder = ImageAdder(self.store, space, self.progress)
            added, downloaded = await self._add_layers(adder, layers)
            image_id = await trio.to_thread.run_sync(adder.record, spec, added)
        self._record_repo_digest(image_id, self.repo_digest)
        return PullResult(image_id, self.repo_digest, downloaded, self.client.bytes_received,
                          updated=True)  # an image the store did not have whole

    async def _add_layers(self, adder: ImageAdder,
                          layers: list[LayerSpec]) -> tuple[list[AddedLayer], bool]:
        chain = chain_ids([layer.diff_id for layer in layers])
        done = [threading.Event() for _ in layers]
        failed = threading.Event()
        added: list[AddedLayer | None] = [None] * len(layers)
        downloads = trio.Semaphore(PARALLEL_DOWNLOADS)
        fetched = []

        def parents_done(position: int) -> Callable[[], None]:
            def wait() -> None:
                for event in done[:position]:
                    event.wait()
                    if failed.is_set():
                        raise ImageError("stopped: another layer of the image failed")
            return wait

        async def one(i: int, layer: LayerSpec) -> None:
            try:
                if layer.digest in self.tocs:
                    added[i] = await trio.to_thread.run_sync(
                        add_lazy_layer, self.store, adder.space, layer, chain[:i + 1],
                        self.tocs[layer.digest], self._lazy_source(), self.ref.name,
                        parents_done(i), self.early)
                    self.progress.layer_done(layer.diff_id, "Pulled lazily")
                    return
                if is_incomplete(self.store, chain[i]) and self.lazy:  # lazy already
                    added[i] = AddedLayer(chain[i], layer.diff_id, layer.digest or "",
                                          layer.media_type, layer.size or 0)
                    self.progress.layer_done(layer.diff_id, "Already exists (lazy)")
                    return
                if is_incomplete(self.store, chain[i]):  # lazy before: the blob completes it
                    async with downloads:
                        path = await self.download(layer)
                    fetched.append(path)
                    added[i] = await trio.to_thread.run_sync(
                        complete_lazy_layer, self.store, layer, chain[i], path)
                    self.progress.layer_done(layer.diff_id, "Completed")
                    return
                present = self._present(chain[i], layer)
                if present is not None:
                    added[i] = present
                    self.progress.layer_done(layer.diff_id, "Already exists")
                    return
                async with downloads:
                    path = await self.download(layer)
                fetched.append(path)
                # abandoned if cancelled (Ctrl-C): the pull stops at once; the unpacking,
                # in a workspace of its own, ends with the process and is collected later
                added[i] = await trio.to_thread.run_sync(
                    self._add_downloaded, adder, path, layer, chain[:i + 1], parents_done(i),
                    abandon_on_cancel=True)
            except BaseException:
                failed.set()
                raise
            finally:
                done[i].set()

        try:
            async with trio.open_nursery() as early:
                if self.early is not None:  # (while the layer directories are made)
                    early.start_soon(self.early.fetch, self._range)
                async with trio.open_nursery() as nursery:
                    for i, layer in enumerate(layers):
                        nursery.start_soon(one, i, layer)
                early.cancel_scope.cancel()  # what is still coming is not used
        finally:
            if failed.is_set():
                for event in done:
                    event.set()
        for path in set(fetched):  # unpacked and kept as blobs: the downloads can go
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return [a for a in added if a is not None], bool(fetched)

    def _add_downloaded(self, adder: ImageAdder, path: str, layer: LayerSpec, chain: list[str],
                        wait_for_parents: Callable[[], None]) -> AddedLayer:
        """A downloaded layer into the store: from a committed snapshot holding it, else
        unpacked from its blob."""
        shared = self._add_from_snapshot(adder, path, layer, chain, wait_for_parents)
        if shared is not None:
            return shared
        return adder.add_layer(DirectorySource(self.downloads), layer, chain, self.ref.name,
                               wait_for_parents)

    def _add_from_snapshot(self, adder: ImageAdder, path: str, layer: LayerSpec,
                           chain: list[str], wait_for_parents: Callable[[], None]
                           ) -> AddedLayer | None:
        """The layer unpacked from its blob as ever, but for its regular files: hard links of
        those of a committed snapshot holding it (checked against their entries), so that the
        layer is what a plain pull makes, with the snapshot's files. Installed as a layer
        directory the caller made (``ImageAdder.prepared``); None if no snapshot holds it or
        a file of the snapshot differs (the caller then unpacks the blob itself)."""
        directory = sharing.committed_snapshot(self.store, chain)
        if directory is None:
            return None
        name = "snapshot-" + digest_hex(chain[-1])
        target = adder.space.new_path(name)
        os.mkdir(target, 0o755)
        try:
            with open(path, "rb") as blob:
                digests = unpack_layer(
                    blob, target, whiteout_format=self.store.whiteout_format,
                    limits=self.store.limits, what=f"{self.ref.name} layer {layer.diff_id[7:19]}",
                    parents=[self.store.layer_path(c) for c in reversed(chain[:-1])],
                    before_finish=wait_for_parents,
                    files_from=sharing.snapshot_content(self.store, directory))
        except LayerError:
            shutil.rmtree(target, ignore_errors=True)
            return None
        adder.verify(layer, digests, self.ref.name)
        os.link(path, adder.space.new_path(name + ".blob"))  # what the store keeps as the blob
        # an adder of its own: ``prepared`` is by diff_id, which two layers of an image can share
        own = ImageAdder(self.store, adder.space,
                         _Relabelled(self.progress, "Linked from a snapshot"),
                         prepared={layer.diff_id: (target, digests)})
        return own.add_layer(DirectorySource(adder.space.path),
                             replace(layer, path=name + ".blob"), chain, self.ref.name,
                             wait_for_parents)

    def _present(self, chain_id: str, layer: LayerSpec) -> AddedLayer | None:
        """The layer, if it is unpacked already and this very blob is kept."""
        if not self.store.layer_recorded(chain_id):
            return None
        row = self.store.db.execute("SELECT media_type, size FROM blobs WHERE digest = ?",
                                    (layer.digest,)).fetchone()
        if row is None or not os.path.exists(self.store.blob_path(layer.digest or "")):
            return None
        return AddedLayer(chain_id, layer.diff_id, layer.digest or "", layer.media_type,
                          row["size"])

    def _record_repo_digest(self, image_id: str, manifest_digest: str) -> None:
        with self.store.transaction() as db:
            db.execute("INSERT OR REPLACE INTO repo_digests VALUES (?, ?)",
                       (f"{self.ref.repository}@{manifest_digest}", image_id))


class _Relabelled(Progress):
    """``progress`` with another status for a finished layer."""

    def __init__(self, progress: Progress, status: str) -> None:
        self.progress, self.status = progress, status

    def layer_started(self, diff_id: str, total: int | None) -> None:
        self.progress.layer_started(diff_id, total)

    def layer_advanced(self, diff_id: str, nbytes: int) -> None:
        self.progress.layer_advanced(diff_id, nbytes)

    def layer_done(self, diff_id: str, status: str) -> None:
        self.progress.layer_done(diff_id, self.status)
