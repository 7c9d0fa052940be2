"""Names, tags, removal, pruning, listing, history, inspect and disk usage of a store."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from tests.image.conftest import (
    HEX64,
    assert_store_unchanged,
    expect_error,
    image_ids,
    images_json,
    inspect,
    inspect_one,
    layer_dirs_on_disk,
    load,
    parse_table,
    run_pyunion,
    store_state,
    used_layer_dirs,
)
from tests.image.imagebuild import (
    APP_CMD,
    APP_ENV,
    APP_STEPS,
    APP_WORKDIR,
    Layer,
    LayerTar,
    json_bytes,
    minimal_config,
    write_oci_layout,
)

IMAGE_COLUMNS = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
HISTORY_COLUMNS = ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s?([kKMGT]?i?B)$")
UNITS = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
         "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


def human_bytes(text: str) -> float:
    m = SIZE_RE.match(text.strip())
    assert m, f"not a size: {text!r}"
    return float(m.group(1)) * UNITS[m.group(2)]


def row_pairs(store: Path, *args: str) -> list[tuple[str, str]]:
    return sorted((r["Repository"], r["Tag"]) for r in images_json(store, *args))


@pytest.fixture
def app_and_tools(images, store) -> Path:
    load(store, images.package("app", "oci-dir"))
    load(store, images.package("tools", "docker-archive"))
    return store


# --------------------------------------------------------------------------- tags and rmi


def test_tag_and_untag_one_of_two(images, app_and_tools):
    store = app_and_tools
    facts = images.facts("app")
    run_pyunion(store, "tag", "app:2.0", "app:latest")
    assert row_pairs(store, "app") == [("app", "2.0"), ("app", "latest")]
    assert sorted(inspect_one(store, "app")["RepoTags"]) == ["app:2.0", "app:latest"]
    assert image_ids(store).count(facts.short_id) == 1, "-q lists each image once"
    result = run_pyunion(store, "rmi", "app:latest")
    assert result.stdout.splitlines() == ["Untagged: app:latest"]
    assert inspect_one(store, facts.short_id)["RepoTags"] == ["app:2.0"]
    assert layer_dirs_on_disk(store) == used_layer_dirs(store)


def test_tag_by_id_prefix_and_move_a_tag(images, app_and_tools):
    store = app_and_tools
    app, tools = images.facts("app"), images.facts("tools")
    run_pyunion(store, "tag", app.image_id[7:15], "registry.example.com:5000/team/app:v1")
    assert inspect_one(store, "registry.example.com:5000/team/app:v1")["Id"] == app.image_id
    # moving app:2.0 to the tools image leaves app with its other tag only
    run_pyunion(store, "tag", "tools:1.0", "app:2.0")
    assert inspect_one(store, "app:2.0")["Id"] == tools.image_id
    assert inspect_one(store, app.short_id)["RepoTags"] == ["registry.example.com:5000/team/app:v1"]


def test_rmi_last_tag_deletes_image_and_unshared_layers(images, app_and_tools):
    store = app_and_tools
    app, tools = images.facts("app"), images.facts("tools")
    result = run_pyunion(store, "rmi", "app:2.0")
    lines = result.stdout.splitlines()
    assert lines[0] == "Untagged: app:2.0"
    assert f"Deleted: {app.image_id}" in lines
    assert image_ids(store, "-a") == [tools.short_id]
    assert layer_dirs_on_disk(store) == used_layer_dirs(store, "tools:1.0"), "shared base kept"
    assert (Path(inspect_one(store, "tools:1.0")["LayerDirs"][0]) / "bin/busybox").is_file()


def test_rmi_by_id_prefix(images, app_and_tools):
    store = app_and_tools
    tools = images.facts("tools")
    result = run_pyunion(store, "rmi", tools.image_id[7:17])
    assert "Untagged: tools:1.0" in result.stdout.splitlines()
    assert f"Deleted: {tools.image_id}" in result.stdout.splitlines()
    assert image_ids(store, "-a") == [images.facts("app").short_id]


def test_rmi_id_with_several_tags_needs_force(images, app_and_tools):
    store = app_and_tools
    app = images.facts("app")
    run_pyunion(store, "tag", "app:2.0", "other:9")
    before = store_state(store)
    result = run_pyunion(store, "rmi", app.short_id, check=False)
    expect_error(result, r"multiple|several|force|-f")
    assert_store_unchanged(before, store_state(store))
    result = run_pyunion(store, "rmi", "-f", app.short_id)
    lines = result.stdout.splitlines()
    assert sorted(line for line in lines if line.startswith("Untagged:")) == [
        "Untagged: app:2.0", "Untagged: other:9"]
    assert f"Deleted: {app.image_id}" in lines
    assert image_ids(store, "-a") == [images.facts("tools").short_id]


def test_rmi_unknown_image(app_and_tools):
    store = app_and_tools
    before = store_state(store)
    expect_error(run_pyunion(store, "rmi", "nosuch:1", check=False),
                 r"no such|not found|unknown|nosuch")
    expect_error(run_pyunion(store, "rmi", "0123456789ab", check=False),
                 r"no such|not found|unknown|0123456789ab")
    assert_store_unchanged(before, store_state(store))


def _colliding_configs(prefix_len: int = 4) -> tuple[bytes, bytes, list[Layer]]:
    """Two configs over one small layer whose digests share the first ``prefix_len`` hex."""
    layer = Layer.of(LayerTar().file("hello", b"ambiguous\n").bytes())
    first = json_bytes(minimal_config([layer.diff_id], extra={"config": {"Labels": {"n": "0"}}}))
    want = hashlib.sha256(first).hexdigest()[:prefix_len]
    for n in range(1, 10_000_000):
        cfg = json_bytes(minimal_config([layer.diff_id],
                                        extra={"config": {"Labels": {"n": str(n)}}}))
        if hashlib.sha256(cfg).hexdigest()[:prefix_len] == want:
            return first, cfg, [layer]
    raise AssertionError("no collision found")


def test_ambiguous_id_prefix_names_the_candidates(store, tmp_path):
    first, second, layers = _colliding_configs()
    layout = tmp_path / "amb"
    write_oci_layout(layout, layers, first, ref_name="amb:one")
    write_oci_layout(layout, layers, second, ref_name="amb:two")
    result = load(store, layout)
    assert sorted(result.stdout.splitlines()) == ["Loaded image: amb:one",
                                                  "Loaded image: amb:two"]
    ids = [hashlib.sha256(c).hexdigest() for c in (first, second)]
    prefix = ids[0][:4]
    before = store_state(store)
    message = expect_error(run_pyunion(store, "rmi", prefix, check=False), r"ambiguous|multiple")
    for full in ids:
        assert full[:12] in message, f"candidate {full[:12]} not named in {message!r}"
    assert_store_unchanged(before, store_state(store))
    # a longer, unique prefix works and removes only that image
    unique = next(ids[0][:n] for n in range(5, 64) if ids[0][:n] != ids[1][:n])
    run_pyunion(store, "rmi", unique)
    assert row_pairs(store) == [("amb", "two")]


def test_rmi_force_everything(images, app_and_tools):
    store = app_and_tools
    load(store, images.package("base", "oci-dir"))
    run_pyunion(store, "tag", "app:2.0", "app:extra")
    ids = image_ids(store, "-a")
    assert len(ids) == 3
    run_pyunion(store, "rmi", "-f", *ids)
    assert image_ids(store, "-a") == []
    assert images_json(store) == []
    assert layer_dirs_on_disk(store) == set(), "layers of deleted images left behind"


# --------------------------------------------------------------------------- sharing, df


def test_shared_base_is_stored_once(images, app_and_tools):
    store = app_and_tools
    app, tools = inspect(store, "app:2.0", "tools:1.0")
    assert app["LayerDirs"][0] == tools["LayerDirs"][0]
    on_disk = layer_dirs_on_disk(store)
    assert on_disk == {Path(d).name for d in app["LayerDirs"] + tools["LayerDirs"]}
    assert len(on_disk) == len(set(app["RootFS"]["Layers"] + tools["RootFS"]["Layers"]))
    assert all(HEX64.match(name) for name in layer_dirs_on_disk(store))


def _file_bytes(root: Path) -> int:
    """Apparent size of the regular files below ``root``, each inode counted once."""
    seen, total = set(), 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def test_df_agrees_with_du(images, app_and_tools):
    store = app_and_tools
    out = run_pyunion(store, "df").stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("Images")), None)
    assert line, f"no Images line in df output:\n{out}"
    size_token = next(t for t in re.findall(r"\d+(?:\.\d+)?\s?[kKMGT]?i?B\b", line))
    df_bytes = human_bytes(size_token)
    files = _file_bytes(store / "layers")
    du = int(subprocess.run(["du", "-sb", str(store / "layers")], capture_output=True,
                            text=True, check=True).stdout.split()[0])
    assert min(abs(df_bytes - files) / files, abs(df_bytes - du) / du) < 0.15, (
        f"df says {size_token} ({df_bytes:.0f} B) for the images; du -sb layers: {du}, "
        f"regular files: {files}")
    per_image = sum(human_bytes(r["Size"]) for r in images_json(store))
    assert df_bytes < 0.75 * per_image, "df counts the shared base layer twice"


# --------------------------------------------------------------------------- prune


def test_prune_removes_dangling_only(images, store):
    old, new = images.facts("app"), images.facts("app-v2")
    load(store, images.package("app", "oci-dir"))
    load(store, images.package("tools", "oci-dir"))
    load(store, images.package("app-v2", "oci-dir"))  # takes app:2.0 over
    rows = {(r["Repository"], r["Tag"], r["ID"].removeprefix("sha256:")[:12])
            for r in images_json(store)}
    assert ("<none>", "<none>", old.short_id) in rows
    assert ("app", "2.0", new.short_id) in rows
    untagged = images.renamed_layout("base", {}, stem="untagged-base")
    load(store, untagged)
    result = run_pyunion(store, "image", "prune", "-f")
    assert sorted(pruned_ids(result.stdout)) == sorted([old.image_id,
                                                        images.facts("base").image_id])
    assert sorted(image_ids(store, "-a")) == sorted([new.short_id, images.facts("tools").short_id])
    assert row_pairs(store) == [("app", "2.0"), ("tools", "1.0")]
    assert layer_dirs_on_disk(store) == used_layer_dirs(store)
    for d in inspect_one(store, "app:2.0")["LayerDirs"]:
        assert Path(d).is_dir()
    # nothing dangling left: a second prune deletes nothing
    again = run_pyunion(store, "image", "prune", "-f")
    assert pruned_ids(again.stdout) == []
    assert sorted(image_ids(store, "-a")) == sorted([new.short_id, images.facts("tools").short_id])


def pruned_ids(stdout: str) -> list[str]:
    """Ids in the ``Deleted: sha256:...`` lines (docker prints ``deleted: sha256:...``)."""
    return re.findall(r"^deleted: (sha256:[0-9a-f]{64})$", stdout, re.IGNORECASE | re.MULTILINE)


# --------------------------------------------------------------------------- images


def test_images_table_and_flags(images, app_and_tools):
    store = app_and_tools
    app, tools = images.facts("app"), images.facts("tools")
    table = run_pyunion(store, "images").stdout
    assert re.findall(r"\S+(?: \S+)*", table.splitlines()[0]) == IMAGE_COLUMNS
    rows = {r["REPOSITORY"]: r for r in parse_table(table)}
    assert set(rows) == {"app", "tools"}
    assert rows["app"]["TAG"] == "2.0" and rows["app"]["IMAGE ID"] == app.short_id
    assert rows["tools"]["IMAGE ID"] == tools.short_id
    for row in rows.values():
        assert row["CREATED"], row
        assert 1_000_000 < human_bytes(row["SIZE"]) < 10_000_000, row
    full = parse_table(run_pyunion(store, "images", "--no-trunc").stdout)
    assert {r["IMAGE ID"] for r in full} == {app.image_id, tools.image_id}
    digests = run_pyunion(store, "images", "--digests").stdout
    assert "DIGEST" in digests.splitlines()[0]
    assert sorted(image_ids(store)) == sorted([app.short_id, tools.short_id])
    assert all(re.fullmatch(r"[0-9a-f]{12}", i) for i in image_ids(store))


def test_images_json_keys(images, app_and_tools):
    rows = images_json(app_and_tools)
    assert len(rows) == 2
    for row in rows:
        assert {"Repository", "Tag", "ID", "Digest", "CreatedAt", "CreatedSince",
                "Size"} <= set(row)


def test_images_filter_by_reference(images, app_and_tools):
    store = app_and_tools
    run_pyunion(store, "tag", "app:2.0", "app:old")
    assert row_pairs(store, "app") == [("app", "2.0"), ("app", "old")]
    assert row_pairs(store, "app:old") == [("app", "old")]
    assert row_pairs(store, "docker.io/library/tools") == [("tools", "1.0")]
    assert row_pairs(store, "nosuch") == []
    table = run_pyunion(store, "images", "nosuch").stdout
    assert parse_table(table) == [], "a filter matching nothing prints the header only"


def test_untagged_image_is_listed(images, store):
    load(store, images.renamed_layout("tools", {}, stem="untagged-tools"))
    rows = parse_table(run_pyunion(store, "images").stdout)
    assert [(r["REPOSITORY"], r["TAG"], r["IMAGE ID"]) for r in rows] == [
        ("<none>", "<none>", images.facts("tools").short_id)]


# --------------------------------------------------------------------------- names


def test_names_are_normalised(images, store):
    base = images.facts("base")
    load(store, images.package("base", "docker-archive"))
    refs = ["busybox", "busybox:latest", "docker.io/library/busybox",
            "docker.io/library/busybox:latest", "library/busybox"]
    for info in inspect(store, *refs):
        assert info["Id"] == base.image_id
        assert info["RepoTags"] == ["busybox:latest"]
    run_pyunion(store, "tag", "busybox", "docker.io/myorg/bb:1")
    run_pyunion(store, "tag", "docker.io/library/busybox:latest", "localhost:5000/x/bb")
    assert row_pairs(store) == [("busybox", "latest"), ("localhost:5000/x/bb", "latest"),
                                ("myorg/bb", "1")]
    run_pyunion(store, "rmi", "docker.io/myorg/bb:1")
    assert row_pairs(store, "myorg/bb") == []


@pytest.mark.parametrize("bad", ["Upper:1", "bad name", "x:" + "t" * 200, "a//b", "-x"])
def test_invalid_names_are_refused(images, store, bad):
    load(store, images.package("base", "oci-dir"))
    before = store_state(store)
    result = run_pyunion(store, "tag", "busybox", bad, check=False)
    assert result.returncode in (1, 125), result  # an error, or a usage error
    assert result.stderr.startswith("pyunion: ") or result.stderr.startswith("usage:")
    assert_store_unchanged(before, store_state(store))


# --------------------------------------------------------------------------- history, inspect


def test_history_newest_first(images, store):
    facts = images.facts("app")
    load(store, images.package("app", "oci-dir"))
    table = run_pyunion(store, "history", "--no-trunc", "app:2.0").stdout
    assert re.findall(r"\S+(?: \S+)*", table.splitlines()[0]) == HISTORY_COLUMNS
    rows = parse_table(table)
    assert [r["CREATED BY"] for r in rows] == list(reversed(APP_STEPS))
    assert rows[0]["IMAGE"] in (facts.image_id, facts.short_id)
    sizes = {r["CREATED BY"]: human_bytes(r["SIZE"]) for r in rows}
    assert sizes["app: config"] == 0 and sizes["base: config"] == 0
    assert sizes["base: busybox rootfs"] > 1_000_000
    assert sizes["app: opaque dir, sub-second mtimes"] > 0
    short = parse_table(run_pyunion(store, "history", "app:2.0").stdout)
    assert short[0]["IMAGE"] == facts.short_id
    quiet = run_pyunion(store, "history", "-q", "app:2.0").stdout.split()
    assert len(quiet) == len(APP_STEPS) and quiet[0] == facts.short_id
    lines = run_pyunion(store, "history", "--format", "json", "app:2.0").stdout.splitlines()
    as_json = [json.loads(line) for line in lines if line.strip()]
    assert len(as_json) == len(APP_STEPS)
    for row, step in zip(as_json, reversed(APP_STEPS), strict=True):
        assert step in row.values(), row


def test_inspect_fields(images, store):
    facts = images.facts("app")
    load(store, images.package("app", "oci-dir"))
    load(store, images.package("tools", "oci-dir"))
    info, tools = inspect(store, "app:2.0", "tools:1.0")
    assert tools["Id"] == images.facts("tools").image_id
    assert info["Id"] == facts.image_id
    assert info["RepoTags"] == ["app:2.0"]
    assert isinstance(info["RepoDigests"], list)
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert info["Config"]["Cmd"] == APP_CMD
    assert info["Config"]["Env"] == APP_ENV
    assert info["Config"]["WorkingDir"] == APP_WORKDIR
    assert info["Config"]["Labels"] == {"org.test.app": "yes"}
    assert info["RootFS"] == {"Type": "layers", "Layers": facts.diff_ids}
    created = datetime.fromisoformat(info["Created"].replace("Z", "+00:00"))
    want = datetime.fromisoformat(facts.config["created"][:26].rstrip("Z") + "+00:00")
    assert abs((created - want).total_seconds()) < 1
    assert isinstance(info["Size"], int) and 1_000_000 < info["Size"] < 10_000_000
    dirs = [Path(d) for d in info["LayerDirs"]]
    assert len(dirs) == len(facts.diff_ids) and (dirs[0] / "bin/busybox").is_file()
    assert all(d.is_dir() for d in dirs)
    by_id = json.loads(run_pyunion(store, "inspect", facts.image_id).stdout)
    assert by_id[0]["Id"] == facts.image_id
    before = store_state(store)
    expect_error(run_pyunion(store, "inspect", "nosuch:1", check=False),
                 r"no such|not found|unknown|nosuch")
    assert_store_unchanged(before, store_state(store))
