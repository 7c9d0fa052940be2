"""An OCI distribution client over httpx (async, running under trio; HTTP/2 where offered).

It authenticates as the registry asks (anonymous, HTTP basic, or the bearer-token flow with a
token cached per scope for its lifetime), retries 429 and 5xx answers and broken connections
with bounded backoff, follows redirects without sending credentials to another host, and turns
every failure into one ``RegistryError`` line that names the registry.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from unionfs.image import mediatypes as mt
from unionfs.image.errors import ImageError
from unionfs.image.registry.config import (
    Credentials,
    RegistrySettings,
    endpoint_host,
    find_credentials,
)

MANIFEST_ACCEPT = ", ".join([mt.OCI_INDEX, mt.DOCKER_LIST, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST])
RETRIES = 4
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
USER_AGENT = "pyunion/0.1"


class RegistryError(ImageError):
    pass


class Unauthorized(RegistryError):
    pass


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class Challenge:
    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenge(header: str) -> Challenge | None:
    """``Bearer realm="...",service="...",scope="..."`` (RFC 6750) or ``Basic realm=...``."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return Challenge(scheme.lower(), params)


def _error_text(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors]
        if parts:
            return "; ".join(parts)
    except Exception:
        pass
    return response.reason_phrase or f"HTTP {response.status_code}"


