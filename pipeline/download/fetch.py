"""The HTTP client of `pipeline download`: asyncio + aiohttp, polite to the sites it reads.

Why asyncio and aiohttp: fetching images is waiting, not computing. One event loop keeps
hundreds of requests in flight from one process with keep-alive connection pools, where threads
pay a stack and a GIL hand-over per request and processes would each need their own pools (and
would split the per-host limit between them). Measured in benchmarks/bench_download.py.

What a site owner sees:
- at most `per_host` requests in flight to one host (scheme, name, port) and `concurrency` in
  all, held by this one Fetcher, so the limits hold however the rows are chunked (on Ray, each
  download worker's Fetcher holds its share of them: pipeline.download.engines); connections
  are kept alive and reused;
- a User-Agent naming the tool and its version;
- 429 and 5xx answers, resets and bodies cut short are retried `retries` times, after an
  exponential backoff with jitter, or after the server's own `Retry-After` when it gives one;
- redirects are followed hop by hop (each hop takes its host's slot), a URL visited twice is a
  `redirect_loop`;
- `X-Robots-Tag: noai` / `noimageai` is respected (the body is not read) unless
  `ignore_opt_out`;
- bodies are streamed and never read past `max_bytes` (decompressed size, so a gzip bomb costs
  `max_bytes` too).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata

import aiohttp
from yarl import URL

from pipeline.statuses import (
    BAD_URL,
    CONNECTION_ERROR,
    HTTP_ERROR,
    OPTED_OUT,
    REDIRECT_LOOP,
    TIMEOUT,
    TOO_LARGE,
    RecordError,
)

REDIRECTS = (301, 302, 303, 307, 308)
OPT_OUT_TOKENS = ("noai", "noimageai")
MAX_RETRY_AFTER = 120.0  # seconds; a server asking for longer gets its answer recorded instead
REASON_LIMIT = 200  # characters of an error's text kept in a manifest reason


def user_agent() -> str:
    """`dcgan-pipeline/<version> (pipeline download)`: who is asking, for the site's logs."""
    try:
        version = metadata.version("dcgan-pipeline")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"dcgan-pipeline/{version} (pipeline download; aiohttp/{aiohttp.__version__})"


@dataclass(frozen=True)
class FetchSettings:
    """Everything the client's behaviour depends on (recorded in the summary)."""

    concurrency: int = 64
    per_host: int = 16
    retries: int = 3
    retry_wait: float = 1.0  # first backoff, doubled on each retry, with +-50% jitter
    connect_timeout: float = 10.0
    read_timeout: float = 20.0  # the longest silence while reading
    total_timeout: float = 60.0  # one request, headers and body
    max_bytes: int = 32 * 2**20
    max_redirects: int = 10
    ignore_opt_out: bool = False


class FetchError(RecordError):
    """A URL that gave no image: its status, reason and what is known (HTTP code, final URL,
    attempts) for the manifest."""

    def __init__(self, status: str, reason: str, **info: object):
        super().__init__(status, reason)
        self.info = info


class RetryableError(Exception):
    """An answer worth asking again for (429, 5xx, a reset): `final` is the row's status if
    the retries run out, `wait` the server's Retry-After in seconds, if it gave one."""

    def __init__(self, final: FetchError, wait: float | None = None):
        super().__init__(final.reason)
        self.final = final
        self.wait = wait


@dataclass
class Fetched:
    """A successful answer: the body and where it came from."""

    final_url: str
    http_status: int
    served_type: str
    body: bytes
    redirects: int = 0
    attempts: int = 1
    opt_out: str = ""  # the X-Robots-Tag opt-out that was ignored, if any


@dataclass
class _Answer:
    status: int
    served_type: str = ""
    location: str | None = None
    body: bytes = b""
    opt_out: str = ""


@dataclass
class HostSlots:
    """At most `limit` holders per host at once; a host's semaphore exists only while it is in
    use, so a list of a million domains does not keep a million semaphores."""

    limit: int
    _slots: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    _users: Counter = field(default_factory=Counter)

    @asynccontextmanager
    async def hold(self, host: str) -> AsyncIterator[None]:
        slot = self._slots.setdefault(host, asyncio.Semaphore(self.limit))
        self._users[host] += 1
        try:
            async with slot:
                yield
        finally:
            self._users[host] -= 1
            if not self._users[host]:
                del self._users[host], self._slots[host]


