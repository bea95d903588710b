"""Deterministic, realistic Segment messages for tests, benchmarks and `sample_data/`.

Real exports are messy in ways that matter to a replay tool: several id and time shapes (one
per Segment library), anonymous-only and numeric users, deep and odd `properties`, and repeated
`messageId`s. This module produces all of that from a seed, lazily (a million messages stream
in constant memory), so tests and benchmarks never depend on private data.

    python -m segbill.testing.corpus 1000000 /tmp/events.jsonl --seed 1 [--gzip]
"""

from __future__ import annotations

import argparse
import gzip as gzip_module
import hashlib
import json
import math
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any, BinaryIO

import orjson

__all__ = [
    "DEFAULT_EVENTS",
    "DEFAULT_SOURCE_ID",
    "DEFAULT_START",
    "dumps_line",
    "messages",
    "write_jsonl",
    "write_s3_layout",
]

DEFAULT_EVENTS: tuple[str, ...] = ("API Call", "Order Completed", "Storage Used", "Seat Added", "Page Viewed")
DEFAULT_START = "2024-01-05T00:00:00Z"
DEFAULT_SOURCE_ID = "qR7mXk2PzL9vTn4Wb8sHcE"
DEFAULT_COMPRESSLEVEL = 6  # gzip's default 9 costs 2-3x the time for ~3% less output

_US = 1_000_000
_DAY_US = 86_400 * _US
_DAY_MS = 86_400_000
_EPOCH_DATE = date(1970, 1, 1)
_OPEN_DAYS = 8  # S3 layout: at most this many day files open at once
_WRITE_CHUNK = 2048  # lines joined per write() call


# --- times --------------------------------------------------------------------------------------

_MINUTE_US = 60 * _US
_minute_cache: dict[int, str] = {}  # minute since the epoch -> "2024-01-05T10:04:"
_SECONDS = [f"{second:02d}" for second in range(60)]
_MILLIS = [f"{second:02d}.{milli:03d}" for second in range(60) for milli in range(1000)]  # "SS.mmm"


def _minute_prefix(minute: int) -> str:
    if len(_minute_cache) > 200_000:
        _minute_cache.clear()
    day, rest = divmod(minute, 1440)
    hours, minutes = divmod(rest, 60)
    prefix = _minute_cache[minute] = f"{(_EPOCH_DATE + timedelta(days=day)).isoformat()}T{hours:02d}:{minutes:02d}:"
    return prefix


