from urllib.parse import urlparse

from hypothesis import given
from hypothesis import strategies as st

from pipeline.steam import DEFAULT_CDN_URL, BannerKind, image_filename, image_url


def test_default_url_matches_steam_cdn_layout():
    assert (
        image_url(DEFAULT_CDN_URL, 570, BannerKind.library_600x900)
        == "https://cdn.cloudflare.steamstatic.com/steam/apps/570/library_600x900.jpg"
    )
    assert image_url(DEFAULT_CDN_URL, 570, BannerKind.logo).endswith("/570/logo.png")


def test_every_kind_has_extension_and_nominal_size():
    assert BannerKind.library_600x900.size == (300, 450)
    assert BannerKind.header.size == (460, 215)
    assert BannerKind.logo.size is None
    assert {k.ext for k in BannerKind} == {"jpg", "png"}


hosts = st.from_regex(r"[a-z]{1,10}(\.[a-z]{2,5}){0,2}", fullmatch=True)


@given(
    host=hosts,
    prefix=st.lists(st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True), max_size=3),
    slash=st.booleans(),
    appid=st.integers(1, 2**31),
    kind=st.sampled_from(list(BannerKind)),
)
def test_image_url_parts(host, prefix, slash, appid, kind):
    base = "https://" + host + "".join("/" + p for p in prefix) + ("/" if slash else "")
    url = image_url(base, appid, kind)
    parsed = urlparse(url)
    assert parsed.netloc == host
    parts = parsed.path.split("/")[1:]
    assert parts == [*prefix, str(appid), f"{kind.value}.{kind.ext}"]
    assert image_filename(appid, kind) == f"{appid}.{kind.ext}"
