"""Running a Containerfile: stages, steps, layers, history and the cache.

Every step makes an image in the store (untagged; the cache's rows point at them), as buildah
does with ``--layers``: a config-only step (ENV, LABEL...) has the parent's layers and an
``empty_layer`` history entry; RUN, COPY and ADD work in a container over the parent image (a
pyunion mount of its layers under an empty upper, unionfs.image.container) and the upper
becomes the step's layer (``commit.upper_layer``), or none if nothing changed. RUN's process
runs under runc; COPY and ADD write into the mounted rootfs from here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import posixpath
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from unionfs.fs import override
from unionfs.image import mediatypes as mt
from unionfs.image.archive.formats import ImageSpec, LayerSpec, Platform
from unionfs.image.archive.sources import DirectorySource
from unionfs.image.build import cache
from unionfs.image.build import context as ctx
from unionfs.image.build import layers as step_layers
from unionfs.image.build.dockerfile import Dockerfile, DockerfileError, Instruction, parse
from unionfs.image.build.ignore import IgnoreRules
from unionfs.image.build.squash import write_squashed
from unionfs.image.build.words import expand_word, expand_words, split_keeping_quotes
from unionfs.image.container import lifecycle, records, rootfs
from unionfs.image.container.commit import UpperLayer, upper_layer
from unionfs.image.container.records import Container, RunSpec
from unionfs.image.container.session import Session
from unionfs.image.errors import ImageError
from unionfs.image.mounts import layer_dirs
from unionfs.image.store import Store, Workspace
from unionfs.image.store import images as store_images
from unionfs.image.store.adding import ImageAdder

DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_FILES = ("Containerfile", "Dockerfile")
# usable with --build-arg without an ARG line; never in the history
PROXY_ARGS = frozenset({"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
                        "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"})
DURATIONS = {"ns": 1, "us": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


@dataclass
class Options:
    context: str
    file: str | None = None
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    quiet: bool = False
    network: str = "host"
    squash: bool = False
    layer_format: str = "gzip"  # or "estargz": each file its own gzip member, and a TOC

    @property
    def estargz(self) -> bool:
        return self.layer_format == "estargz"


@dataclass
class Stage:
    index: int
    name: str | None
    from_ins: Instruction
    instructions: list[Instruction]


@dataclass
class State:
    """A stage being built: its current image (None: scratch, nothing yet), config, ARGs."""

    image_id: str | None
    config: dict[str, Any]
    args: dict[str, str | None] = field(default_factory=dict)
    cmd_set: bool = False
    onbuild_cleared: bool = False

    @property
    def inner(self) -> dict[str, Any]:
        return self.config.setdefault("config", {})

    def env(self) -> dict[str, str]:
        result = {}
        for item in self.inner.get("Env") or []:
            key, _, value = item.partition("=")
            result[key] = value
        return result

    def variables(self) -> dict[str, str]:
        """What ``$NAME`` means in an instruction: the stage's ARGs, overridden by ENV."""
        values = {k: v for k, v in self.args.items() if v is not None}
        values.update(self.env())
        return values

    def shell(self) -> list[str]:
        return list(self.inner.get("Shell") or DEFAULT_SHELL)


def find_file(context: str, file: str | None) -> str:
    if file:
        return file if os.path.isabs(file) or os.path.exists(file) else \
            os.path.join(context, file)
    for name in DEFAULT_FILES:
        path = os.path.join(context, name)
        if os.path.isfile(path):
            return path
    raise ImageError(f"no Containerfile or Dockerfile in {context} (use -f FILE)")


def split_stages(dockerfile: Dockerfile) -> tuple[list[Instruction], list[Stage]]:
    """The global ARGs (before the first FROM) and the stages."""
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for ins in dockerfile.instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = None
            if len(words) == 3 and words[1].upper() == "AS":
                name = words[2].lower()
            elif len(words) != 1:
                raise ins.error("expected FROM IMAGE [AS NAME]")
            stages.append(Stage(len(stages), name, ins, []))
        elif not stages:
            if ins.keyword != "ARG":
                raise DockerfileError(f"line {ins.line}: {ins.keyword}: no build stage in "
                                      "current context (the first instruction must be FROM)")
            global_args.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise DockerfileError("the file has no FROM instruction")
    return global_args, stages


def _scratch_config() -> dict[str, Any]:
    host = Platform.host()
    return {"architecture": host.architecture, "os": host.os, "config": {},
            "rootfs": {"type": "layers", "diff_ids": []}, "history": []}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _duration(text: str, ins: Instruction) -> int:
    import re

    total, rest = 0, text
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text):
        total += int(float(number) * DURATIONS[unit])
        rest = rest.replace(number + unit, "", 1)
    if rest or not text:
        raise ins.error(f"invalid duration {text!r}")
    return total