def _iso(us: int, digits: int, zone: str, offset_minutes: int = 0) -> str:
    """Microseconds since the epoch -> ISO 8601 with `digits` (0, 3 or 6) fraction digits.

    Fractions are truncated, never rounded, so every form of one instant reads back as the same
    millisecond (`us // 1000`), the way segbill's parser truncates. The date and hour:minute
    part is cached: this runs four times per message.
    """
    minute, rem = divmod(us + offset_minutes * _MINUTE_US, _MINUTE_US)
    prefix = _minute_cache.get(minute) or _minute_prefix(minute)
    if digits == 3:
        return prefix + _MILLIS[rem // 1000] + zone
    if digits == 6:
        seconds, frac = divmod(rem, _US)
        return f"{prefix}{_SECONDS[seconds]}.{frac:06d}{zone}"
    return prefix + _SECONDS[rem // _US] + zone


def _zone(offset_minutes: int) -> str:
    """Minutes east of UTC -> "+01:00"; UTC is "Z", as Go writes it."""
    if offset_minutes == 0:
        return "Z"
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def _to_us(value: datetime | str) -> int:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


# --- libraries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Library:
    """A Segment library: its `context.library`, where it runs, and how it writes ids and times."""

    name: str
    version: str
    platform: str  # "web", "server" or "mobile"
    time_style: str  # "js" (…123Z), "python" (…123456+00:00), "go" (…123456+01:00)
    id_style: str  # "ajs", "ajs-next-md5", "ajs-next", "uuid", "UUID", "node-next"


_WEB_LIBRARIES = (
    _Library("analytics.js", "4.1.0", "web", "js", "ajs"),
    _Library("analytics.js", "next-1.35.0", "web", "js", "ajs-next-md5"),
    _Library("analytics.js", "next-1.70.0", "web", "js", "ajs-next"),
)
_SERVER_LIBRARIES = (
    _Library("analytics-python", "2.3.3", "server", "python", "uuid"),
    _Library("analytics-go", "3.3.0", "server", "go", "uuid"),
    _Library("@segment/analytics-node", "2.1.2", "server", "js", "node-next"),
)
_MOBILE_LIBRARIES = (
    _Library("analytics-ios", "4.1.8", "mobile", "js", "UUID"),
    _Library("analytics-android", "4.11.3", "mobile", "js", "uuid"),
)
_CHANNEL = {"web": "client", "server": "server", "mobile": "mobile"}
_GO_OFFSETS = (60, 60, 60, 0, -300, 330, 120)  # minutes east of UTC where Go servers run
_GO_ZONES = {offset: _zone(offset) for offset in _GO_OFFSETS}

# --- vocabularies -------------------------------------------------------------------------------

_FIRST_NAMES = (
    "Amélie",
    "Björn",
    "Chloé",
    "Dmitri",
    "Eun-ji",
    "Fatima",
    "Gianluca",
    "Hiroshi",
    "Inès",
    "José",
    "Kwame",
    "Łukasz",
    "Marta",
    "Nguyễn",
    "Olusegun",
    "Priya",
    "Renée",
    "Søren",
    "Zoë",
    "陈",
)
_LAST_NAMES = (
    "Müller",
    "O'Brien",
    "García",
    "Nakamura",
    "Kowalski",
    "Dubois",
    "Ivanova",
    "Smith",
    "Andersson",
    "Đặng",
    "Nøkleby",
    "Schäfer",
    "van der Berg",
    "Ng",
    "Dupont-Lefèvre",
    "李",
)
_COMPANIES = (
    "Acme Corp",
    "Globex GmbH",
    "Initech",
    "Umbrella SAS",
    "Hooli",
    "Stark Industries",
    "Wayne & Co",
    "Société Générale de Test",
    "株式会社テスト",
    "Zürcher Daten AG",
    "Nordlys AS",
    "Piedpiper",
)
_INDUSTRIES = ("SaaS", "Fintech", "Retail", "Healthcare", "Logistics", "Media", "Education")
_PLANS = ("free", "starter", "pro", "business", "enterprise")
_ROLES = ("admin", "member", "viewer", "billing", "owner")
_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/images/generations",
    "/v1/audio/transcriptions",
    "/v2/search",
    "/v1/moderations",
)
_MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-70b", "mistral-large", "text-embedding-3-small")
_REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-northeast-1")
_CURRENCIES = ("EUR", "USD", "GBP", "JPY", "CHF")
_PRODUCTS = (
    ("sku-espresso-250", "Café Espresso 250 g", "Coffee", 8.9),
    ("sku-matcha", "Thé vert Matcha 抹茶 40 g", "Tea", 14.5),
    ("sku-mug-blue", "Mug « Bleu de Sèvres »", "Accessories", 12.0),
    ("sku-grinder", "Hand grinder Ø 48 mm", "Equipment", 79.99),
    ("sku-gift-card", "Gift card 🎁", "Gifts", 25.0),
    ("sku-filter-100", "Paper filters ×100", "Accessories", 3.49),
    ("sku-kettle", "Gooseneck kettle 0,9 L", "Equipment", 49.0),
)
_PAGES = (
    ("/", "Home — Acme"),
    ("/pricing", "Pricing | Acme"),
    ("/docs/getting-started", "Getting started · Docs"),
    ("/dashboard", "Dashboard"),
    ("/settings/billing", "Billing settings"),
    ("/blog/über-uns", "Über uns"),
    ("/checkout", "Checkout"),
    ("/search", "Search results"),
)
_SCREENS = ("Home", "Dashboard", "Settings", "Checkout", "Product Detail", "Onboarding Step 2")
_REFERRERS = (
    "",
    "",
    "https://www.google.com/",
    "https://news.ycombinator.com/",
    "https://t.co/abc123",
    "https://www.bing.com/search?q=acme+pricing",
)
_USER_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36",
)
_LOCALES = (
    ("en-US", "America/New_York"),
    ("de-DE", "Europe/Berlin"),
    ("fr-FR", "Europe/Paris"),
    ("ja-JP", "Asia/Tokyo"),
    ("pt-BR", "America/Sao_Paulo"),
    ("en-GB", "Europe/London"),
)
_DEVICES = (
    ("Apple", "iPhone15,2", "ios", "iOS", "17.2.1"),
    ("Apple", "iPad13,4", "ios", "iOS", "16.7"),
    ("samsung", "SM-S911B", "android", "Android", "14"),
    ("Google", "Pixel 8", "android", "Android", "14"),
)
_TAGS = ("prod", "staging", "batch", "interactive", "eu", "us", "beta", "priority")
# Pieces of long strings: accents, CJK, RTL scripts, emoji (astral), combining marks, quotes, escapes.
_TEXT_PIECES = (
    "Überweisung für Kundin Ärzte-Zentrum, ",
    "naïve café crème brûlée — ",
    "日本語の説明文です。",
    "中文字符测试，",
    "Ελληνικά κείμενα ",
    "עברית מימין לשמאל ",
    "النص العربي ",
    "emoji 🚀✨👩‍💻🇪🇺 ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 ",
    "combining e\u0301 and n\u0303 ",
    "quotes \"double\" and 'single' ",
    "back\\slash and tab\t",
    "Ωmega ≥ 42 ± 0.5 ",
    "Кириллица и ещё ",
)