class RegistryClient:
    """One registry (``host[:port]``), with its scheme, credentials and tokens."""

    def __init__(self, domain: str, *, insecure: bool = False,
                 credentials: Credentials | None = None,
                 settings: RegistrySettings | None = None) -> None:
        self.domain = domain
        self.host = endpoint_host(domain)
        self.settings = settings or RegistrySettings.load()
        self.insecure = insecure or self.settings.is_insecure(domain)
        self.credentials = credentials if credentials is not None else find_credentials(domain)
        self._scheme: str | None = None
        self._tokens: dict[str, _Token] = {}
        self._basic = False
        self._http = httpx.AsyncClient(http2=True, timeout=TIMEOUT, follow_redirects=False,
                                       headers={"User-Agent": USER_AGENT},
                                       verify=True)
        self.bytes_received = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ transport

    async def base_url(self) -> str:
        if self._scheme is None:
            self._scheme = await self._probe_scheme()
        return f"{self._scheme}://{self.host}"

    async def _probe_scheme(self) -> str:
        try:
            await self._http.get(f"https://{self.host}/v2/")
            return "https"
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            if not self.insecure:
                raise RegistryError(self._connect_message(e, "https")) from None
        except httpx.HTTPError as e:
            if not self.insecure:
                raise RegistryError(f"{self.domain}: {e}") from None
        try:
            await self._http.get(f"http://{self.host}/v2/")
        except httpx.HTTPError as e:
            raise RegistryError(self._connect_message(e, "http")) from None
        return "http"

    def _connect_message(self, e: Exception, scheme: str) -> str:
        text = str(e)
        if "CERTIFICATE" in text.upper() or "SSL" in text.upper():
            return (f"TLS error talking to {self.domain}: {text} (if it serves plain HTTP, "
                    "name it insecure: --insecure)")
        return f"cannot connect to {self.domain} over {scheme}: {text or type(e).__name__}"

    def _auth_header(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token and token.expires > time.time():
            return {"Authorization": f"Bearer {token.value}"}
        if self._basic and self.credentials:
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    async def _authenticate(self, response: httpx.Response, scope: str,
                            sent: dict[str, str]) -> None:
        """Gets what the registry's challenge asks for; ``sent`` are the headers the refused
        request carried (a refusal of Basic credentials is final, of none is not)."""
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            raise Unauthorized(f"{self.domain}: authentication required, and the registry "
                               "names no way to authenticate")
        if challenge.scheme == "basic":
            if not self.credentials:
                raise Unauthorized(f"{self.domain}: authentication required (pyunion login "
                                   f"{self.domain})")
            if sent.get("Authorization", "").startswith("Basic "):
                raise Unauthorized(f"{self.domain}: the credentials were refused (wrong "
                                   "username or password)")
            self._basic = True
            return
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise Unauthorized(f"{self.domain}: unsupported authentication {challenge.scheme}")
        await self._fetch_token(challenge, scope)

    async def _fetch_token(self, challenge: Challenge, scope: str) -> None:
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        wanted = scope or challenge.params.get("scope", "")
        params += [("scope", one) for one in wanted.split()]  # several scopes: several params
        auth = (self.credentials.username, self.credentials.password) if self.credentials \
            else None
        try:
            answer = await self._http.get(challenge.params["realm"], params=params, auth=auth,
                                          follow_redirects=True)
        except httpx.HTTPError as e:
            raise RegistryError(f"{self.domain}: cannot reach its token server: {e}") from None
        if answer.status_code in (401, 403):
            raise Unauthorized(f"{self.domain}: the token server refused the credentials"
                               if self.credentials else
                               f"{self.domain}: the token server refused anonymous access "
                               f"(pyunion login {self.domain})")
        if answer.status_code != 200:
            raise RegistryError(f"{self.domain}: token server answered {answer.status_code}")
        try:
            body = answer.json()
            value = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            value, lifetime = None, 60.0
        if not value:
            raise RegistryError(f"{self.domain}: the token server's answer has no token")
        self._tokens[scope] = _Token(value, time.time() + max(lifetime - 10, 5))

    @asynccontextmanager
    async def request(self, method: str, path: str, *, scope: str = "",
                      headers: dict[str, str] | None = None, content: Any = None,
                      params: dict[str, str] | None = None,
                      ok: tuple[int, ...] = (200,)) -> AsyncIterator[httpx.Response]:
        """A streamed response whose status is in ``ok``; authenticates and retries."""
        url = path if path.startswith("http") else await self.base_url() + path
        delay = 0.5
        authenticated = False
        for attempt in range(RETRIES + 1):
            all_headers = {**(headers or {}), **self._auth_header(scope)}
            try:
                response = await self._send(method, url, all_headers, content, params)
            except (httpx.TransportError, httpx.TimeoutException) as e:
                if attempt == RETRIES or content is not None and not isinstance(content,
                                                                                  bytes):
                    raise RegistryError(f"{self.domain}: {method} {path}: "
                                        f"{e or type(e).__name__}") from None
                await trio.sleep(delay)
                delay *= 2
                continue
            try:
                if response.status_code == 401 and not authenticated:
                    await response.aread()
                    await self._authenticate(response, scope, all_headers)
                    authenticated = True
                    continue
                if response.status_code in (429, 502, 503, 504) and attempt < RETRIES:
                    wait = _retry_after(response, delay)
                    await trio.sleep(wait)
                    delay *= 2
                    continue
                if response.status_code not in ok:
                    await response.aread()
                    raise self._status_error(method, path, response)
                yield response
                return
            finally:
                await response.aclose()
        raise RegistryError(f"{self.domain}: {method} {path}: gave up after {RETRIES} retries")

    async def _send(self, method: str, url: str, headers: dict[str, str], content: Any,
                    params: dict[str, str] | None) -> httpx.Response:
        """Sends, following redirects by hand so credentials never go to another host."""
        for _ in range(10):
            request = self._http.build_request(method, url, headers=headers, content=content,
                                               params=params)
            response = await self._http.send(request, stream=True)
            if response.status_code not in (301, 302, 303, 307, 308) or method not in (
                    "GET", "HEAD"):
                return response
            location = response.headers.get("Location", "")
            await response.aclose()
            target = httpx.URL(url).join(location)
            if target.host != httpx.URL(url).host or target.port != httpx.URL(url).port:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url, params = str(target), None
        raise RegistryError(f"{self.domain}: too many redirects")

    def _status_error(self, method: str, path: str, response: httpx.Response) -> RegistryError:
        code = response.status_code
        detail = _error_text(response)
        if code == 401:
            return Unauthorized(f"{self.domain}: unauthorized: {detail} (wrong or missing "
                                f"credentials: pyunion login {self.domain})")
        if code == 403:
            return Unauthorized(f"{self.domain}: access denied: {detail}")
        if code == 404:
            return RegistryError(f"{self.domain}: not found: {detail} ({method} {path})")
        if code == 429:
            return RegistryError(f"{self.domain}: too many requests: {detail}")
        return RegistryError(f"{self.domain}: {method} {path}: HTTP {code}: {detail}")

    async def ping(self, scope: str = "") -> None:
        """``GET /v2/``: checks reachability and (with credentials) that they are accepted."""
        async with self.request("GET", "/v2/", scope=scope):
            pass


def _retry_after(response: httpx.Response, default: float) -> float:
    value = response.headers.get("Retry-After")
    if value and value.isdigit():
        return min(float(value), 10.0)
    return default


def repository_scope(path: str, actions: str = "pull") -> str:
    return f"repository:{path}:{actions}"
