"""``search``: repositories of a registry matching a term (``_catalog``), with their tags."""

from __future__ import annotations

import httpx

from unionfs.image.registry.client import RegistryClient, RegistryError, repository_scope

PAGE = 100
MAX_PAGES = 1000


def _next_link(response: httpx.Response) -> str | None:
    link = response.headers.get("Link")
    if not link:
        return None
    for part in link.split(","):
        url, _, rel = part.partition(";")
        if 'rel="next"' in rel.replace(" ", "") or "rel=next" in rel.replace(" ", ""):
            return url.strip().strip("<>")
    return None


async def _paged(client: RegistryClient, path: str, key: str, scope: str) -> list[str]:
    items: list[str] = []
    url: str | None = f"{path}?n={PAGE}"
    for _ in range(MAX_PAGES):
        if url is None:
            break
        async with client.request("GET", url, scope=scope) as response:
            await response.aread()
            try:
                page = response.json().get(key) or []
            except (ValueError, AttributeError):
                raise RegistryError(f"{client.domain}: {path} answered something other than "
                                    "JSON") from None
            items += [i for i in page if isinstance(i, str)]
            url = _next_link(response)
    return items


async def catalog(client: RegistryClient) -> list[str]:
    try:
        return await _paged(client, "/v2/_catalog", "repositories", "registry:catalog:*")
    except RegistryError as e:
        if client.domain == "docker.io" or "not found" in str(e) or "denied" in str(e) \
                or "unauthorized" in str(e):
            raise RegistryError(f"{client.domain} does not offer a repository catalog "
                                f"(_catalog) to this client: {e}") from None
        raise


async def tags(client: RegistryClient, repository: str) -> list[str]:
    return await _paged(client, f"/v2/{repository}/tags/list", "tags",
                        repository_scope(repository, "pull"))


async def search(client: RegistryClient, term: str, limit: int) -> list[tuple[str, list[str]]]:
    names = [n for n in await catalog(client) if term.lower() in n.lower()]
    found = []
    for name in sorted(names)[:limit]:
        try:
            found.append((name, sorted(await tags(client, name))))
        except RegistryError:
            found.append((name, []))
    return found
