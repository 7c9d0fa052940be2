"""search: the registry's catalog filtered by a term, each repository with its tags."""

from __future__ import annotations

from pathlib import Path

from tests.registry.conftest import Cli, ImageSet


def test_search_lists_matching_repositories_with_tags(cli: Cli, images: ImageSet,
                                                      make_registry, store: Path):
    registry = make_registry()
    host = registry.host
    pushes = [("app:1.0", "app:1.0"), ("app:2.0", "app:2.0"), ("app:1.0", "app-extra:1.0"),
              ("base:1.0", "team/myapp:latest"), ("base:1.0", "base:1.0")]
    for image, target in pushes:
        result = cli.push(images.store, image, registry.ref(target))
        if target == "app-extra:1.0":  # every blob is in the registry, under app: mounted
            assert result.stderr.count("Mounted from app") == 3, result.stderr

    lines = cli.run(store, "search", "--registry", host, "app").stdout.splitlines()
    assert lines[0].split() == ["NAME", "TAGS"]
    rows = [line.split(None, 1) for line in lines[1:]]
    assert rows == [[f"{host}/app", "1.0, 2.0"], [f"{host}/app-extra", "1.0"],
                    [f"{host}/team/myapp", "latest"]]

    upper = cli.run(store, "search", "--registry", host, "APP", "--limit", "1").stdout
    assert [line.split(None, 1) for line in upper.splitlines()[1:]] == [[f"{host}/app",
                                                                         "1.0, 2.0"]]

    nothing = cli.run(store, "search", "--registry", host, "no-such-thing").stdout
    assert [line.split() for line in nothing.splitlines() if line.strip()] == [["NAME", "TAGS"]]