@dataclass(slots=True)
class _Customer:
    """A billed account: its user id (string or, for a few, a number), group and devices."""

    user_id: str | int
    group_id: str
    plan: str
    email: str
    name: str
    company: str
    server: _Library
    devices: tuple[str, ...]  # anonymousIds
    locale: tuple[str, str]
    ip: str


class _Generator:
    """The state behind `messages()`: one seeded Random, the clock, customers, a duplicate pool."""

    def __init__(
        self,
        *,
        seed: int,
        track_ratio: float,
        customers: int,
        events: Sequence[str],
        duplicate_ratio: float,
        start: datetime | str,
        days: float,
        n: int,
        browser: bool = False,
    ) -> None:
        if not events:
            raise ValueError("events must name at least one track event")
        if not 0.0 <= track_ratio <= 1.0 or not 0.0 <= duplicate_ratio < 1.0:
            raise ValueError("track_ratio must be in [0, 1] and duplicate_ratio in [0, 1)")
        self.browser = browser
        self.rng = Random(seed)
        self.random = self.rng.random
        self.bits = self.rng.getrandbits
        self.track_ratio = track_ratio
        self.duplicate_ratio = duplicate_ratio
        self.events = tuple(events)
        self.now = _to_us(start)
        self.mean_gap = max(days, 0.0) * _DAY_US / max(n, 1)
        self.customers = [self._customer(i) for i in range(max(customers, 1))]
        # A few customers produce most of the traffic, as in any real account base.
        weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(self.customers))]
        total = sum(weights)
        running = 0.0
        self.cumulative: list[float] = []
        for weight in weights:
            running += weight / total
            self.cumulative.append(running)
        self.long_texts = [self._long_text() for _ in range(12)]
        # Recent messages as JSON (a snapshot: callers may change what they were given).
        self.pool: deque[tuple[bytes, _Library, int]] = deque(maxlen=512)
        self.last_library = _SERVER_LIBRARIES[0]
        self.last_time = self.now  # the instant `timestamp` names, in microseconds
        self.go_offset = 0

    # helpers -----------------------------------------------------------------------------------

    def pick(self, options: Sequence[Any]) -> Any:
        return options[int(self.random() * len(options))]

    def hex(self, chars: int) -> str:
        return f"{self.bits(chars * 4):0{chars}x}"

    def uuid4(self) -> str:
        value = (self.bits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)) | (0x4000 << 64) | (0x8000 << 48)
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def ip(self) -> str:
        if self.random() < 0.1:
            return f"2001:db8:{self.bits(16):x}:{self.bits(16):x}::{self.bits(16):x}"
        return f"{self.pick((81, 92, 185, 34, 52, 203))}.{self.bits(8)}.{self.bits(8)}.{1 + self.bits(7)}"

    def _long_text(self) -> str:
        parts: list[str] = []
        target = 200 + int(self.random() * 1800)
        while sum(map(len, parts)) < target:
            parts.append(self.pick(_TEXT_PIECES))
        return "".join(parts)

    def _customer(self, index: int) -> _Customer:
        first, last = self.pick(_FIRST_NAMES), self.pick(_LAST_NAMES)
        user_id: str | int
        if index % 16 == 7:
            user_id = 100_000 + index * 37  # a numeric id from some SQL table
        elif index % 3 == 0:
            user_id = self.uuid4()
        else:
            user_id = f"usr_{self.hex(12)}"
        devices = tuple(self.uuid4() for _ in range(1 + int(self.random() * 3)))
        return _Customer(
            user_id=user_id,
            group_id=f"acct_{index:04d}",
            plan=self.pick(_PLANS),
            email=f"{first.lower()}.{index}@example.com",
            name=f"{first} {last}",
            company=self.pick(_COMPANIES),
            server=self.pick(_SERVER_LIBRARIES),
            devices=devices,
            locale=self.pick(_LOCALES),
            ip=self.ip(),
        )

    def customer(self) -> _Customer:
        x = self.random()
        cumulative = self.cumulative
        lo, hi = 0, len(cumulative) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if cumulative[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return self.customers[lo]

    def message_id(self, library: _Library, now_us: int) -> str:
        style = library.id_style
        if style == "ajs":
            return f"ajs-{self.hex(32)}"
        if style == "ajs-next-md5":
            return f"ajs-next-{self.hex(32)}"
        if style == "ajs-next":
            return f"ajs-next-{now_us // 1000}-{self.uuid4()}"
        if style == "node-next":
            return f"node-next-{now_us // 1000}-{self.uuid4()}"
        if style == "UUID":
            return self.uuid4().upper()
        return self.uuid4()

    def library_time(self, library: _Library, us: int, whole: bool) -> str:
        """A time as the library that sent the message writes it."""
        style = library.time_style
        if style == "python":
            return _iso(us, 0 if whole else 6, "+00:00")
        if style == "go":  # Go writes its local zone
            return _iso(us, 0 if whole else 6, _GO_ZONES[self.go_offset], self.go_offset)
        return _iso(us, 0 if whole else 3, "Z")

    # messages ----------------------------------------------------------------------------------

    def next(self) -> dict[str, Any]:
        if self.pool and self.random() < self.duplicate_ratio:
            return self.duplicate()
        message = self.fresh()
        if self.duplicate_ratio:
            self.pool.append((orjson.dumps(message), self.last_library, self.last_time))
        return message

    def advance(self) -> int:
        # Exponential gaps: bursts and lulls, and the requested span on average.
        self.now += int(-math.log(1.0 - self.random()) * self.mean_gap)
        return self.now

    def fresh(self) -> dict[str, Any]:
        event_us = self.advance()
        customer = self.customer()
        x = self.random()
        if x < self.track_ratio:
            kind = "track"
        else:
            y = (x - self.track_ratio) / max(1.0 - self.track_ratio, 1e-9)
            kind = "identify" if y < 0.35 else "page" if y < 0.65 else "screen" if y < 0.8 else "group" if y < 0.95 else "alias"
        if self.browser:
            kind = "page" if kind == "screen" else kind  # a browser has pages, not screens
            library = self.pick(_WEB_LIBRARIES)
        elif kind == "page" or kind == "alias":
            library = self.pick(_WEB_LIBRARIES)
        elif kind == "screen":
            library = self.pick(_MOBILE_LIBRARIES)
        else:
            z = self.random()
            library = customer.server if z < 0.55 else self.pick(_WEB_LIBRARIES) if z < 0.9 else self.pick(_MOBILE_LIBRARIES)
        self.last_library = library
        self.go_offset = self.pick(_GO_OFFSETS)
        message: dict[str, Any] = {}
        device = self.pick(customer.devices)
        anonymous_only = kind in ("track", "page", "screen") and self.random() < 0.08
        if library.platform == "web":
            message["anonymousId"] = device
        elif library.platform == "mobile":
            message["anonymousId"] = device.upper() if library.id_style == "UUID" else device
        elif anonymous_only or self.random() < 0.1:
            message["anonymousId"] = device
        message["channel"] = _CHANNEL[library.platform]
        message["context"] = self.context(library, customer, kind)
        if kind == "track":
            name = self.pick(self.events)
            message["event"] = name
        message["integrations"] = {}
        message["messageId"] = self.message_id(library, event_us)
        self.last_time = self.times(message, library, event_us)
        message["type"] = kind
        if anonymous_only:
            if library.platform == "web":
                message["userId"] = None  # analytics.js writes null before identify()
        else:
            message["userId"] = customer.user_id
        if kind == "track":
            message["properties"] = self.properties(name, customer)
        elif kind == "identify":
            message["traits"] = self.traits(customer, event_us)
        elif kind == "page":
            page = message["context"]["page"]
            message["name"] = page["title"]
            message["properties"] = dict(page)
        elif kind == "screen":
            message["name"] = self.pick(_SCREENS)
            message["properties"] = {"name": message["name"], "previous": self.pick(_SCREENS)}
        elif kind == "group":
            message["groupId"] = customer.group_id
            message["traits"] = {
                "name": customer.company,
                "industry": self.pick(_INDUSTRIES),
                "plan": customer.plan,
                "employees": 5 + int(self.random() * 5000),
                "address": {"city": "Zürich", "country": "CH"} if self.random() < 0.5 else None,
            }
        else:  # alias
            message["previousId"] = device
        message["version"] = 2
        return message

    def times(self, message: dict[str, Any], library: _Library, event_us: int) -> int:
        """The four times, related the way Segment relates them.

        Clients set originalTimestamp and sentAt by their own (skewed) clock; Segment sets
        receivedAt and corrects timestamp = receivedAt - (sentAt - originalTimestamp). Server
        libraries send timestamp themselves, in their own format, and it is kept as sent.
        Returns the instant `timestamp` names.
        """
        random = self.random
        network = int(20_000 + random() * 300_000)
        if library.platform == "server":
            whole = random() < 0.04  # a backfill from a database with second precision
            if whole:
                event_us -= event_us % _US
            sent_us = event_us + int(random() * 10 * _US)  # queued until the next flush
            message["originalTimestamp"] = self.library_time(library, event_us, whole)
            message["receivedAt"] = _iso(sent_us + network, 3, "Z")
            message["sentAt"] = self.library_time(library, sent_us, False)
            message["timestamp"] = self.library_time(library, event_us, whole)
            return event_us
        skew = int((random() - 0.5) * 4 * _US)
        if random() < 0.02:
            skew += int((random() - 0.5) * 6 * 3600 * _US)  # a phone with a wrong clock
        delay = int(random() * (30 if library.platform == "mobile" else 5) * _US)
        if library.platform == "mobile" and random() < 0.03:
            delay += int(random() * 900 * _US)  # flushed when the phone came back online
        message["originalTimestamp"] = _iso(event_us + skew, 3, "Z")
        message["receivedAt"] = _iso(event_us + delay + network, 3, "Z")
        message["sentAt"] = _iso(event_us + skew + delay, 3, "Z")
        message["timestamp"] = _iso(event_us + network, 3, "Z")
        return event_us + network

    def context(self, library: _Library, customer: _Customer, kind: str) -> dict[str, Any]:
        context: dict[str, Any] = {"library": {"name": library.name, "version": library.version}}
        random = self.random
        if library.platform == "web":
            path, title = self.pick(_PAGES)
            referrer = self.pick(_REFERRERS)
            search = "?utm_source=newsletter&utm_campaign=jan" if random() < 0.1 else ""
            context["ip"] = customer.ip
            context["locale"] = customer.locale[0]
            context["page"] = {
                "path": path,
                "referrer": referrer,
                "search": search,
                "title": title,
                "url": f"https://app.example.com{path}{search}",
            }
            context["timezone"] = customer.locale[1]
            context["userAgent"] = self.pick(_USER_AGENTS)
            if search:
                context["campaign"] = {"source": "newsletter", "name": "jan", "medium": "email"}
            if self.browser:
                self.browser_context(context, customer)
        elif library.platform == "mobile":
            manufacturer, model, os_key, os_name, os_version = self.pick(_DEVICES)
            context["app"] = {"name": "Acme", "version": "3.14.1", "build": "31401", "namespace": "com.example.acme"}
            context["device"] = {
                "id": self.pick(customer.devices),
                "manufacturer": manufacturer,
                "model": model,
                "type": os_key,
                "adTrackingEnabled": random() < 0.3,
            }
            context["ip"] = customer.ip
            context["locale"] = customer.locale[0]
            context["network"] = {"wifi": random() < 0.7, "cellular": random() < 0.5, "carrier": None}
            context["os"] = {"name": os_name, "version": os_version}
            context["screen"] = {"width": 390, "height": 844, "density": 3.0}
            context["timezone"] = customer.locale[1]
        elif random() < 0.5:
            context["ip"] = customer.ip
        if kind == "track" and random() < 0.7:
            context["groupId"] = customer.group_id
        return context

    def browser_context(self, context: dict[str, Any], customer: _Customer) -> None:
        """What analytics.js adds in a browser beyond the usual page and agent: a campaign with
        its click id, client hints, consent, the cached traits: 1-2 KB that segbill never reads."""
        random = self.random
        page = context["page"]
        if random() < 0.6:
            click = self.hex(40)
            search = (
                f"?utm_source=google&utm_medium=cpc&utm_campaign=brand_{self.pick(_REGIONS)}&utm_term=acme+pricing&gclid={click}"
            )
            page["search"] = search
            page["url"] = f"https://app.example.com{page['path']}{search}"
            context["campaign"] = {
                "source": "google",
                "medium": "cpc",
                "name": f"brand_{self.pick(_REGIONS)}",
                "term": "acme pricing",
                "content": self.pick(_PAGES)[1],
            }
        brand = self.pick(("Google Chrome", "Microsoft Edge", "Chromium"))
        version = f"{118 + int(random() * 4)}"
        context["userAgentData"] = {
            "brands": [
                {"brand": "Not_A Brand", "version": "8"},
                {"brand": "Chromium", "version": version},
                {"brand": brand, "version": version},
            ],
            "mobile": random() < 0.2,
            "platform": self.pick(("macOS", "Windows", "Linux", "Android")),
            "fullVersionList": [{"brand": brand, "version": f"{version}.0.{6000 + int(random() * 200)}.{int(random() * 200)}"}],
        }
        context["screen"] = {
            "width": self.pick((1440, 1920, 2560, 390)),
            "height": self.pick((900, 1080, 1440, 844)),
            "density": 2,
        }
        context["instanceId"] = self.uuid4()
        context["consent"] = {
            "categoryPreferences": {"Advertising": random() < 0.5, "Analytics": True, "Functional": True, "DataSharing": False}
        }
        context["traits"] = {
            "email": customer.email,
            "name": customer.name,
            "plan": customer.plan,
            "company": {"id": customer.group_id, "name": customer.company},
        }
        if random() < 0.3:
            context["referrer"] = {"type": "google", "id": self.hex(24)}

    def traits(self, customer: _Customer, now_us: int) -> dict[str, Any]:
        random = self.random
        return {
            "email": customer.email,
            "name": customer.name,
            "plan": customer.plan,
            "company": {"id": customer.group_id, "name": customer.company, "employee_count": 5 + int(random() * 5000)},
            "createdAt": _iso(now_us - int(random() * 400) * _DAY_US, 3, "Z"),
            "logins": int(random() * 300),
            "beta": random() < 0.2,
            "avatar": None,
            "roles": [self.pick(_ROLES)],
        }

    def properties(self, name: str, customer: _Customer) -> dict[str, Any]:
        random = self.random
        if name == "API Call":
            input_tokens = int(random() * 4000)
            output_tokens = int(random() * 1500)
            props: dict[str, Any] = {
                "tokens": input_tokens + output_tokens,
                "endpoint": self.pick(_ENDPOINTS),
                "model": self.pick(_MODELS),
                "method": "POST",
                "status": 200 if random() < 0.95 else self.pick((400, 429, 500, 503)),
                "latency_ms": round(20 + random() * 2500, 3),
                "streaming": random() < 0.4,
                "cached": None if random() < 0.5 else random() < 0.2,
                "usage": {
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "cache": {"read": int(random() * 500), "write": 0},
                },
                "tags": [self.pick(_TAGS), self.pick(_TAGS)],
                "region": self.pick(_REGIONS),
            }
        elif name == "Order Completed":
            products = []
            revenue = 0.0
            for _ in range(1 + int(random() * 4)):
                sku, title, category, price = self.pick(_PRODUCTS)
                quantity = 1 + int(random() * 3)
                revenue += price * quantity
                products.append(
                    {
                        "product_id": f"prod_{self.hex(8)}",
                        "sku": sku,
                        "name": title,
                        "category": category,
                        "price": price,
                        "quantity": quantity,
                        "variant": None,
                        "image_url": f"https://cdn.example.com/{sku}.png",
                    }
                )
            currency = self.pick(_CURRENCIES)
            tax = round(revenue * 0.2, 2)
            props = {
                "order_id": f"ord_{self.hex(10)}",
                "checkout_id": self.uuid4(),
                "revenue": round(revenue, 2),
                "total": round(revenue + tax, 2),
                "tax": tax,
                "shipping": round(random() * 10, 2),
                "discount": 0.0,
                "coupon": None if random() < 0.8 else "WINTER24",
                "currency": currency,
                "products": products,
                "shipping_address": {
                    "city": self.pick(("Zürich", "Lyon", "München", "東京", "São Paulo")),
                    "country": self.pick(("CH", "FR", "DE", "JP", "BR")),
                    "line2": None,
                },
                "is_first_order": random() < 0.3,
            }
        elif name == "Storage Used":
            props = {
                "gb": round(random() * 500, 3),
                "bucket": f"{customer.group_id}-backups",
                "region": self.pick(_REGIONS),
                "storage_class": self.pick(("standard", "infrequent", "archive")),
                "snapshot": random() < 0.1,
                "objects": int(random() * 1_000_000),
            }
        elif name == "Seat Added":
            count = 1 + int(random() * 3)
            props = {
                "seat_count": count,
                "seats": 1,
                "role": self.pick(_ROLES),
                "plan": customer.plan,
                "invited_by": customer.email,
                "seat_ids": [f"seat_{self.hex(6)}" for _ in range(count)],
                "trial": random() < 0.15,
            }
        elif name == "Page Viewed":
            path, title = self.pick(_PAGES)
            props = {
                "path": path,
                "title": title,
                "url": f"https://app.example.com{path}",
                "referrer": self.pick(_REFERRERS),
                "load_time": round(random() * 3, 3),
                "search": None,
            }
        else:
            props = {
                "value": int(random() * 100),
                "label": name.lower().replace(" ", "_"),
                "flags": [random() < 0.5, random() < 0.5],
                "meta": {"attempt": 1 + int(random() * 3)},
            }
        x = random()
        if x < 0.015:
            # A 64-bit id from another system: above 2**53, so a float (or JavaScript) would lose it.
            props["trace_id"] = 2**53 + 1 + self.bits(62)
        elif x < 0.035:
            props["note"] = self.pick(self.long_texts)
        return props

    def duplicate(self) -> dict[str, Any]:
        """An earlier message again, received again; a retry may carry a timestamp a few ms off."""
        original, library, stamp_us = self.pool[int(self.random() * len(self.pool))]
        message: dict[str, Any] = orjson.loads(original)
        now = self.advance()
        message["receivedAt"] = _iso(now + int(self.random() * 300_000), 3, "Z")
        if self.random() < 0.4:
            shift = (1 + int(self.random() * 9)) * 1000
            self.go_offset = self.pick(_GO_OFFSETS)
            if library.platform == "server":
                message["timestamp"] = self.library_time(library, stamp_us + shift, False)
            else:
                message["timestamp"] = _iso(stamp_us + shift, 3, "Z")
        return message


def messages(
    n: int,
    *,
    seed: int = 0,
    track_ratio: float = 0.8,
    customers: int = 50,
    events: Sequence[str] = DEFAULT_EVENTS,
    duplicate_ratio: float = 0.0,
    start: datetime | str = DEFAULT_START,
    days: float = 3.0,
    browser: bool = False,
) -> Iterator[dict[str, Any]]:
    """`n` Segment messages, the same ones for the same arguments, one at a time.

    With `browser`, every message comes from analytics.js in a browser, each with the 1-2 KB
    `context` a browser sends (campaign, client hints, consent, cached traits).

    About `track_ratio` of the fresh messages are track calls (named from `events`), the rest
    identify/page/screen/group/alias. Times start at `start` and advance over about `days`
    days. About `duplicate_ratio` of the `n` messages repeat an earlier `messageId` (a retry:
    later receivedAt, sometimes a timestamp a few ms off). Each yielded dict is new: callers may
    change it freely.
    """
    generator = _Generator(
        seed=seed,
        track_ratio=track_ratio,
        customers=customers,
        events=events,
        duplicate_ratio=duplicate_ratio,
        start=start,
        days=days,
        n=n,
        browser=browser,
    )
    for _ in range(n):
        yield generator.next()


# --- writing ------------------------------------------------------------------------------------


def dumps_line(message: Any) -> bytes:
    """One NDJSON line. orjson, or the standard library for integers beyond 64 bits."""
    try:
        return orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _open_gzip(path: Path, compresslevel: int) -> tuple[gzip_module.GzipFile, BinaryIO]:
    """A gzip writer whose bytes depend on the content only: mtime 0 and no file name inside."""
    raw = open(path, "wb")  # noqa: SIM115 -- returned for the caller to close
    return gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel), raw