class Builder:
    def __init__(self, store: Store, options: Options, resolve_image: Callable[[str], str],
                 out: TextIO | None = None) -> None:
        self.store = store
        self.options = options
        self.resolve_image = resolve_image
        self.out = out or sys.stdout
        self.rules = IgnoreRules.for_context(options.context)
        self.results: dict[int, str | None] = {}
        # per stage: the layers and history entries of its FROM image
        self.base_layers: dict[int, tuple[int, int]] = {}
        self.stage_names: dict[str, int] = {}
        # the store's adding lock and a workspace, taken when a step first adds something (a
        # build whose every step is cached adds nothing)
        self._adding = contextlib.ExitStack()
        self._space: Workspace | None = None
        # RUN uppers to move into the store as layers, by diff_id (build.layers)
        self.prepared: dict[str, tuple[str, Any]] = {}

    def _workspace(self) -> Workspace:
        if self._space is None:
            self._space = self._adding.enter_context(self.store.adding())
        return self._space

    # ------------------------------------------------------------------ output

    def say(self, text: str) -> None:
        if not self.options.quiet:
            print(text, file=self.out, flush=True)

    @contextlib.contextmanager
    def _working(self, what: str) -> Iterator[None]:
        """A spinner saying ``what`` while a step works without output of its own (writing
        and storing layers), where the output is a terminal; nothing otherwise (a log or a
        pipe gets only the STEP lines)."""
        if self.options.quiet or not self.out.isatty():
            yield
            return
        from rich.console import Console

        with Console(file=self.out).status(what):
            yield

    # ------------------------------------------------------------------ the build

    def build(self) -> str:
        path = find_file(self.options.context, self.options.file)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ImageError(f"cannot read {path}: {e.strerror}") from None
        dockerfile = parse(text, where=path)
        self.escape = dockerfile.escape
        global_args, stages = split_stages(dockerfile)
        self.global_args = self._global_args(global_args)
        for stage in stages:
            if stage.name:
                self.stage_names[stage.name] = stage.index
        target = self._target(stages)
        needed = sorted(self._needed(stages, target))
        with self._adding:
            for index in needed:
                self._build_stage(stages[index], len(needed) > 1, needed.index(index) + 1,
                                  len(needed))
            image_id = self.results[target.index]
            if image_id is None or self.options.labels:
                image_id = self._final_labels(image_id)
            if self.options.squash:
                image_id = self._squash(image_id, *self.base_layers[target.index])
            self._tag(image_id)
        return image_id

    def _target(self, stages: list[Stage]) -> Stage:
        wanted = self.options.target
        if wanted is None:
            return stages[-1]
        for stage in stages:
            if stage.name == wanted.lower():
                return stage
        raise ImageError(f"the target stage {wanted!r} is not in the file")

    def _stage_ref(self, text: str) -> int | None:
        """The index of an earlier stage named (or numbered) ``text``, else None."""
        if text.lower() in self.stage_names:
            return self.stage_names[text.lower()]
        if text.isdigit():
            return int(text)
        return None

    def _needed(self, stages: list[Stage], target: Stage) -> set[int]:
        needed: set[int] = set()
        todo = [target.index]
        while todo:
            index = todo.pop()
            if index in needed:
                continue
            needed.add(index)
            stage = stages[index]
            base = self._expand_global(stage.from_ins.args.split()[0])
            refs = [base] + [i.flags["from"] or "" for i in stage.instructions
                             if i.keyword == "COPY" and i.flags.get("from")]
            for ref in refs:
                found = self._stage_ref(ref)
                if found is not None and found < index:
                    todo.append(found)
                elif found is not None and ref.isdigit():
                    raise stage.from_ins.error(f"stage {ref} is not an earlier stage")
        return needed

    def _global_args(self, instructions: list[Instruction]) -> dict[str, str | None]:
        values: dict[str, str | None] = {}
        for ins in instructions:
            for name, default in self._arg_pairs(ins, values):
                values[name] = self.options.build_args.get(name, default)
        return values

    def _expand_global(self, text: str) -> str:
        values = {k: v for k, v in self.global_args.items() if v is not None}
        return expand_word(text, values, self.escape)

    # ------------------------------------------------------------------ stages

    def _build_stage(self, stage: Stage, multi: bool, number: int, count: int) -> None:
        base_text = self._expand_global(stage.from_ins.args.split()[0])
        state = self._base_state(base_text, stage)
        base_layers = len(state.config.get("rootfs", {}).get("diff_ids") or [])
        base_history = len(state.config.get("history") or [])
        instructions = self._triggers(state, stage.from_ins) + stage.instructions
        total = len(instructions) + 1
        prefix = f"[{number}/{count}] " if multi else ""
        self.say(f"{prefix}STEP 1/{total}: {stage.from_ins.original}")
        for n, ins in enumerate(instructions, start=2):
            self.say(f"{prefix}STEP {n}/{total}: {ins.original}")
            self._step(state, ins)
        self.results[stage.index] = state.image_id
        self.base_layers[stage.index] = base_layers, base_history

    def _base_state(self, base: str, stage: Stage) -> State:
        if base.lower() == "scratch":
            return State(None, _scratch_config())
        ref = self._stage_ref(base)
        if ref is not None and ref < stage.index:
            image_id = self.results[ref]
            if image_id is None:
                return self._base_state("scratch", stage)
        else:
            try:
                image_id = self.resolve_image(base)
            except ImageError as e:
                raise stage.from_ins.error(str(e)) from None
        state = State(image_id, self._config(image_id))
        env = state.inner.get("Env") or []
        if not any(item.startswith("PATH=") for item in env):  # as buildah adds it
            state.inner["Env"] = list(env) + [DEFAULT_PATH]
        return state

    def _config(self, image_id: str) -> dict[str, Any]:
        with open(self.store.blob_path(image_id), "rb") as f:
            return json.load(f)

    def _triggers(self, state: State, from_ins: Instruction) -> list[Instruction]:
        """The base image's ONBUILD instructions, run first (as docker does)."""
        triggers = []
        for text in state.inner.get("OnBuild") or []:
            parsed = parse(text).instructions
            for ins in parsed:
                ins.line = from_ins.line
                triggers.append(ins)
        return triggers

    # ------------------------------------------------------------------ steps

    def _step(self, state: State, ins: Instruction) -> None:
        k = ins.keyword
        if k == "ARG":
            self._arg(state, ins)
            return
        if k == "RUN":
            self._run(state, ins)
        elif k in ("COPY", "ADD"):
            self._copy(state, ins)
        else:
            change, created_by = self._config_change(state, ins)
            self._cached(state, [created_by],
                         lambda: self._commit(state, created_by, None, change))
        if k == "CMD":
            state.cmd_set = True

    def _cached(self, state: State, description: list[str], action: Callable[[], None]) -> None:
        if self.options.estargz:  # the same step, another blob (and diff_id)
            description = [*description, "--format estargz"]
        key = cache.key(state.image_id, description)
        if not self.options.no_cache:
            hit = cache.lookup(self.store, key)
            if hit is not None:
                self.say(f"--> Using cache {hit.partition(':')[2]}")
                state.image_id, state.config = hit, self._config(hit)
                state.onbuild_cleared = True
                self.say(f"--> {hit.partition(':')[2][:12]}")
                return
        action()
        assert state.image_id is not None
        cache.remember(self.store, key, state.image_id)
        self.say(f"--> {state.image_id.partition(':')[2][:12]}")

    def _commit(self, state: State, created_by: str, layer: tuple[str, str] | None,
                change: Callable[[dict[str, Any]], None] | None = None) -> None:
        """The step's image: the parent's config (changed) and layers (plus ``layer``)."""
        config = json.loads(json.dumps(state.config))
        inner = config.setdefault("config", {})
        if not state.onbuild_cleared:
            inner.pop("OnBuild", None)
            state.onbuild_cleared = True
        if change:
            change(inner)
        now = _now()
        config["created"] = now
        entry: dict[str, Any] = {"created": now, "created_by": created_by}
        if layer is None:
            entry["empty_layer"] = True
        config["history"] = list(config.get("history") or []) + [entry]
        rootfs_ = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        if layer is not None:
            rootfs_["diff_ids"] = list(rootfs_.get("diff_ids") or []) + [layer[1]]
        with self._working("storing the step's image"):
            state.image_id = self._add_image(state.image_id, config, layer, [])
        state.config = config

    def _add_image(self, parent: str | None, config: dict[str, Any],
                   layer: tuple[str, str] | None, names: list[str],
                   keep_layers: int | None = None) -> str:
        """An image of ``parent``'s layers (the first ``keep_layers`` of them) plus
        ``layer``, with ``config``."""
        layers = [] if parent is None else [
            LayerSpec("", r["media_type"], r["blob_digest"], None, r["diff_id"])
            for r in self.store.db.execute(
                "SELECT diff_id, blob_digest, media_type FROM image_layers "
                "WHERE image_id = ? ORDER BY position", (parent,))][:keep_layers]
        if layer is not None:
            layers.append(LayerSpec(os.path.basename(layer[0]), mt.OCI_LAYER_GZIP, None, None,
                                    layer[1]))
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        spec = ImageSpec(config_bytes, config, layers, names)
        space = self._workspace()
        image_id = ImageAdder(self.store, space, prepared=self.prepared).add_image(
            spec, DirectorySource(space.path), "build step")
        if parent is not None:  # the step's parent image: an intermediate one while untagged
            with self.store.transaction() as db:
                store_images.record_parent(db, image_id, parent)
        if layer is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(layer[0])
        return image_id

    def _materialized(self, state: State) -> str:
        """The stage's image so far (an empty one for a scratch stage with no step yet)."""
        if state.image_id is None:
            state.image_id = self._add_image(None, state.config, None, [])
        return state.image_id

    # ------------------------------------------------------------------ ARG and config steps

    def _arg_pairs(self, ins: Instruction, values: dict[str, str | None]
                   ) -> list[tuple[str, str | None]]:
        known = {k: v for k, v in values.items() if v is not None}
        pairs = []
        for word in split_keeping_quotes(ins.args, self.escape):
            name, sep, default = word.partition("=")
            if not name or not name.replace("_", "a").isalnum():
                raise ins.error(f"invalid argument name {name!r}")
            pairs.append((name, expand_word(default, known, self.escape) if sep else None))
        return pairs

    def _arg(self, state: State, ins: Instruction) -> None:
        pairs = self._arg_pairs(ins, state.variables())
        for name, default in pairs:
            if name in self.options.build_args:
                state.args[name] = self.options.build_args[name]
            elif default is not None:
                state.args[name] = default
            else:
                state.args[name] = self.global_args.get(name)
        created_by = "/bin/sh -c #(nop) ARG " + " ".join(name for name, _ in pairs)
        self._cached(state, [created_by], lambda: self._commit(state, created_by, None))

    def _pairs(self, state: State, ins: Instruction) -> list[tuple[str, str]]:
        """ENV/LABEL ``name=value ...`` (or the old ``name value``), expanded with the
        variables as they were before the instruction."""
        variables = state.variables()
        words = split_keeping_quotes(ins.args, self.escape)
        if words and "=" not in words[0]:
            name, _, value = ins.args.partition(" ")
            if not value.strip():
                raise ins.error("needs NAME VALUE or NAME=VALUE")
            return [(name, expand_word(value.strip(), variables, self.escape))]
        pairs = []
        for word in words:
            name, sep, value = word.partition("=")
            if not sep:
                raise ins.error(f"syntax error - can't find = in {word!r}. Must be of the "
                                "form: name=value")
            pairs.append((expand_word(name, variables, self.escape),
                          expand_word(value, variables, self.escape)))
        return pairs

    def _config_change(self, state: State, ins: Instruction
                       ) -> tuple[Callable[[dict[str, Any]], None], str]:
        k = ins.keyword
        variables = state.variables()
        created_by = f"/bin/sh -c #(nop) {k} {ins.args}"

        def word() -> str:
            return expand_word(ins.args, variables, self.escape)

        def words() -> list[str]:
            if ins.exec_form is not None:
                return [expand_word(w, variables, self.escape) for w in ins.exec_form]
            return expand_words(ins.args, variables, self.escape)

        if k == "ENV":
            pairs = self._pairs(state, ins)

            def change(inner: dict[str, Any]) -> None:
                env = list(inner.get("Env") or [])
                for name, value in pairs:
                    env = [e for e in env if e.partition("=")[0] != name] + [f"{name}={value}"]
                inner["Env"] = env
            return change, created_by
        if k == "LABEL":
            pairs = self._pairs(state, ins)
            return (lambda inner: inner.__setitem__(
                "Labels", {**(inner.get("Labels") or {}), **dict(pairs)})), created_by
        if k == "WORKDIR":
            path = word()
            current = state.inner.get("WorkingDir") or "/"
            full = posixpath.normpath(posixpath.join(current, path))
            return (lambda inner: inner.__setitem__("WorkingDir", full)), created_by
        if k == "USER":
            user = word()
            return (lambda inner: inner.__setitem__("User", user)), created_by
        if k == "STOPSIGNAL":
            signal_name = word()
            return (lambda inner: inner.__setitem__("StopSignal", signal_name)), created_by
        if k == "EXPOSE":
            ports = [p if "/" in p else p + "/tcp" for p in words()]
            return (lambda inner: inner.__setitem__(
                "ExposedPorts", {**(inner.get("ExposedPorts") or {}),
                                 **{p.lower(): {} for p in ports}})), created_by
        if k == "VOLUME":
            volumes = words()
            return (lambda inner: inner.__setitem__(
                "Volumes", {**(inner.get("Volumes") or {}), **{v: {} for v in volumes}})), \
                created_by
        if k in ("CMD", "ENTRYPOINT"):
            command = ins.exec_form if ins.exec_form is not None else (
                state.shell() + [ins.args] if ins.args else [])
            key = "Cmd" if k == "CMD" else "Entrypoint"
            reset_cmd = k == "ENTRYPOINT" and not state.cmd_set

            def set_command(inner: dict[str, Any]) -> None:
                inner[key] = command
                if reset_cmd:
                    inner["Cmd"] = None
            return set_command, created_by
        if k == "SHELL":
            shell = list(ins.exec_form or [])
            return (lambda inner: inner.__setitem__("Shell", shell)), created_by
        if k == "ONBUILD":
            trigger = ins.args
            return (lambda inner: inner.__setitem__(
                "OnBuild", list(inner.get("OnBuild") or []) + [trigger])), created_by
        if k == "MAINTAINER":
            author = ins.args

            def set_author(inner: dict[str, Any]) -> None:
                state.config["author"] = author
            return set_author, created_by
        if k == "HEALTHCHECK":
            check = self._healthcheck(state, ins)
            return (lambda inner: inner.__setitem__("Healthcheck", check)), created_by
        raise ins.error("not supported")  # the parser lets no other instruction through

    def _healthcheck(self, state: State, ins: Instruction) -> dict[str, Any]:
        word, _, rest = ins.args.partition(" ")
        if word.upper() == "NONE":
            if rest.strip():
                raise ins.error("HEALTHCHECK NONE takes no arguments")
            return {"Test": ["NONE"]}
        rest = rest.strip()
        from unionfs.image.build.dockerfile import _json_array

        exec_form = _json_array(rest)
        check: dict[str, Any] = {"Test": ["CMD", *exec_form] if exec_form is not None
                                 else ["CMD-SHELL", rest]}
        names = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
                 "start-interval": "StartInterval"}
        for flag, value in ins.flags.items():
            if flag == "retries":
                check["Retries"] = int(value or "0")
            else:
                check[names[flag]] = _duration(value or "", ins)
        return check

    # ------------------------------------------------------------------ RUN

    def _run(self, state: State, ins: Instruction) -> None:
        argv = ins.exec_form if ins.exec_form is not None else state.shell() + [ins.args]
        env = state.env()
        in_scope = {k: v for k, v in state.args.items() if v is not None and k not in env}
        for name in PROXY_ARGS:
            if name in self.options.build_args and name not in in_scope:
                in_scope[name] = self.options.build_args[name]
        shown = [f"{k}={v}" for k, v in in_scope.items() if k not in PROXY_ARGS]
        created_by = (f"|{len(shown)} {' '.join(shown)} " if shown else "") + " ".join(argv)
        network = ins.flags.get("network") or self.options.network
        network = "host" if network == "default" else network
        description = [created_by, network] + [f"{k}={v}" for k, v in in_scope.items()]

        def action() -> None:
            spec = RunSpec(command=argv, entrypoint=[], network=network, runtime="runc",
                           env=[f"{k}={v}" for k, v in in_scope.items()])
            with self._container(state, spec) as container:
                point = rootfs.mount(self.store, container)
                self._ensure_workdir(state, point, container)
                code = self._execute(records.get(self.store, container.id))
                if code != 0:
                    raise ImageError(f'building at STEP "{ins.original}" (line {ins.line}): '
                                     f"exit status {code}", exit_status=code)
                layer = self._run_layer(records.get(self.store, container.id))
            self._commit(state, created_by, layer)
        self._cached(state, description, action)

    def _run_layer(self, container: Container) -> tuple[str, str] | None:
        """A RUN's layer: its upper, moved into the store when it can be (``layers``),
        else written and unpacked as ``commit`` does; None when nothing changed."""
        upper = rootfs.upper_dir(self.store, container)
        if not os.listdir(upper):
            return None
        with self._working("writing the step's layer"):
            return self._write_run_layer(container, upper)

    def _write_run_layer(self, container: Container, upper: str) -> tuple[str, str] | None:
        if self.options.estargz or not step_layers.movable(self.store, upper):
            # (an eStargz layer's tar holds a TOC and a landmark, not in the upper)
            return self._prepared_layer(upper_layer(self.store, container, self._workspace(),
                                                    self.options.layer_format))
        blob, digests = step_layers.write_blob(upper, self._workspace())
        kept = self._workspace().new_path("layer-" + digests.diff_id[7:])
        os.rename(upper, kept)  # out of the container's directory, which goes next
        os.mkdir(upper, 0o755)
        os.chmod(kept, 0o755)
        self.prepared[digests.diff_id] = (kept, digests)
        return blob, digests.diff_id

    def _prepared_layer(self, layer: UpperLayer | None) -> tuple[str, str] | None:
        """An upper written out by ``commit``'s writer: its directory installed as the layer
        when the step's image is added (``ImageAdder.prepared``), not unpacked again."""
        if layer is None:
            return None
        self.prepared[layer.digests.diff_id] = (layer.directory, layer.digests)
        return layer.blob, layer.digests.diff_id

    def _execute(self, container: Container) -> int:
        """The container's process to its end, its output ours (with -q a log file, shown on
        stderr if the step fails), its stdin /dev/null."""
        saved = os.dup(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        log = self._workspace().new_path("run.log") if self.options.quiet else None
        try:
            code = Session(self.store, container).run(log_path=log)
        except ImageError as e:
            raise ImageError(f"cannot run {' '.join(container.spec.command or [])}: {e}",
                             e.exit_status) from None
        finally:
            os.dup2(saved, 0)
            os.close(saved)
        if log is not None:
            if code != 0:
                with open(log, "rb") as f:
                    sys.stderr.buffer.write(f.read())
                sys.stderr.flush()
            os.unlink(log)
        return code

    @contextlib.contextmanager
    def _container(self, state: State, spec: RunSpec) -> Iterator[Container]:
        """A container over the stage's image, removed (unmounted) whatever happens."""
        image_id = self._materialized(state)
        container = lifecycle.create(self.store, image_id, "build", None, spec)
        try:
            yield container
        finally:
            with contextlib.suppress(ImageError):
                Session(self.store, records.get(self.store, container.id)).remove(force=True)

    def _ensure_workdir(self, state: State, point: str,
                        container: Container | None = None) -> str:
        """A WORKDIR that does not exist yet is made by the next RUN, COPY or ADD, owned by
        the USER then (as buildah does). In an ordinary user's store the mount cannot give it
        another owner: it is made there, then its owner recorded in the upper (the unmounted
        ``container``'s, remounted): returns the mount point."""
        workdir = state.inner.get("WorkingDir")
        if not workdir or os.path.isdir(ctx.resolve_in_root(point, workdir)):
            return point
        owner = self._owner(point, state.inner.get("User") or "")
        if not self.store.records_owners:
            ctx.make_parents(point, workdir, owner)
            return point
        assert container is not None
        made = ctx.make_parents(point, workdir, (os.geteuid(), os.getegid()))
        rootfs.unmount(self.store, records.get(self.store, container.id))
        upper = rootfs.upper_dir(self.store, container)
        for rel in made:
            override.write(os.path.join(upper, rel), owner[0], owner[1], stat.S_IFDIR | 0o755)
        return rootfs.mount(self.store, records.get(self.store, container.id))

    # ------------------------------------------------------------------ COPY and ADD

    def _owner(self, point: str, spec: str, *, same_gid: bool = False) -> tuple[int, int]:
        """``user[:group]`` (names looked up in the rootfs); with ``same_gid`` (--chown) a
        missing group is the user's id, as docker does; else the user's passwd group."""
        if not spec:
            return 0, 0
        user, _, group = spec.partition(":")
        uid, gid = self._lookup(point, "passwd", user)
        if group:
            gid = self._lookup(point, "group", group)[0]
        elif same_gid:
            gid = uid
        return uid, gid

    @staticmethod
    def _lookup(point: str, file: str, name: str) -> tuple[int, int]:
        if name.isdigit():
            uid = int(name)
            gid = 0
            if file == "passwd":
                for fields in _entries(point, "passwd"):
                    if len(fields) >= 4 and fields[2] == name:
                        gid = int(fields[3])
                        break
            return uid, gid
        for fields in _entries(point, file):
            if fields[0] == name and len(fields) >= 3:
                own = int(fields[2])
                return own, int(fields[3]) if file == "passwd" and len(fields) > 3 else own
        kind = "user" if file == "passwd" else "group"
        raise ImageError(f"unable to find {kind} {name}: no matching entries in {file} file")

    def _copy(self, state: State, ins: Instruction) -> None:
        variables = state.variables()
        items = [expand_word(w, variables, self.escape) for w in ins.exec_form] \
            if ins.exec_form is not None else expand_words(ins.args, variables, self.escape)
        sources, dest = items[:-1], items[-1]
        if not posixpath.isabs(dest):
            base = state.inner.get("WorkingDir") or "/"
            dest = posixpath.join(base, dest) + ("/" if dest.endswith("/") or dest in
                                                 (".", "./") else "")
        chmod = None
        if ins.flags.get("chmod"):
            try:
                chmod = int(ins.flags["chmod"] or "", 8)
            except ValueError:
                raise ins.error(f"invalid --chmod {ins.flags['chmod']!r} (octal)") from None
        chown = expand_word(ins.flags.get("chown") or "", variables, self.escape)
        copy = _Copy(ins, sources, dest, chown, chmod)
        if ins.keyword == "ADD":
            copy.downloads = {url: fetch(url, self._workspace().new_path(f"url{n}"))
                              for n, url in enumerate(sources) if is_url(url)}
        source = ins.flags.get("from")
        if source:
            # an image's files are fixed by its id: the key needs no mount, only a miss does
            image_id = self._from_image(ins, expand_word(source, variables, self.escape))
            description = [f"{ins.keyword} --from={image_id} {json.dumps(sources)} {dest}",
                           chown, str(chmod)]

            def from_image() -> None:
                with self._mounted_image(image_id) as root:
                    self._do_copy(state, copy, root, None)
            self._cached(state, description, from_image)
            return
        plan = copy.plan(self.options.context, self.rules)
        self._cached(state, [plan.created_by, chown, str(chmod)],
                     lambda: self._do_copy(state, copy, self.options.context, self.rules))

    def _do_copy(self, state: State, copy: _Copy, root: str,
                 rules: IgnoreRules | None) -> None:
        """The copy, in a container over the stage's image; its layer, and the step's image."""
        plan = copy.plan(root, rules)
        spec = RunSpec(command=["true"], entrypoint=[], runtime="runc")
        with self._container(state, spec) as container:
            point = rootfs.mount(self.store, container)
            owner = self._owner(point, copy.chown, same_gid=True)
            target = ctx.resolve_in_root(point, copy.dest)
            real = copy.plan(root, rules, os.path.isdir(target)).entries
            layer = self._copy_layer(state, point, real, owner, copy.chmod, plan.archives,
                                     copy.dest)
        self._commit(state, plan.created_by, layer)

    def _copy_layer(self, state: State, point: str, entries: list[ctx.Entry],
                    owner: tuple[int, int], chmod: int | None, archives: list[str],
                    dest: str) -> tuple[str, str] | None:
        """A COPY's or ADD's layer written straight from its sources
        (``context.layer_of_copy``); None when it copies nothing."""
        workdir = state.inner.get("WorkingDir")
        also = [(workdir, self._owner(point, state.inner.get("User") or ""))] if workdir \
            else []
        blob = self._workspace().new_path("copy.tar.gz")
        with self._working("copying into the step's layer"), \
                step_layers.layer_blob(blob, self.options.layer_format) as sink:
            count = ctx.layer_of_copy(point, entries, owner, chmod, also, sink,
                                      archives=archives, dest=dest)
        if count == 0:
            os.unlink(blob)
            return None
        return blob, sink.diff_id

    def _from_image(self, ins: Instruction, source: str) -> str | None:
        """The image ``COPY --from`` names: an earlier stage's (None: an empty scratch
        stage), or an image by name or id (pulled when missing)."""
        ref = self._stage_ref(source)
        if ref is not None:
            if ref not in self.results:
                raise ins.error(f"stage {source} is not an earlier stage")
            return self.results[ref]
        try:
            return self.resolve_image(source)
        except ImageError as e:
            raise ins.error(str(e)) from None

    @contextlib.contextmanager
    def _mounted_image(self, image_id: str | None) -> Iterator[str]:
        """The image's rootfs, mounted (a container's, removed after)."""
        if image_id is None:
            empty = self._workspace().new_path("empty")
            os.makedirs(empty, exist_ok=True)
            yield empty
            return
        spec = RunSpec(command=["true"], entrypoint=[], runtime="runc")
        container = lifecycle.create(self.store, image_id, "build-from", None, spec)
        try:
            yield rootfs.mount(self.store, container)
        finally:
            with contextlib.suppress(ImageError):
                Session(self.store, records.get(self.store, container.id)).remove(force=True)

    # ------------------------------------------------------------------ the end

    def _final_labels(self, image_id: str | None) -> str:
        """The image with ``--label``s, a last step as buildah adds it (cached like one); an
        empty image for a build of scratch alone."""
        shown = " ".join(f'"{k}"="{v}"' for k, v in self.options.labels.items())
        created_by = f"/bin/sh -c #(nop) LABEL {shown}"
        key = cache.key(image_id, ["--label", created_by])
        hit = None if self.options.no_cache else cache.lookup(self.store, key)
        if hit is not None:
            return hit
        config = self._config(image_id) if image_id else _scratch_config()
        inner = config.setdefault("config", {})
        if self.options.labels:
            inner["Labels"] = {**(inner.get("Labels") or {}), **self.options.labels}
            now = _now()
            config["created"] = now
            config["history"] = list(config.get("history") or []) + [
                {"created": now, "created_by": created_by, "empty_layer": True}]
        made = self._add_image(image_id, config, None, [])
        cache.remember(self.store, key, made)
        return made

    def _squash(self, image_id: str, base_layers: int, base_history: int) -> str:
        """The image with the layers the build added squashed into one (``squash``)."""
        directories = layer_dirs(self.store, image_id)
        config = self._config(image_id)
        diff_ids = list(config["rootfs"]["diff_ids"])
        if len(diff_ids) - base_layers < 2:
            return image_id
        blob = self._workspace().new_path("squashed.tar.gz")
        with step_layers.layer_blob(blob, self.options.layer_format) as sink:
            write_squashed(list(reversed(directories[base_layers:])), sink)
        diff_id = sink.diff_id
        config["rootfs"]["diff_ids"] = diff_ids[:base_layers] + [diff_id]
        # every step keeps its entry, as podman's --squash does: the build's are empty but
        # the last, which stands for the squashed layer
        history = [dict(entry) for entry in config.get("history") or []]
        for entry in history[base_history:]:
            entry["empty_layer"] = True
        if len(history) > base_history:
            history[-1].pop("empty_layer", None)
        config["history"] = history
        config["created"] = _now()
        return self._add_image(image_id, config, (blob, diff_id), [], keep_layers=base_layers)

    def _tag(self, image_id: str) -> None:
        if not self.options.tags:
            return
        with self.store.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)",
                           [(name, image_id, time.time()) for name in self.options.tags])
        self.say(f"COMMIT {' '.join(self.options.tags)}")
        for name in self.options.tags:
            self.say(f"Successfully tagged {name}")


