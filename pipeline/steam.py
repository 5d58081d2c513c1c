"""What Steam serves: its image kinds and the URLs they live at."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class BannerKind(StrEnum):
    """Image kinds on Steam's CDN, named as the file is (``{appid}/{kind}.{ext}``)."""

    header = "header"
    capsule_184x69 = "capsule_184x69"
    capsule_231x87 = "capsule_231x87"
    capsule_467x181 = "capsule_467x181"
    capsule_616x353 = "capsule_616x353"
    library_600x900 = "library_600x900"
    library_600x900_2x = "library_600x900_2x"
    library_hero = "library_hero"
    logo = "logo"

    @property
    def spec(self) -> KindSpec:
        return KIND_SPECS[self]

    @property
    def ext(self) -> str:
        return self.spec.ext

    @property
    def size(self) -> tuple[int, int] | None:
        """Nominal (width, height) on Steam, or None where it varies (logos)."""
        return self.spec.size


@dataclass(frozen=True)
class KindSpec:
    ext: str
    size: tuple[int, int] | None


# Nominal sizes as Steam serves them today. library_600x900 is 300×450 despite its name
# (the 2x file is the 600×900 one); logos are transparent PNGs of varying size.
KIND_SPECS: dict[BannerKind, KindSpec] = {
    BannerKind.header: KindSpec("jpg", (460, 215)),
    BannerKind.capsule_184x69: KindSpec("jpg", (184, 69)),
    BannerKind.capsule_231x87: KindSpec("jpg", (231, 87)),
    BannerKind.capsule_467x181: KindSpec("jpg", (467, 181)),
    BannerKind.capsule_616x353: KindSpec("jpg", (616, 353)),
    BannerKind.library_600x900: KindSpec("jpg", (300, 450)),
    BannerKind.library_600x900_2x: KindSpec("jpg", (600, 900)),
    BannerKind.library_hero: KindSpec("jpg", (1920, 620)),
    BannerKind.logo: KindSpec("png", None),
}

DEFAULT_CDN_URL = "https://cdn.cloudflare.steamstatic.com/steam/apps"
STEAM_APP_LIST_URL = "https://api.steampowered.com/ISteamApps/GetAppList/v2/"
STEAMSPY_URL = "https://steamspy.com/api.php"


def image_url(cdn_url: str, appid: int, kind: BannerKind) -> str:
    """The CDN address of one app's image of one kind."""
    return f"{cdn_url.rstrip('/')}/{int(appid)}/{kind.value}.{kind.ext}"


def image_filename(appid: int, kind: BannerKind) -> str:
    return f"{int(appid)}.{kind.ext}"


# Steam app ids are unsigned 32-bit integers; 0 is not an app.
MAX_APPID = 2**32 - 1


def parse_appid(value: object) -> int:
    """An app id from any source (JSON number, JSON key, file text), or ValueError.

    The one check every source goes through: an integer 1 ≤ id < 2^32, written as digits.
    Booleans, floats (3.7, and 3.0 too: Steam never writes them), negatives and ids too big
    for the table's int64 (2^63 would wrap negative) are refused.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{_shown(value)} is not an app id (an integer 1 to {MAX_APPID})")
    text = value.strip() if isinstance(value, str) else str(value)
    if not re.fullmatch(r"[0-9]{1,10}", text) or not 1 <= int(text) <= MAX_APPID:
        raise ValueError(f"{_shown(value)} is not an app id (an integer 1 to {MAX_APPID})")
    return int(text)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
