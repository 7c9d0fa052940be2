"""Writing images out: docker-archive (Docker 25+ shape), OCI archive and OCI layout directory.

* docker-archive: an OCI layout whose layers are uncompressed tars named by diff_id, plus
  ``manifest.json`` and ``repositories``, so both old and new ``docker load`` read it;
* oci-archive / oci-dir: the blobs exactly as stored (manifest digests unchanged).

Output is reproducible (sorted entries, epoch mtimes, owner 0) and written to a temporary name
first, renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from dataclasses import dataclass
from typing import BinaryIO

from unionfs.image import mediatypes as mt
from unionfs.image import reference
from unionfs.image.archive.compression import DecompressingReader
from unionfs.image.archive.convert import ConvertedImage, convert_image
from unionfs.image.errors import ImageError
from unionfs.image.store import Store

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


@dataclass
class SavedImage:
    image_id: str
    names: list[str]  # full normalised names to record in the archive


def _json(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Writer:
    """Adds files to a tar stream or to a directory, the same way."""

    def __init__(self, tar: tarfile.TarFile | None, directory: str | None) -> None:
        self.tar, self.directory = tar, directory
        self.written: set[str] = set()

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_stream(name, io.BytesIO(data), len(data))

    def add_stream(self, name: str, stream: BinaryIO, size: int) -> None:
        if name in self.written:
            return
        self.written.add(name)
        if self.tar is not None:
            for parent in _parents(name):
                if parent not in self.written:
                    self.written.add(parent)
                    info = tarfile.TarInfo(parent)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    self.tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode = size, 0o644
            self.tar.addfile(info, stream)
        else:
            assert self.directory is not None
            path = os.path.join(self.directory, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                shutil.copyfileobj(stream, f, 1 << 20)  # type: ignore[misc]


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[:i + 1]) for i in range(len(parts))]


class ImageSaver:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.converted: dict[str, ConvertedImage] = {}  # written instead (--layer-format)

    def _layers(self, image_id: str):
        return self.store.db.execute(
            "SELECT il.diff_id, il.blob_digest, il.media_type, b.size, l.tar_size "
            "FROM image_layers il JOIN blobs b ON b.digest = il.blob_digest "
            "JOIN layers l ON l.chain_id = il.chain_id "
            "WHERE il.image_id = ? ORDER BY il.position", (image_id,)).fetchall()

    def _blob(self, digest: str) -> bytes:
        with open(self.store.blob_path(digest), "rb") as f:
            return f.read()

    def _manifest(self, image_id: str) -> tuple[bytes, str]:
        row = self.store.db.execute(
            "SELECT manifest_digest, manifest_media_type FROM images WHERE id = ?",
            (image_id,)).fetchone()
        return self._blob(row["manifest_digest"]), row["manifest_media_type"]

    # ------------------------------------------------------------------ formats

    def write_oci(self, images: list[SavedImage], out: _Writer) -> None:
        descriptors = []
        for image in images:
            if image.image_id in self.converted:
                descriptors += self._write_converted(self.converted[image.image_id], image,
                                                     out)
                continue
            manifest, media_type = self._manifest(image.image_id)
            out.add_bytes(_blob_name(_sha(manifest)), manifest)
            out.add_bytes(_blob_name(image.image_id), self._blob(image.image_id))
            for layer in self._layers(image.image_id):
                with open(self.store.blob_path(layer["blob_digest"]), "rb") as f:
                    out.add_stream(_blob_name(layer["blob_digest"]), f, layer["size"])
            descriptors += _index_entries(_sha(manifest), len(manifest), media_type,
                                          image.names)
        out.add_bytes("oci-layout", OCI_LAYOUT)
        out.add_bytes("index.json", _json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                           "manifests": descriptors}))

    @staticmethod
    def _write_converted(converted: ConvertedImage, image: SavedImage,
                         out: _Writer) -> list[dict]:
        out.add_bytes(_blob_name(_sha(converted.manifest)), converted.manifest)
        for blob in converted.blobs:
            with open(blob.path, "rb") as f:
                out.add_stream(_blob_name(blob.digest), f, blob.size)
        return _index_entries(_sha(converted.manifest), len(converted.manifest),
                              converted.media_type, image.names)

    def write_docker(self, images: list[SavedImage], out: _Writer) -> None:
        entries, descriptors, repositories = [], [], {}
        for image in images:
            config = self._blob(image.image_id)
            out.add_bytes(_blob_name(image.image_id), config)
            layers = self._layers(image.image_id)
            for layer in layers:
                with open(self.store.blob_path(layer["blob_digest"]), "rb") as f:
                    out.add_stream(_blob_name(layer["diff_id"]), DecompressingReader(f),
                                   layer["tar_size"])  # type: ignore[arg-type]
            manifest = _json({
                "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                "config": {"mediaType": mt.OCI_CONFIG, "digest": image.image_id,
                           "size": len(config)},
                "layers": [{"mediaType": mt.OCI_LAYER, "digest": layer["diff_id"],
                            "size": layer["tar_size"]} for layer in layers]})
            out.add_bytes(_blob_name(_sha(manifest)), manifest)
            descriptors += _index_entries(_sha(manifest), len(manifest), mt.OCI_MANIFEST,
                                          image.names)
            short_names = [_short(name) for name in image.names]
            entries.append({"Config": _blob_name(image.image_id),
                            "RepoTags": short_names or None,
                            "Layers": [_blob_name(layer["diff_id"]) for layer in layers]})
            for name in short_names:
                repository, tag = reference.split_name(name)
                if layers:
                    repositories.setdefault(repository, {})[tag] = layers[-1]["diff_id"][7:]
        out.add_bytes("oci-layout", OCI_LAYOUT)
        out.add_bytes("index.json", _json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                           "manifests": descriptors}))
        out.add_bytes("manifest.json", _json(entries))
        if repositories:
            out.add_bytes("repositories", _json(repositories))

    # ------------------------------------------------------------------ targets

    def save(self, images: list[SavedImage], fmt: str, output: str | None,
             layer_format: str = "stored") -> None:
        if layer_format == "estargz":
            if fmt == "docker-archive":
                raise ImageError("--layer-format estargz needs --format oci-archive or oci-dir"
                                 " (a docker-archive holds uncompressed layers)")
            with self.store.workspace() as space:
                for image in images:
                    work = os.path.join(space.path, image.image_id[7:19])
                    os.mkdir(work)
                    self.converted[image.image_id] = convert_image(self.store, image.image_id,
                                                                   work)
                self.save(images, fmt, output)
            return
        write = {"docker-archive": self.write_docker, "oci-archive": self.write_oci,
                 "oci-dir": self.write_oci}[fmt]
        if fmt == "oci-dir":
            if output is None:
                raise ImageError("--format oci-dir needs -o DIR")
            self._save_to_dir(images, write, output)
        elif output is None or output == "-":
            if sys.stdout.isatty():
                raise ImageError("cowardly refusing to write an archive to a terminal "
                                 "(use -o FILE or redirect stdout)")
            with tarfile.open(fileobj=sys.stdout.buffer, mode="w|",
                              format=tarfile.PAX_FORMAT) as tar:
                write(images, _Writer(tar, None))
            sys.stdout.flush()
        else:
            self._save_to_file(images, write, output)

    def _save_to_file(self, images, write, output: str) -> None:
        temp = f"{output}.pyunion-tmp-{os.getpid()}"
        try:
            with open(temp, "wb") as f, tarfile.open(fileobj=f, mode="w|",
                                                    format=tarfile.PAX_FORMAT) as tar:
                write(images, _Writer(tar, None))
            os.rename(temp, output)
        except OSError as e:
            raise ImageError(f"cannot write {output}: {e.strerror or e}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def _save_to_dir(self, images, write, output: str) -> None:
        if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
            raise ImageError(f"{output} exists and is not an empty directory")
        parent = os.path.dirname(os.path.abspath(output))
        temp = os.path.join(parent, f".{os.path.basename(output)}.pyunion-tmp-{os.getpid()}")
        try:
            os.mkdir(temp)
            write(images, _Writer(None, temp))
            if os.path.isdir(output):
                os.rmdir(output)
            os.rename(temp, output)
        except OSError as e:
            raise ImageError(f"cannot write {output}: {e.strerror or e}") from None
        finally:
            shutil.rmtree(temp, ignore_errors=True)


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.partition(":")[2]


def _short(name: str) -> str:
    repository, tag = reference.split_name(name)
    return f"{reference.shorten_repository(repository)}:{tag}"


def _index_entries(digest: str, size: int, media_type: str, names: list[str]) -> list[dict]:
    base = {"mediaType": media_type, "digest": digest, "size": size}
    if not names:
        return [base]
    entries = []
    for name in names:
        _, tag = reference.split_name(name)
        entries.append({**base, "annotations": {mt.ANNOTATION_CONTAINERD_NAME: name,
                                                mt.ANNOTATION_REF_NAME: tag}})
    return entries
