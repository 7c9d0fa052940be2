"""Reading image archives: docker-archive (legacy and Docker 25+), OCI layouts and OCI archives.

Each archive yields ``ImageSpec``s: the config bytes, the manifest (verbatim when the archive has
one), the layer descriptors in base-first order and the names to tag. Nothing here touches the
store; every document is size-bounded and checked before it is believed.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from typing import Any

from unionfs.image import mediatypes as mt
from unionfs.image import reference
from unionfs.image.archive.sources import Source
from unionfs.image.errors import ImageError
from unionfs.image.limits import Limits


@dataclass
class LayerSpec:
    path: str                 # where the blob is in the source
    media_type: str
    digest: str | None        # the blob's digest as stored, when a descriptor says it
    size: int | None
    diff_id: str              # from the config


@dataclass
class ImageSpec:
    config_bytes: bytes
    config: dict[str, Any]
    layers: list[LayerSpec]
    names: list[str] = field(default_factory=list)          # normalised references to tag
    manifest_bytes: bytes | None = None
    manifest_media_type: str = mt.OCI_MANIFEST

    @property
    def image_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.config_bytes).hexdigest()


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ImageError(f"invalid platform {text!r} (expected os/arch[/variant])")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        machine = platform.machine().lower()
        arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
                "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
                "riscv64": "riscv64"}.get(machine, machine)
        variant = {"arm64": "v8", "arm": "v7"}.get(arch)
        return cls("linux", arch, variant)

    def matches(self, candidate: dict[str, Any]) -> bool:
        if candidate.get("os") != self.os or candidate.get("architecture") != self.architecture:
            return False
        wanted = self.variant
        have = candidate.get("variant")
        if wanted is None or have is None:
            return True
        return wanted == have

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"{what} is not valid JSON ({e})") from None


def _check_digest(data: bytes, digest: str, what: str) -> None:
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise ImageError(f"{what}: digest mismatch (expected {digest}, got {actual})")


def _blob_path(digest: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256" or len(hex_part) != 64:
        raise ImageError(f"unsupported or malformed digest {digest!r}")
    return f"blobs/sha256/{hex_part}"


def validate_config(config: Any, layer_count: int, what: str, limits: Limits) -> list[str]:
    """The config's diff_ids, after checking the config has the shape of an image config."""
    if not isinstance(config, dict):
        raise ImageError(f"{what}: the image config is not a JSON object")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageError(f"{what}: the image config has no rootfs of type 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ImageError(f"{what}: the image config's rootfs.diff_ids is not a list of digests")
    if len(diff_ids) > limits.max_layers:
        raise ImageError(f"{what}: {len(diff_ids)} layers, more than the limit of "
                         f"{limits.max_layers}")
    if len(diff_ids) != layer_count:
        raise ImageError(f"{what}: the manifest lists {layer_count} layers but the config has "
                         f"{len(diff_ids)} diff_ids")
    for d in diff_ids:
        _blob_path(d)
    return diff_ids


class ArchiveReader:
    def __init__(self, source: Source, limits: Limits, platform: Platform | None) -> None:
        self.source = source
        self.limits = limits
        self.platform = platform

    def read_json(self, path: str) -> tuple[bytes, Any]:
        data = self.source.read_json_bytes(path, self.limits.max_json_bytes)
        return data, parse_json(data, f"{self.source.label}: {path}")

    def images(self) -> list[ImageSpec]:
        if self.source.exists("manifest.json"):
            return self._docker_archive()
        if self.source.exists("index.json"):
            return self._oci_layout()
        raise ImageError(f"{self.source.label}: not an image archive (neither manifest.json "
                         "nor index.json found)")

    # ------------------------------------------------------------------ docker-archive

    def _docker_archive(self) -> list[ImageSpec]:
        _, entries = self.read_json("manifest.json")
        if not isinstance(entries, list) or not entries:
            raise ImageError(f"{self.source.label}: manifest.json is not a list of images")
        if len(entries) > self.limits.max_images_per_archive:
            raise ImageError(f"{self.source.label}: too many images ({len(entries)})")
        oci_manifests = self._oci_manifests_by_config()
        images = []
        for n, entry in enumerate(entries):
            what = f"{self.source.label}: image {n + 1}"
            if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                    or not isinstance(entry.get("Layers"), list):
                raise ImageError(f"{what}: manifest.json entry lacks Config or Layers")
            if entry.get("LayerSources"):
                raise ImageError(f"{what}: foreign (non-distributable) layers are not supported")
            config_bytes, config = self.read_json(entry["Config"])
            layer_paths = entry["Layers"]
            if not all(isinstance(p, str) for p in layer_paths):
                raise ImageError(f"{what}: manifest.json Layers is not a list of paths")
            diff_ids = validate_config(config, len(layer_paths), what, self.limits)
            spec = ImageSpec(config_bytes, config, [
                LayerSpec(path, _media_type_of_path(path), _digest_of_path(path), None, diff_id)
                for path, diff_id in zip(layer_paths, diff_ids, strict=True)])
            for path in layer_paths:
                if not self.source.exists(path):
                    raise ImageError(f"{what}: layer {path} is missing from the archive")
            spec.names = _names(entry.get("RepoTags") or [], what)
            oci = oci_manifests.get(spec.image_id)
            if oci is not None:
                spec.manifest_bytes, spec.manifest_media_type = oci
            images.append(spec)
        return images

    def _oci_manifests_by_config(self) -> dict[str, tuple[bytes, str]]:
        """Docker 25+ archives also carry OCI manifests; keep them verbatim where they match."""
        found: dict[str, tuple[bytes, str]] = {}
        if not self.source.exists("index.json"):
            return found
        try:
            for descriptor, _names in self._walk_index("index.json", None, depth=0):
                data, manifest = self._manifest(descriptor)
                found[manifest["config"]["digest"]] = (data, descriptor["mediaType"])
        except ImageError:
            return {}
        return found

    # ------------------------------------------------------------------ OCI layout

    def _oci_layout(self) -> list[ImageSpec]:
        if self.source.exists("oci-layout"):
            _, layout = self.read_json("oci-layout")
            version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
            if not isinstance(version, str) or not version.startswith("1."):
                raise ImageError(f"{self.source.label}: unsupported OCI layout version "
                                 f"{version!r}")
        images = []
        for descriptor, names in self._walk_index("index.json", None, depth=0):
            data, manifest = self._manifest(descriptor)
            what = f"{self.source.label}: manifest {descriptor['digest'][:19]}"
            images.append(self._image_from_manifest(data, manifest, descriptor["mediaType"],
                                                    names, what))
        if not images:
            raise ImageError(f"{self.source.label}: the index lists no image"
                             + (f" for platform {self.platform}" if self.platform else ""))
        return images

    def _walk_index(self, path: str, digest: str | None, depth: int):
        """Yields (manifest descriptor, names) for each image of an index, choosing one
        platform from multi-platform indexes."""
        if depth > 4:
            raise ImageError(f"{self.source.label}: indexes nested too deeply (or a cycle)")
        data, index = self.read_json(path)
        if digest:
            _check_digest(data, digest, f"{self.source.label}: index {digest}")
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise ImageError(f"{self.source.label}: {path} is not an image index")
        manifests = index["manifests"]
        if len(manifests) > self.limits.max_images_per_archive:
            raise ImageError(f"{self.source.label}: {path} lists too many manifests")
        by_platform = [d for d in manifests if isinstance(d, dict) and "platform" in d]
        if depth > 0 or (by_platform and len(by_platform) == len(manifests) > 1
                         and not _any_named(manifests)):
            chosen = self._choose_platform(manifests, path)
            yield from self._walk_descriptor(chosen, _descriptor_names(chosen, []), depth)
            return
        for descriptor in manifests:
            names = _descriptor_names(descriptor, [])
            yield from self._walk_descriptor(descriptor, names, depth)

    def _walk_descriptor(self, descriptor: Any, names: list[str], depth: int):
        _check_descriptor(descriptor, self.source.label)
        media_type = descriptor["mediaType"]
        if media_type in mt.INDEXES:
            for inner, inner_names in self._walk_index(_blob_path(descriptor["digest"]),
                                                       descriptor["digest"], depth + 1):
                yield inner, names or inner_names
        elif media_type in mt.MANIFESTS:
            if self.platform and isinstance(descriptor.get("platform"), dict) \
                    and not self.platform.matches(descriptor["platform"]):
                return
            yield descriptor, names
        elif media_type == mt.DOCKER_SCHEMA1:
            raise ImageError(f"{self.source.label}: Docker schema 1 manifests are not supported")
        # other media types (signatures, attestations...) are ignored, as the spec asks

    def _choose_platform(self, manifests: list[Any], path: str) -> Any:
        wanted = self.platform or Platform.host()
        candidates = [d for d in manifests if isinstance(d, dict)
                      and isinstance(d.get("platform"), dict)
                      and d["platform"].get("os") != "unknown"]
        for descriptor in candidates:
            if wanted.matches(descriptor["platform"]):
                return descriptor
        offered = ", ".join(sorted({_platform_text(d["platform"]) for d in candidates}))
        raise ImageError(f"{self.source.label}: no image for platform {wanted} in {path} "
                         f"(it offers {offered or 'none'})")

    def _manifest(self, descriptor: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        data, manifest = self.read_json(_blob_path(descriptor["digest"]))
        _check_digest(data, descriptor["digest"], f"{self.source.label}: manifest")
        if len(data) != descriptor["size"]:
            raise ImageError(f"{self.source.label}: manifest {descriptor['digest']} is "
                             f"{len(data)} bytes, its descriptor says {descriptor['size']}")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict) \
                or not isinstance(manifest.get("layers"), list):
            raise ImageError(f"{self.source.label}: manifest {descriptor['digest']} lacks "
                             "config or layers")
        _check_descriptor(manifest["config"], self.source.label)
        return data, manifest

    def _image_from_manifest(self, data: bytes, manifest: dict[str, Any], media_type: str,
                             names: list[str], what: str) -> ImageSpec:
        config_descriptor = manifest["config"]
        if config_descriptor["mediaType"] not in mt.CONFIGS:
            raise ImageError(f"{what}: unknown config media type "
                             f"{config_descriptor['mediaType']!r}")
        config_bytes, config = self.read_json(_blob_path(config_descriptor["digest"]))
        _check_digest(config_bytes, config_descriptor["digest"], f"{what}: config")
        layers = manifest["layers"]
        diff_ids = validate_config(config, len(layers), what, self.limits)
        specs = []
        for descriptor, diff_id in zip(layers, diff_ids, strict=True):
            _check_descriptor(descriptor, what)
            media_type_l = descriptor["mediaType"]
            if mt.is_foreign(media_type_l):
                raise ImageError(f"{what}: layer {descriptor['digest']} is a foreign "
                                 "(non-distributable) layer, which is not supported")
            if media_type_l not in mt.LAYERS:
                raise ImageError(f"{what}: layer {descriptor['digest']} has unknown media type "
                                 f"{media_type_l!r}")
            path = _blob_path(descriptor["digest"])
            if not self.source.exists(path):
                raise ImageError(f"{what}: layer blob {descriptor['digest']} is missing from "
                                 "the archive")
            specs.append(LayerSpec(path, media_type_l, descriptor["digest"], descriptor["size"],
                                   diff_id))
        return ImageSpec(config_bytes, config, specs, names, data, media_type)


def _check_descriptor(descriptor: Any, what: str) -> None:
    if not isinstance(descriptor, dict) or not isinstance(descriptor.get("mediaType"), str) \
            or not isinstance(descriptor.get("digest"), str) \
            or not isinstance(descriptor.get("size"), int) or descriptor["size"] < 0:
        raise ImageError(f"{what}: malformed descriptor {json.dumps(descriptor)[:200]}")
    _blob_path(descriptor["digest"])


def _any_named(manifests: list[Any]) -> bool:
    return any(isinstance(d, dict) and _descriptor_names(d, []) for d in manifests)


def _descriptor_names(descriptor: Any, default: list[str]) -> list[str]:
    annotations = descriptor.get("annotations") if isinstance(descriptor, dict) else None
    if not isinstance(annotations, dict):
        return default
    full = annotations.get(mt.ANNOTATION_CONTAINERD_NAME)
    if isinstance(full, str) and reference.looks_like_reference(full):
        return [reference.parse(full).name]
    ref_name = annotations.get(mt.ANNOTATION_REF_NAME)
    if isinstance(ref_name, str) and (":" in ref_name or "/" in ref_name) \
            and reference.looks_like_reference(ref_name):
        return [reference.parse(ref_name).name]
    return default


def _names(repo_tags: list[Any], what: str) -> list[str]:
    names = []
    for tag in repo_tags:
        if not isinstance(tag, str):
            raise ImageError(f"{what}: RepoTags holds a non-string")
        names.append(reference.parse(tag).name)
    return names


def _platform_text(p: dict[str, Any]) -> str:
    return "/".join(str(p[k]) for k in ("os", "architecture", "variant") if p.get(k))


def _media_type_of_path(path: str) -> str:
    return mt.OCI_LAYER  # decided again by magic bytes when it is read


def _digest_of_path(path: str) -> str | None:
    """Docker 25+ names layers blobs/sha256/<hex>: the digest of the blob as stored."""
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "blobs" and parts[1] == "sha256" and len(parts[2]) == 64:
        return "sha256:" + parts[2]
    return None