def check_url(url: str) -> URL:
    """The parsed URL, or FetchError(bad_url): not http(s), no host, unparsable."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as err:  # yarl's refusal of an unparsable URL
        raise FetchError(BAD_URL, f"unparsable URL ({err})") from None
    if parsed.scheme not in ("http", "https"):
        raise FetchError(BAD_URL, f"not an http(s) URL (scheme {parsed.scheme or 'missing'!r})")
    if not parsed.host:
        raise FetchError(BAD_URL, "no host in the URL")
    return parsed


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    date = email.utils.parsedate_to_datetime(value) if "," in value else None
    return max(0.0, date.timestamp() - time.time()) if date is not None else None


def opt_out_token(values: list[str]) -> str:
    """The first `noai`/`noimageai` directive in X-Robots-Tag header values ('' if none). A
    value may name a user agent first (`otherbot: noai`), which img2dataset also reads as
    applying to everyone."""
    for value in values:
        for part in value.lower().replace(":", ",").split(","):
            if part.strip() in OPT_OUT_TOKENS:
                return part.strip()
    return ""


class Fetcher:
    """One aiohttp session with the limits of `settings`; use it in `async with`."""

    def __init__(self, settings: FetchSettings):
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._hosts = HostSlots(settings.per_host)
        self._all = asyncio.Semaphore(settings.concurrency)
        self._jitter = random.Random()

    async def __aenter__(self) -> Fetcher:
        s = self.settings
        connector = aiohttp.TCPConnector(limit=s.concurrency, limit_per_host=s.per_host,
                                         ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=s.total_timeout, sock_connect=s.connect_timeout,
                                        sock_read=s.read_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": user_agent(), "Accept": "image/*,*/*;q=0.5"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str) -> Fetched:
        """The image bytes at `url` after redirects and retries, or FetchError."""
        current = check_url(url)
        visited = {str(current)}
        attempts = 0
        while True:
            answer, tries = await self._with_retries(current)
            attempts += tries
            if answer.status not in REDIRECTS:
                return Fetched(str(current), answer.status, answer.served_type, answer.body,
                               redirects=len(visited) - 1, attempts=attempts,
                               opt_out=answer.opt_out)
            current = self._next_hop(current, answer, visited)

    def _next_hop(self, current: URL, answer: _Answer, visited: set[str]) -> URL:
        if not answer.location:
            raise FetchError(HTTP_ERROR, f"HTTP {answer.status} redirect without a Location",
                             http_status=answer.status, final_url=str(current))
        target = check_url(str(current.join(URL(answer.location))))
        if str(target) in visited:
            raise FetchError(REDIRECT_LOOP, f"redirected back to {target} after "
                             f"{len(visited)} requests", final_url=str(current))
        if len(visited) > self.settings.max_redirects:
            raise FetchError(REDIRECT_LOOP, f"more than {self.settings.max_redirects} redirects",
                             final_url=str(current))
        visited.add(str(target))
        return target

    async def _with_retries(self, url: URL) -> tuple[_Answer, int]:
        """One hop, asked again after a retryable failure; (answer, requests made)."""
        for attempt in range(self.settings.retries + 1):
            try:
                async with self._hosts.hold(f"{url.scheme}://{url.host}:{url.port}"), self._all:
                    return await self._request(url), attempt + 1
            except RetryableError as err:
                if attempt == self.settings.retries:
                    err.final.info["attempts"] = attempt + 1
                    raise err.final from None
                if err.wait is not None and err.wait > MAX_RETRY_AFTER:
                    err.final.reason += f", asked to retry after {err.wait:.0f} s"
                    raise err.final from None
                await asyncio.sleep(err.wait if err.wait is not None else self._backoff(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int) -> float:
        return self.settings.retry_wait * 2**attempt * self._jitter.uniform(0.5, 1.5)

    async def _request(self, url: URL) -> _Answer:
        """One request: the answer, FetchError (final) or RetryableError."""
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                return await self._answer(url, response)
        except (FetchError, RetryableError):
            raise
        except TimeoutError:
            s = self.settings
            raise FetchError(TIMEOUT, f"no answer within the limits (connect {s.connect_timeout} "
                             f"s, read {s.read_timeout} s, total {s.total_timeout} s)",
                             final_url=str(url)) from None
        except aiohttp.ClientConnectorError as err:  # refused, unresolved: the host is not there
            raise FetchError(CONNECTION_ERROR, f"cannot connect: {err.os_error}",
                             final_url=str(url)) from None
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientPayloadError) as err:  # reset or cut short: worth another try
            raise RetryableError(FetchError(CONNECTION_ERROR, _first_line(err),
                                            final_url=str(url))) from None
        except aiohttp.InvalidURL as err:
            raise FetchError(BAD_URL, f"invalid URL {err}", final_url=str(url)) from None
        except aiohttp.ClientError as err:  # a malformed answer
            raise FetchError(CONNECTION_ERROR, f"bad answer: {_first_line(err)}",
                             final_url=str(url)) from None

    async def _answer(self, url: URL, response: aiohttp.ClientResponse) -> _Answer:
        status = response.status
        if status in REDIRECTS:
            return _Answer(status, location=response.headers.get("Location"))
        if status == 429 or status >= 500:
            raise RetryableError(
                FetchError(HTTP_ERROR, f"HTTP {status} {response.reason or ''}".strip(),
                           http_status=status, final_url=str(url)),
                retry_after(response.headers.get("Retry-After")))
        if not 200 <= status < 300:
            raise FetchError(HTTP_ERROR, f"HTTP {status} {response.reason or ''}".strip(),
                             http_status=status, final_url=str(url))
        opt_out = opt_out_token(response.headers.getall("X-Robots-Tag", []))
        if opt_out and not self.settings.ignore_opt_out:
            raise FetchError(OPTED_OUT, f"X-Robots-Tag: {opt_out}", http_status=status,
                             final_url=str(url))
        body = await self._read_capped(url, response)
        return _Answer(status, response.headers.get("Content-Type", ""), body=body,
                       opt_out=opt_out)

    async def _read_capped(self, url: URL, response: aiohttp.ClientResponse) -> bytes:
        """The (decompressed) body, never more than max_bytes of it read."""
        limit = self.settings.max_bytes
        declared = response.content_length
        too_large = FetchError(TOO_LARGE, f"body over --max-bytes {limit} (stopped reading)",
                               http_status=response.status, final_url=str(url))
        if declared is not None and declared > limit and "Content-Encoding" not in \
                response.headers:
            response.close()
            raise too_large
        parts, size = [], 0
        async for part in response.content.iter_any():
            size += len(part)
            if size > limit:
                response.close()  # drop the connection: the rest is never read
                raise too_large
            parts.append(part)
        return b"".join(parts)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:REASON_LIMIT]
