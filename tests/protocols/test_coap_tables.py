"""formats.py keeps CoAP's registries without importing aiocoap (start-up time); these
tests hold them to aiocoap's own tables, so neither drifts unnoticed."""

from __future__ import annotations

from aiocoap import optiontypes
from aiocoap.numbers.contentformat import ContentFormat
from aiocoap.numbers.optionnumbers import OptionNumber

from iotctl.protocols.coap import formats

# options aiocoap knows that are still drafts, left out on purpose
DRAFT_OPTIONS = {13: "Uri-Path-Abbrev", 548: "Request-Hash"}


def _key(name: str) -> str:
    return name.upper().replace("-", "_")


def test_every_aiocoap_option_is_known_by_the_same_name():
    missing = {int(o): o.name for o in OptionNumber if int(o) not in formats.OPTIONS and int(o) not in DRAFT_OPTIONS}
    assert missing == {}
    renamed = {int(o): (formats.OPTIONS[int(o)][0], o.name) for o in OptionNumber
               if int(o) in formats.OPTIONS and _key(formats.OPTIONS[int(o)][0]) != o.name}
    assert renamed == {}


def test_option_value_formats_agree_with_aiocoap():
    kinds = {optiontypes.UintOption: formats.UINT, optiontypes.ContentFormatOption: formats.UINT,
             optiontypes.StringOption: formats.STRING, optiontypes.BlockOption: formats.BLOCK}
    wrong = {}
    for o in OptionNumber:
        if int(o) not in formats.OPTIONS or o.format not in kinds:
            continue
        if formats.OPTIONS[int(o)][1] != kinds[o.format]:
            wrong[int(o)] = (formats.OPTIONS[int(o)][1], o.format.__name__)
    assert wrong == {}


def test_every_aiocoap_content_format_has_the_same_media_type():
    wrong = {}
    for cf in ContentFormat:
        if cf.encoding != "identity":
            continue
        ours = formats.CONTENT_FORMATS.get(int(cf))
        if ours is None or formats._norm(ours) != formats._norm(cf.media_type):
            wrong[int(cf)] = (ours, cf.media_type)
    assert wrong == {}


def test_our_names_resolve_to_aiocoap_numbers():
    for number, name in formats.CONTENT_FORMATS.items():
        assert formats.parse_content_format(name) == number
        by_aiocoap = ContentFormat.by_media_type(name) if hasattr(ContentFormat, "by_media_type") else None
        if by_aiocoap is not None:
            assert int(by_aiocoap) == number, name