def _write_all(out: Any, msgs: Iterable[Any]) -> int:
    count = 0
    chunk: list[bytes] = []
    for message in msgs:
        chunk.append(dumps_line(message))
        if len(chunk) >= _WRITE_CHUNK:
            out.write(b"".join(chunk))
            count += len(chunk)
            chunk.clear()
    if chunk:
        out.write(b"".join(chunk))
        count += len(chunk)
    return count


def write_jsonl(path: str | Path, msgs: Iterable[Any], *, gzip: bool = False, compresslevel: int = DEFAULT_COMPRESSLEVEL) -> int:
    """Write messages as NDJSON (gzip-compressed, deterministically, if asked); return the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not gzip:
        with open(path, "wb") as out:
            return _write_all(out, msgs)
    compressed, raw = _open_gzip(path, compresslevel)
    try:
        return _write_all(compressed, msgs)
    finally:
        compressed.close()
        raw.close()


def _day_ms(message: dict[str, Any], cache: dict[str, int]) -> int:
    """Epoch ms of the UTC day a message was received, as Segment folders an export."""
    value = message.get("receivedAt") or message.get("timestamp")
    if not isinstance(value, str):
        raise ValueError(f"message {message.get('messageId')!r} has no receivedAt to place it in a day")
    if value.endswith("Z") and len(value) >= 10:  # Segment's own form: the date is the UTC date
        day = cache.get(value[:10])
        if day is None:
            day = cache[value[:10]] = (date.fromisoformat(value[:10]) - _EPOCH_DATE).days * _DAY_MS
        return day
    return _received_ms(value) // _DAY_MS * _DAY_MS


def _received_ms(value: str) -> int:
    return _to_us(value) // 1000


class _DayFile:
    """The file currently being filled for one day of the S3 layout."""

    def __init__(self, folder: Path, source_id: str, day: int, part: int, first: dict[str, Any], compresslevel: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        received = first.get("receivedAt")
        start = _received_ms(received) if isinstance(received, str) else day
        digest = hashlib.sha1(f"{source_id}/{day}/{part}".encode()).hexdigest()[:12]
        self.path = folder / f"{start}.{digest}.gz"
        self.gzip, self.raw = _open_gzip(self.path, compresslevel)
        self.count = 0
        self.pending: list[bytes] = []

    def write(self, line: bytes) -> None:
        self.pending.append(line)
        self.count += 1
        if len(self.pending) >= _WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.gzip.write(b"".join(self.pending))
            self.pending.clear()

    def close(self) -> None:
        self.flush()
        self.gzip.close()
        self.raw.close()


def write_s3_layout(
    root: str | Path,
    msgs: Iterable[dict[str, Any]],
    *,
    source_id: str = DEFAULT_SOURCE_ID,
    per_file: int = 10_000,
    compresslevel: int = DEFAULT_COMPRESSLEVEL,
) -> list[Path]:
    """Write messages the way a Segment S3 export lays them out; return the files, sorted.

    `root/segment-logs/<source_id>/<UTC day of receivedAt, epoch ms>/<first receivedAt ms>.<hash>.gz`,
    each file gzip NDJSON with at most `per_file` messages. File names depend only on the input,
    so the same messages always give the same files.
    """
    if per_file < 1:
        raise ValueError("per_file must be at least 1")
    base = Path(root) / "segment-logs" / source_id
    cache: dict[str, int] = {}
    parts: dict[int, int] = {}
    open_files: OrderedDict[int, _DayFile] = OrderedDict()
    written: list[Path] = []
    try:
        for message in msgs:
            day = _day_ms(message, cache)
            current = open_files.get(day)
            if current is not None and current.count >= per_file:
                current.close()
                del open_files[day]
                current = None
            if current is None:
                part = parts.get(day, 0)
                parts[day] = part + 1
                current = _DayFile(base / str(day), source_id, day, part, message, compresslevel)
                written.append(current.path)
                open_files[day] = current
                if len(open_files) > _OPEN_DAYS:
                    _, oldest = open_files.popitem(last=False)
                    oldest.close()
            else:
                open_files.move_to_end(day)
            current.write(dumps_line(message))
    finally:
        for day_file in open_files.values():
            day_file.close()
    return sorted(written)


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m segbill.testing.corpus N OUT`: a benchmark corpus, with its time on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m segbill.testing.corpus", description="Write N deterministic, realistic Segment messages."
    )
    parser.add_argument("n", type=int, help="how many messages")
    parser.add_argument("out", type=Path, help="NDJSON file to write (a folder with --s3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gzip", action="store_true", help="gzip the NDJSON file")
    parser.add_argument("--s3", action="store_true", help="write a Segment S3 export layout under OUT")
    parser.add_argument("--duplicates", type=float, default=0.0, metavar="RATIO", help="share of repeated messages")
    parser.add_argument("--days", type=float, default=3.0, help="how many days the messages span")
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--browser", action="store_true", help="only analytics.js messages from browsers, with a 1-2 KB context")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    stream = messages(
        args.n, seed=args.seed, duplicate_ratio=args.duplicates, days=args.days, customers=args.customers, browser=args.browser
    )
    if args.s3:
        files = write_s3_layout(args.out, stream, per_file=100_000)
        what = f"{len(files)} files under {args.out}"
    else:
        write_jsonl(args.out, stream, gzip=args.gzip)
        what = str(args.out)
    print(f"wrote {args.n:,} messages to {what} in {time.perf_counter() - began:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
