"""The gRPC side: containerd's ``containerd.services.snapshots.v1.Snapshots`` served on a unix
socket with grpcio, over ``Snapshots`` (snapshots.py). Refusals become the gRPC status codes
containerd's errdefs map back (NotFound, AlreadyExists, FailedPrecondition, InvalidArgument):
containerd's unpacker relies on AlreadyExists to skip layers it has."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from unionfs.image.errors import ImageError
from unionfs.image.snapshotter import snapshots as snap
from unionfs.image.snapshotter.api import mount_pb2, snapshots_pb2, snapshots_pb2_grpc

KINDS = {snap.ACTIVE: snapshots_pb2.ACTIVE, snap.VIEW: snapshots_pb2.VIEW,
         snap.COMMITTED: snapshots_pb2.COMMITTED}


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _info(info: snap.Info) -> snapshots_pb2.Info:
    return snapshots_pb2.Info(name=info.key, parent=info.parent, kind=KINDS[info.kind],
                              created_at=_timestamp(info.created),
                              updated_at=_timestamp(info.updated), labels=info.labels)


def _mounts(mounts: list[snap.Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in mounts]


def _served(method):
    """One call at a time (the store's connection is shared), refusals as gRPC statuses;
    with ``debug``, each call, its key and its duration on stderr."""
    def call(self, request, context):
        started = time.perf_counter()
        outcome = "ok"
        try:
            with self.snapshots.lock:
                return method(self, request, context)
        except snap.SnapshotError as e:
            outcome = e.code
            context.abort(getattr(grpc.StatusCode, e.code), str(e))
        except (ImageError, OSError) as e:
            outcome = f"INTERNAL {e}"
            context.abort(grpc.StatusCode.INTERNAL, str(e))
        finally:
            if self.debug:
                key = getattr(request, "key", "") or getattr(request, "name", "")
                labels = dict(getattr(request, "labels", {}))
                print(f"{method.__name__} {key} {labels or ''} {outcome} "
                      f"{(time.perf_counter() - started) * 1000:.1f} ms",
                      file=sys.stderr, flush=True)
    call.__name__ = method.__name__
    return call


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    def __init__(self, snapshots: snap.Snapshots, debug: bool = False) -> None:
        self.snapshots = snapshots
        self.debug = debug

    @_served
    def Prepare(self, request, context):
        mounts = self.snapshots.prepare(request.key, request.parent, dict(request.labels))
        return snapshots_pb2.PrepareSnapshotResponse(mounts=_mounts(mounts))

    @_served
    def View(self, request, context):
        mounts = self.snapshots.prepare(request.key, request.parent, dict(request.labels),
                                        kind=snap.VIEW)
        return snapshots_pb2.ViewSnapshotResponse(mounts=_mounts(mounts))

    @_served
    def Mounts(self, request, context):
        return snapshots_pb2.MountsResponse(mounts=_mounts(self.snapshots.mounts(request.key)))

    @_served
    def Commit(self, request, context):
        self.snapshots.commit(request.name, request.key, dict(request.labels))
        return empty_pb2.Empty()

    @_served
    def Remove(self, request, context):
        self.snapshots.remove(request.key)
        return empty_pb2.Empty()

    @_served
    def Stat(self, request, context):
        return snapshots_pb2.StatSnapshotResponse(info=_info(self.snapshots.stat(request.key)))

    @_served
    def Update(self, request, context):
        info = self.snapshots.update(request.info.name, dict(request.info.labels),
                                     list(request.update_mask.paths))
        return snapshots_pb2.UpdateSnapshotResponse(info=_info(info))

    def List(self, request, context):
        with self.snapshots.lock:
            infos = self.snapshots.list()
        for start in range(0, len(infos), 100):
            yield snapshots_pb2.ListSnapshotsResponse(
                info=[_info(i) for i in infos[start:start + 100]])

    @_served
    def Usage(self, request, context):
        size, inodes = self.snapshots.usage(request.key)
        return snapshots_pb2.UsageResponse(size=size, inodes=inodes)

    @_served
    def Cleanup(self, request, context):
        self.snapshots.cleanup()
        return empty_pb2.Empty()


def _claim_socket(path: str) -> None:
    """Removes a socket left by a killed snapshotter; refuses one that still answers."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o711, exist_ok=True)
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise ImageError(f"{path}: another snapshotter is serving there")
    finally:
        probe.close()


def serve(snapshots: snap.Snapshots, address: str, debug: bool = False) -> int:
    """Serves until SIGTERM or SIGINT; the socket is removed at the end."""
    _claim_socket(address)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(SnapshotsService(snapshots, debug), server)
    if not server.add_insecure_port(f"unix://{os.path.abspath(address)}"):
        raise ImageError(f"cannot listen on {address}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    try:
        print(f"pyunion snapshotter: serving {snapshots.store.root} on {address}",
              file=sys.stderr, flush=True)
        stop.wait()
    finally:
        server.stop(grace=5).wait()
        snapshots.wait_for_removals()  # (the mounts of live snapshots stay: their containers)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
    return 0
