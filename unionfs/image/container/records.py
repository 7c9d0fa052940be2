"""Container records in the store's database, and their directories under ``containers/<id>/``.

A record's ``state`` is what pyunion last knew (created, running, exited); ``refresh`` checks a
running container against the runtime and the monitor, so a crash of ``pyunion``, of the monitor
or of the mount daemon never leaves a stale "running".
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from unionfs.image.container.names import generate_name
from unionfs.image.errors import Conflict, ImageError, NotFound
from unionfs.image.store import Store

_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


@dataclass
class RunSpec:
    """What the command line asked for, kept with the container so ``start`` can repeat it."""

    command: list[str] | None = None      # replaces the image's Cmd
    entrypoint: list[str] | None = None   # replaces the image's Entrypoint
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    volumes: list[str] = field(default_factory=list)
    read_only: bool = False
    network: str = "host"    # host, none, or a network's name
    publish: list[str] = field(default_factory=list)   # -p [IP:][HOST:]CTR[/PROTO]
    tty: bool = False
    interactive: bool = False
    runtime: str = "runc"
    auto_remove: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    extra_hosts: list[str] = field(default_factory=list)
    init: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    privileged: bool = False
    restart: str = "no"
    memory: int | None = None       # bytes
    cpus: float | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        data: dict[str, Any] = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Container:
    id: str
    name: str
    image_id: str
    image_name: str
    created: float
    spec: RunSpec
    state: str
    pid: int | None
    monitor_pid: int | None
    exit_code: int | None
    started: float | None
    finished: float | None
    mountpoint: str | None
    mount_pid: int | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Container:
        data = dict(row)
        data["spec"] = RunSpec.from_json(data["spec"])
        return cls(**data)

    @property
    def short_id(self) -> str:
        return self.id[:12]


def container_dir(store: Store, container_id: str) -> str:
    return os.path.join(store.root, "containers", container_id)


def create_record(store: Store, image_id: str, image_name: str, name: str | None,
                  spec: RunSpec) -> Container:
    """A new container: a unique id and name, an empty upper and workdir."""
    if name is not None:
        check_name(name)
    for attempt in range(20):
        container_id = secrets.token_hex(32)
        chosen = name or generate_name() + (f"{attempt}" if attempt >= 10 else "")
        directory = container_dir(store, container_id)
        try:
            with store.adding_lock(), store.transaction() as db:
                if db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() \
                        is None:
                    raise NotFound(f"No such image: {image_name}")
                db.execute("INSERT INTO containers (id, name, image_id, image_name, created, "
                           "spec, state) VALUES (?, ?, ?, ?, ?, ?, 'created')",
                           (container_id, chosen, image_id, image_name, time.time(),
                            spec.to_json()))
                os.makedirs(os.path.join(directory, "upper"), mode=0o755)
                os.makedirs(os.path.join(directory, "work"), mode=0o700)
                os.makedirs(os.path.join(directory, "merged"), mode=0o755)
        except sqlite3.IntegrityError:
            shutil.rmtree(directory, ignore_errors=True)
            if name is not None:
                raise Conflict(f'the container name "{name}" is already in use') from None
            continue
        return get(store, container_id)
    raise ImageError("could not find a free container name")


def get(store: Store, text: str) -> Container:
    """A container by name, full id or unique id prefix."""
    db = store.db
    row = db.execute("SELECT * FROM containers WHERE name = ? OR id = ?", (text, text)).fetchone()
    if row is None and re.fullmatch(r"[0-9a-f]{1,64}", text):
        rows = db.execute("SELECT * FROM containers WHERE id >= ? AND id < ? LIMIT 11",
                          (text, text + "g")).fetchall()
        if len(rows) > 1:
            raise Conflict(f"{text} is an ambiguous container id prefix: it matches "
                           + ", ".join(r["id"][:12] for r in rows[:10]))
        row = rows[0] if rows else None
    if row is None:
        raise NotFound(f"No such container: {text}")
    return Container.from_row(row)


def all_containers(store: Store) -> list[Container]:
    return [Container.from_row(r) for r in store.db.execute(
        "SELECT * FROM containers ORDER BY created DESC")]


def update(store: Store, container_id: str, **fields: Any) -> None:
    if not fields:
        return
    columns = ", ".join(f"{key} = ?" for key in fields)
    with store.transaction() as db:
        db.execute(f"UPDATE containers SET {columns} WHERE id = ?",
                   (*fields.values(), container_id))


def check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ImageError(f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                         "are allowed")


def rename(store: Store, container: Container, new_name: str) -> None:
    check_name(new_name)
    try:
        with store.transaction() as db:
            db.execute("UPDATE containers SET name = ? WHERE id = ?", (new_name, container.id))
    except sqlite3.IntegrityError:
        raise Conflict(f'the container name "{new_name}" is already in use') from None


def delete_record(store: Store, container_id: str) -> None:
    with store.transaction() as db:
        db.execute("DELETE FROM containers WHERE id = ?", (container_id,))


def users_of_image(store: Store, image_id: str) -> list[str]:
    return [f"container {r['name']} ({r['id'][:12]})" for r in store.db.execute(
        "SELECT id, name FROM containers WHERE image_id = ?", (image_id,))]


def running_users_of_image(store: Store, image_id: str) -> list[str]:
    return [f"container {r['name']} ({r['id'][:12]})" for r in store.db.execute(
        "SELECT id, name FROM containers WHERE image_id = ? AND state = 'running'",
        (image_id,))]