def _entries(point: str, file: str) -> list[list[str]]:
    try:
        with open(ctx.resolve_in_root(point, f"/etc/{file}"), encoding="utf-8",
                  errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip()]
    except OSError:
        return []


@dataclass
class _Plan:
    entries: list[ctx.Entry]  # what is copied as it is (context files, downloads)
    archives: list[str]       # ADD's local archives (host paths), extracted
    created_by: str           # the history entry, with the digest of what is copied


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def fetch(url: str, directory: str) -> str:
    """ADD of a URL: the file downloaded into ``directory`` under the URL's last path
    element, mode 0600, its mtime the server's Last-Modified (as docker does)."""
    import email.utils
    import shutil
    import urllib.error
    import urllib.parse
    import urllib.request

    name = posixpath.basename(urllib.parse.urlsplit(url).path)
    if not name:
        raise ImageError(f"ADD {url}: cannot tell a file name from the URL")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out)
            modified = response.headers.get("Last-Modified")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ImageError(f"ADD {url}: {getattr(e, 'reason', None) or e}") from None
    os.chmod(path, 0o600)
    if modified:
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(modified).timestamp()
            os.utime(path, (when, when))
    return path


@dataclass
class _Copy:
    """A COPY or ADD after substitution: what it copies where, and how."""

    ins: Instruction
    sources: list[str]
    dest: str
    chown: str
    chmod: int | None
    downloads: dict[str, str] = field(default_factory=dict)  # ADD's URLs -> the files

    @property
    def what(self) -> str:
        return f"{self.ins.keyword} failed"

    def plan(self, root: str, rules: IgnoreRules | None, dest_is_dir: bool = False) -> _Plan:
        def host(source: str) -> str:
            return os.path.join(root, posixpath.normpath("/" + source).lstrip("/"))

        local = [s for s in self.sources if s not in self.downloads]
        archives = [s for s in local if self.ins.keyword == "ADD" and ctx.is_archive(host(s))]
        plain = [s for s in local if s not in archives]
        entries = ctx.collect(root, plain, self.dest, rules=rules,
                              dest_is_dir_in_image=dest_is_dir or bool(self.downloads)
                              and len(self.sources) > 1, what=self.what) if plain else []
        into_dir = self.dest.endswith("/") or len(self.sources) > 1 or dest_is_dir
        for path in self.downloads.values():
            target = posixpath.join(self.dest, os.path.basename(path)) if into_dir \
                else self.dest
            entries.append(ctx.Entry(path, target))
        archive_paths = [host(s) for s in archives]
        digest = ctx.digest(entries + [ctx.Entry(a, self.dest) for a in archive_paths],
                            self.chmod)
        kind = "multi" if len(self.sources) > 1 else (
            "dir" if entries and entries[0].top else "file")
        return _Plan(entries, archive_paths,
                     f"/bin/sh -c #(nop) {self.ins.keyword} {kind}:{digest} in {self.dest} ")
