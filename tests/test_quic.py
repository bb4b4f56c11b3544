"""QUIC Initial parsing and decryption: RFC vectors, crafted packets, real captures, fuzzing.

Oracles:
* the RFC appendices (keys, header protection, whole protected packets);
* a packet builder written here from RFC 9001 §5.3-5.4 with the RFC's own keys (not the
  module's derivation), checked first against the RFC's protected packets;
* tshark's ground truth for every QUIC capture in tests/fixtures/pcaps, read with scapy
  and checked with a small ClientHello reader written here.
"""

from __future__ import annotations

import csv
import functools
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate import quic
from blockgate.quic import Datagram, Initial, QuicFormatError, Version, parse_datagram

PCAPS = Path(__file__).resolve().parent / "fixtures" / "pcaps"
QUIC_CAPTURES = sorted(p.name for p in PCAPS.glob("quic-*.pcap*") if not p.name.endswith(".tsv"))

# -- RFC vectors ------------------------------------------------------------------------------

# RFC 9001 Appendix A (and RFC 9369 Appendix A): "an 8-byte client-chosen Destination
# Connection ID of 0x8394c8f03e515708".
RFC_DCID = bytes.fromhex("8394c8f03e515708")


@dataclass(frozen=True)
class Keys:
    initial_secret: str
    client_secret: str
    key: str
    iv: str
    hp: str


KEYS = {
    # RFC 9001 Appendix A.1.
    Version.V1: Keys(
        "7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44",
        "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea",
        "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c",
        "9f50449e04a0e810283a1e9933adedd2"),
    # RFC 9369 Appendix A.1.
    Version.V2: Keys(
        "2062e8b3cd8d52092614b8071d0aa1fb7c2e3ac193f78b280e72d8f5751f6aba",
        "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b",
        "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f",
        "45b95e15235d6f45a6b19cbcb0294ba9"),
    # draft-ietf-quic-tls-29 Appendix A.1.
    Version.DRAFT_29: Keys(
        "1e7e7764529715b1e0ddc8e9753c61576769605187793ed366f8bbf8c9e986eb",
        "0088119288f1d866733ceeed15ff9d50902cf82952eee27e9d4d4918ea371d87",
        "175257a31eb09dea9366d8bb79ad80ba", "6b26114b9cba2b63a9e8dd4f",
        "9ddd12c994c0698b89374a9c077a3077"),
}

# RFC 9001 Appendix A.2 (and RFC 9369 A.2, the same bytes): the client's CRYPTO frame, a
# ClientHello for example.com, "060040f1" being the frame type, offset 0 and length 241.
A2_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff")
A2_CLIENT_HELLO = A2_CRYPTO_FRAME[4:]
# A.2: "the frame is padded to 1162 bytes" with PADDING frames.
A2_PAYLOAD = A2_CRYPTO_FRAME + bytes(1162 - len(A2_CRYPTO_FRAME))


@dataclass(frozen=True)
class PacketVector:
    version: int
    header: str  # unprotected header, packet number 2 in 4 bytes
    sample: str
    mask: str
    packet: str  # the whole protected packet


PACKETS = {
    # RFC 9001 Appendix A.2.
    Version.V1: PacketVector(
        Version.V1, "c300000001088394c8f03e5157080000449e00000002",
        "d1b1c98dd7689fb8ec11d242b123dc9b", "437b9aec36",
        "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
        "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
        "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
        "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
        "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
        "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
        "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
        "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
        "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
        "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
        "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
        "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
        "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
        "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
        "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
        "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
        "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
        "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
        "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
        "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
        "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
        "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
        "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
        "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
        "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
        "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
        "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
        "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
        "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
        "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
        "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
        "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
        "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
        "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
        "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
        "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
        "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
        "e221af44860018ab0856972e194cd934"),
    # RFC 9369 Appendix A.2.
    Version.V2: PacketVector(
        Version.V2, "d36b3343cf088394c8f03e5157080000449e00000002",
        "ffe67b6abcdb4298b485dd04de806071", "94a0c95e80",
        "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
        "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
        "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
        "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
        "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
        "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
        "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
        "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
        "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
        "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
        "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
        "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
        "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
        "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
        "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
        "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
        "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
        "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
        "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
        "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
        "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
        "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
        "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
        "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
        "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
        "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
        "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
        "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
        "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
        "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
        "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
        "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
        "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
        "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
        "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
        "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
        "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
        "a18b2faa745b6fe189cf772a9f84cbfc"),
}

# RFC 9001 Appendix A.3: the server's Initial (server keys, which this module never derives).
A3_SERVER_INITIAL = bytes.fromhex(
    "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a"
    "5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3"
    "dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84"
    "022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4"
    "2158407dd074ee")
# RFC 9001 Appendix A.4 and RFC 9369 Appendix A.4: Retry packets.
RETRY_V1 = bytes.fromhex("ff000000010008f067a5502a4262b5746f6b656e04a265ba2eff4d829058fb3f0f2496ba")
RETRY_V2 = bytes.fromhex("cf6b3343cf0008f067a5502a4262b5746f6b656ec8646ce8bfe33952d955543665dcc7b6")
# RFC 9001 Appendix A.5: a short-header (1-RTT) packet.
A5_SHORT = bytes.fromhex("4cfe4189655e5cd55c41f69080575d7999c25a5bfb")


@pytest.mark.parametrize("version", list(KEYS), ids=lambda v: Version(v).name)
def test_initial_keys(version: int) -> None:
    keys = quic.derive_keys(version, RFC_DCID)
    want = KEYS[version]
    assert keys.initial_secret.hex() == want.initial_secret
    assert keys.client_secret.hex() == want.client_secret
    assert (keys.key.hex(), keys.iv.hex(), keys.hp.hex()) == (want.key, want.iv, want.hp)


def test_no_keys_for_an_unknown_version() -> None:
    with pytest.raises(QuicFormatError) as info:
        quic.derive_keys(0x1A2A3A4A, RFC_DCID)
    assert info.value.reason == "version"


@pytest.mark.parametrize("version", list(PACKETS), ids=lambda v: Version(v).name)
def test_header_protection_sample_and_mask(version: int) -> None:
    vec = PACKETS[version]
    packet = bytes.fromhex(vec.packet)
    header = bytes.fromhex(vec.header)
    pn_offset = len(header) - 4  # RFC 9001 A.2: a 4-byte packet number
    sample = packet[pn_offset + 4 : pn_offset + 20]
    assert sample.hex() == vec.sample
    mask = quic.header_mask(bytes.fromhex(KEYS[version].hp), sample)
    assert mask.hex() == vec.mask
    # Applying the mask to the unprotected header gives the protected one (RFC 9001 §5.4.1).
    protected = bytes((header[0] ^ (mask[0] & 0x0F),)) + header[1:pn_offset] + bytes(
        b ^ m for b, m in zip(header[pn_offset:], mask[1:], strict=True))
    assert packet[: len(header)] == protected


@pytest.mark.parametrize("version", list(PACKETS), ids=lambda v: Version(v).name)
def test_rfc_client_initial_decrypts_to_the_a2_client_hello(version: int) -> None:
    got = parse_datagram(bytes.fromhex(PACKETS[version].packet))
    assert got == Datagram((Initial(version, RFC_DCID, b"", b"", 2, ((0, A2_CLIENT_HELLO),)),), False, 0)
    assert client_hello_sni(A2_CLIENT_HELLO) == "example.com"


def test_a_server_initial_is_not_decrypted() -> None:
    with pytest.raises(QuicFormatError) as info:
        parse_datagram(A3_SERVER_INITIAL)
    assert info.value.reason == "decrypt"


# -- a packet builder from RFC 9001 §5.3-5.4, with the RFC's keys -------------------------------


def varint(n: int) -> bytes:
    """RFC 9000 §16, shortest encoding."""
    for size, prefix in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if n < 1 << (8 * size - 2):
            return (n | prefix << (8 * size - 8)).to_bytes(size, "big")
    raise ValueError(n)


def protect(header: bytes, payload: bytes, pn: int, pn_len: int, keys: Keys) -> bytes:
    """Encrypt ``payload`` and protect ``header`` (which ends with the packet number)."""
    nonce = (int(keys.iv, 16) ^ pn).to_bytes(12, "big")
    sealed = AESGCM(bytes.fromhex(keys.key)).encrypt(nonce, payload, header)
    sample = sealed[4 - pn_len : 20 - pn_len]
    mask = Cipher(algorithms.AES(bytes.fromhex(keys.hp)), modes.ECB()).encryptor().update(sample)
    pn_at = len(header) - pn_len
    first = header[0] ^ (mask[0] & 0x0F)
    pn_bytes = bytes(b ^ m for b, m in zip(header[pn_at:], mask[1:], strict=False))
    return bytes((first,)) + header[1:pn_at] + pn_bytes + sealed


def initial(payload: bytes, *, version: int = Version.V1, dcid: bytes = RFC_DCID, scid: bytes = b"",
            token: bytes = b"", pn: int = 2, pn_len: int = 4, keys: Keys | None = None) -> bytes:
    """A protected client Initial with the RFC's keys for RFC_DCID (whatever ``dcid`` says)."""
    type_bits = 0b01 if version == Version.V2 else 0b00
    first = 0xC0 | type_bits << 4 | (pn_len - 1)
    length = varint(pn_len + len(payload) + 16)
    header = (bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
              + bytes((len(scid),)) + scid + varint(len(token)) + token + length
              + pn.to_bytes(pn_len, "big"))
    return protect(header, payload, pn, pn_len, keys or KEYS[Version(version)])


def other_packet(type_bits: int, body: bytes, *, version: int = Version.V1, dcid: bytes = RFC_DCID) -> bytes:
    """A long-header packet without a token (0-RTT or Handshake), opaque ``body``."""
    return (bytes((0xC0 | type_bits << 4,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
            + b"\x00" + varint(len(body)) + body)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def pad(frames: bytes, size: int = 1162) -> bytes:
    return frames + bytes(max(0, size - len(frames)))


@pytest.mark.parametrize("version", list(PACKETS), ids=lambda v: Version(v).name)
def test_builder_reproduces_the_rfc_packets(version: int) -> None:
    assert initial(A2_PAYLOAD, version=version).hex() == PACKETS[version].packet


# -- frames -------------------------------------------------------------------------------------

ACK = b"\x02" + varint(5) + varint(0) + varint(1) + varint(2) + varint(0) + varint(1)
ACK_ECN = b"\x03" + varint(70000) + varint(3) + varint(0) + varint(4) + varint(1) + varint(2) + varint(3)
CLOSE = b"\x1c" + varint(0x0A) + varint(0x06) + varint(5) + b"oops!"

FRAME_CASES = {
    "crypto-only": (crypto_frame(0, b"hello"), ((0, b"hello"),)),
    "ack-then-crypto": (ACK + crypto_frame(0, b"abc"), ((0, b"abc"),)),
    "ack-ecn-then-crypto": (ACK_ECN + crypto_frame(3, b"def"), ((3, b"def"),)),
    "scattered-with-padding-and-ping": (
        crypto_frame(10, b"klm") + bytes(7) + b"\x01" + crypto_frame(0, b"0123456789") + b"\x01",
        ((10, b"klm"), (0, b"0123456789"))),
    "connection-close-then-crypto": (CLOSE + crypto_frame(0, b"x"), ((0, b"x"),)),
    "non-minimal-frame-type": (b"\x40\x06" + varint(0) + varint(2) + b"hi", ((0, b"hi"),)),
    "no-crypto": (b"\x01" + ACK, ()),
    "large-offset": (crypto_frame(1 << 40, b"z"), ((1 << 40, b"z"),)),
}


@pytest.mark.parametrize(("frames", "crypto"), list(FRAME_CASES.values()), ids=list(FRAME_CASES))
def test_frames(frames: bytes, crypto: tuple[tuple[int, bytes], ...]) -> None:
    got = parse_datagram(initial(pad(frames)))
    assert [i.crypto for i in got.initials] == [crypto]
    assert quic.parse_frames(frames) == crypto


_FRAME = st.one_of(
    st.tuples(st.just("crypto"), st.integers(0, 1 << 20),
              st.binary(max_size=40) | st.binary(max_size=8).map(lambda b: b + bytes(12))),
    st.tuples(st.just("pad"), st.integers(1, 300)),
    st.tuples(st.just("ping")),
)


@settings(max_examples=2000, deadline=None)
@given(st.lists(_FRAME, max_size=12))
def test_frames_in_any_order_around_padding(frames: list[tuple[object, ...]]) -> None:
    """PADDING anywhere (between frames, after CRYPTO data that itself ends in zeros, up to
    the end): the CRYPTO frames come out whole and in order."""
    payload, want = b"", []
    for f in frames:
        if f[0] == "crypto":
            offset, data = f[1], f[2]
            assert isinstance(offset, int) and isinstance(data, bytes)
            payload += crypto_frame(offset, data)
            want.append((offset, data))
        elif f[0] == "pad":
            assert isinstance(f[1], int)
            payload += bytes(f[1])
        else:
            payload += b"\x01"
    assert quic.parse_frames(payload) == tuple(want)
    with pytest.raises(QuicFormatError):  # a STREAM frame after the padding is still seen
        quic.parse_frames(payload + bytes(5) + b"\x08\x00")


BAD_FRAMES = {
    "stream-frame": b"\x08\x00hello",
    "application-close": b"\x1d" + varint(0) + varint(0),
    "new-token": b"\x07" + varint(1) + b"t",
    "crypto-past-end": b"\x06" + varint(0) + varint(50) + b"short",
    "crypto-beyond-2^62": b"\x06" + varint((1 << 62) - 2) + varint(2) + b"ab",
    "ack-cut-short": b"\x02" + varint(5) + varint(0) + varint(3),
    "close-reason-past-end": b"\x1c" + varint(1) + varint(0) + varint(40) + b"x",
}


@pytest.mark.parametrize("frames", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
def test_bad_frames(frames: bytes) -> None:
    packet = initial(frames)  # the bad frame ends the payload: nothing pads it
    with pytest.raises(QuicFormatError) as info:
        parse_datagram(packet)
    assert info.value.reason == "frame"


@pytest.mark.parametrize("pn_len", [1, 2, 3, 4])
def test_packet_number_lengths(pn_len: int) -> None:
    pn = (1 << (8 * pn_len - 1)) + 5
    got = parse_datagram(initial(pad(crypto_frame(0, b"ch")), pn=pn, pn_len=pn_len,
                                 scid=b"\x11\x22", token=b"tok"))
    (one,) = got.initials
    assert (one.packet_number, one.scid, one.token, one.crypto) == (pn, b"\x11\x22", b"tok", ((0, b"ch"),))


# -- packet errors --------------------------------------------------------------------------------


def corrupt(packet: bytes, at: int = -1) -> bytes:
    b = bytearray(packet)
    b[at] ^= 0x01
    return bytes(b)


GOOD = initial(pad(crypto_frame(0, b"first")))

PACKET_ERRORS = {
    "tag": (corrupt(GOOD), "decrypt"),
    "ciphertext": (corrupt(GOOD, 60), "decrypt"),
    "header-byte-in-aad": (corrupt(GOOD, 7), "decrypt"),
    "length-past-datagram": (GOOD[:-1], "truncated"),
    "too-short-to-sample": (bytes.fromhex("c000000001088394c8f03e51570800000410203040"), "short"),
    "cid-longer-than-20": (b"\xc0\x00\x00\x00\x01\x15" + bytes(21) + b"\x00\x00\x40\x20" + bytes(32), "cid"),
    "header-cut-in-dcid": (GOOD[:10], "truncated"),
    "token-past-datagram": (b"\xc0\x00\x00\x00\x01\x00\x00\x44\x00" + bytes(10), "truncated"),
}


@pytest.mark.parametrize(("data", "reason"), list(PACKET_ERRORS.values()), ids=list(PACKET_ERRORS))
def test_packet_errors(data: bytes, reason: str) -> None:
    with pytest.raises(QuicFormatError) as info:
        parse_datagram(data)
    assert info.value.reason == reason


# -- datagrams: coalescing, Retry, Version Negotiation, unknown versions --------------------------

SECOND = initial(pad(crypto_frame(5, b"second"), 40), pn=3)
ZERO_RTT = other_packet(0b01, bytes(range(40)))
HANDSHAKE = other_packet(0b10, bytes(30))


def crypto_of(dg: Datagram) -> list[tuple[tuple[int, bytes], ...]]:
    return [i.crypto for i in dg.initials]


FIRST = ((0, b"first"),)
DATAGRAMS = {
    "initial-then-0rtt": (GOOD + ZERO_RTT, [FIRST], False, 1, ""),
    "0rtt-then-initial": (ZERO_RTT + GOOD, [FIRST], False, 1, ""),
    "initial-handshake-then-zeros": (GOOD + HANDSHAKE + bytes(100), [FIRST], False, 1, ""),
    "two-initials": (GOOD + SECOND, [FIRST, ((5, b"second"),)], False, 0, ""),
    "good-then-bad": (GOOD + corrupt(SECOND), [FIRST], False, 0, "decrypt"),
    "bad-then-good": (corrupt(GOOD) + SECOND, [((5, b"second"),)], False, 0, "decrypt"),
    "good-then-cut-header": (GOOD + SECOND[:12], [FIRST], False, 0, "truncated"),
    "good-then-bad-frames": (GOOD + initial(b"\x08" + bytes(30)), [FIRST], False, 0, "frame"),
    # RFC 9000 §12.2: a later packet with another DCID is ignored, not decrypted.
    "other-dcid-ignored": (GOOD + initial(bytes(40), dcid=b"\x01" * 8), [FIRST], False, 1, ""),
    "other-version-ignored": (GOOD + other_packet(0b01, bytes(20), version=Version.DRAFT_29),
                              [FIRST], False, 1, ""),
    "initial-then-short-header": (GOOD + A5_SHORT, [FIRST], False, 0, ""),
    "initial-then-unknown-version": (GOOD + other_packet(0, bytes(30), version=0x1A2A3A4A),
                                     [FIRST], False, 1, ""),
    "0rtt-only": (ZERO_RTT, [], False, 1, ""),
    "retry-v1": (RETRY_V1, [], True, 0, ""),
    "retry-v2": (RETRY_V2, [], True, 0, ""),
    "unknown-version": (other_packet(0, bytes(30), version=0x1A2A3A4A), [], False, 1, ""),
    "grease-version-invariants-only": (b"\xca\x0a\x0a\x0a\x0a", [], False, 1, ""),
    "short-header": (A5_SHORT, [], False, 0, ""),
    "empty": (b"", [], False, 0, ""),
    "initial-then-too-many": (GOOD + ZERO_RTT * quic.MAX_COALESCED, [FIRST], False,
                              quic.MAX_COALESCED - 1, "coalesced"),
}


@pytest.mark.parametrize(("data", "crypto", "retry", "other", "error"), list(DATAGRAMS.values()),
                         ids=list(DATAGRAMS))
def test_datagrams(data: bytes, crypto: list[tuple[tuple[int, bytes], ...]], retry: bool, other: int,
                   error: str) -> None:
    got = parse_datagram(data)
    assert (crypto_of(got), got.retry, got.other, got.error) == (crypto, retry, other, error)
    assert not got.negotiation


def test_version_negotiation() -> None:
    # RFC 9000 §17.2.1: version 0, the client's CIDs echoed, then supported versions.
    data = b"\xa7\x00\x00\x00\x00" + b"\x04abcd" + b"\x08" + RFC_DCID + bytes.fromhex("000000016b3343cf")
    got = parse_datagram(data)
    assert got.negotiation and not got.initials and not got.retry


def test_nothing_decrypts_raises_the_first_failure() -> None:
    with pytest.raises(QuicFormatError) as info:
        parse_datagram(ZERO_RTT + corrupt(GOOD) + ZERO_RTT)
    assert info.value.reason == "decrypt"
    with pytest.raises(QuicFormatError) as info:
        parse_datagram(ZERO_RTT * (quic.MAX_COALESCED + 1))
    assert info.value.reason == "coalesced"


def test_trailing_junk() -> None:
    whole = parse_datagram(GOOD)
    assert parse_datagram(GOOD + bytes(300)) == whole
    junk = parse_datagram(GOOD + b"\xc0\x00\x00\x00\x01\x20")
    assert junk.initials == whole.initials and junk.error == "cid"


# -- keys from the first DCID ---------------------------------------------------------------------

LATER_DCID = bytes.fromhex("b1b2b3b4")


def test_later_initial_uses_the_first_dcid_keys() -> None:
    # RFC 9001 §5.2: a later Initial carries the server's CID but keeps the first keys.
    later = initial(pad(crypto_frame(0, b"ch")), dcid=LATER_DCID)
    with pytest.raises(QuicFormatError) as info:
        parse_datagram(later)
    assert info.value.reason == "decrypt"
    (one,) = parse_datagram(later, first_dcid=RFC_DCID).initials
    assert one.dcid == LATER_DCID and one.crypto == ((0, b"ch"),)


def test_after_retry_the_packets_own_dcid_gives_the_keys() -> None:
    # RFC 9001 §5.2: after a Retry the client derives keys from the DCID the Retry chose.
    (one,) = parse_datagram(GOOD, first_dcid=LATER_DCID).initials
    assert one.crypto == FIRST and one.rekeyed
    (same,) = parse_datagram(GOOD, first_dcid=RFC_DCID).initials
    assert not same.rekeyed


def test_key_cache_is_warm_and_bounded() -> None:
    quic.clear_key_cache()
    cold = parse_datagram(GOOD)
    assert quic.key_cache_len() == 1
    assert parse_datagram(GOOD) == cold
    assert quic.key_cache_len() == 1
    for n in range(quic.KEY_CACHE_SIZE + 10):
        with pytest.raises(QuicFormatError):
            parse_datagram(initial(bytes(40), dcid=n.to_bytes(8, "big")))
    assert quic.key_cache_len() == quic.KEY_CACHE_SIZE
    assert parse_datagram(GOOD) == cold


LOOKS = {
    "v1-initial": (bytes.fromhex(PACKETS[Version.V1].packet), True),
    "v2-initial": (bytes.fromhex(PACKETS[Version.V2].packet), True),
    "draft29-initial": (initial(bytes(40), version=Version.DRAFT_29), True),
    "0rtt-first": (ZERO_RTT + GOOD, True),
    "handshake": (HANDSHAKE, False),
    "v2-handshake-bits-of-v1-initial": (b"\xc0\x6b\x33\x43\xcf" + bytes(40), False),
    "retry": (RETRY_V1, False),
    "negotiation": (b"\xc0\x00\x00\x00\x00" + bytes(40), False),
    "unknown-version": (b"\xc0\x1a\x2a\x3a\x4a" + bytes(40), False),
    "short-header": (A5_SHORT, False),
    "too-short": (b"\xc0\x00\x00\x00\x01\x08", False),
}


@pytest.mark.parametrize(("data", "expected"), list(LOOKS.values()), ids=list(LOOKS))
def test_looks_like_initial(data: bytes, expected: bool) -> None:
    assert quic.looks_like_initial(data) is expected


# -- real captures --------------------------------------------------------------------------------


def client_hello_sni(stream: bytes) -> str | None:
    """The first server_name of the ClientHello at the start of ``stream`` (RFC 8446 §4.1.2,
    RFC 6066 §3); "" without one; None while the ClientHello is incomplete."""
    if len(stream) < 4:
        return None
    assert stream[0] == 1, "not a ClientHello"
    size = int.from_bytes(stream[1:4], "big")
    if len(stream) < 4 + size:
        return None
    body = stream[4 : 4 + size]

    def u16(at: int) -> int:
        return int.from_bytes(body[at : at + 2], "big")

    at = 2 + 32  # legacy_version, random
    at += 1 + body[at]  # session id
    at += 2 + u16(at)  # cipher suites
    at += 1 + body[at]  # compression methods
    if at >= len(body):
        return ""
    end = at + 2 + u16(at)
    at += 2
    while at + 4 <= end:
        ext, ext_len = u16(at), u16(at + 2)
        at += 4
        if ext == 0:  # server_name: list length, then name_type 0, length, name
            assert body[at + 2] == 0
            return body[at + 5 : at + 5 + u16(at + 3)].decode("ascii")
        at += ext_len
    return ""


@dataclass
class Flow:
    first_dcid: bytes | None = None
    stream: dict[int, int] = field(default_factory=dict)  # offset -> byte, first data wins
    complete: bool = False  # the current stream holds a whole ClientHello
    hellos: list[tuple[int, str]] = field(default_factory=list)  # (frame, name) of each one

    def add(self, crypto: tuple[tuple[int, bytes], ...]) -> str | None:
        for offset, data in crypto:
            for i, b in enumerate(data):
                self.stream.setdefault(offset + i, b)
        n = 0
        while n in self.stream:
            n += 1
        return client_hello_sni(bytes(self.stream[i] for i in range(n)))


@dataclass
class Capture:
    rows: list[tuple[int, str, str, int, int, str]]  # like the truth file
    results: dict[int, Datagram | QuicFormatError]  # client datagrams by frame number
    server: dict[int, bytes]  # server datagrams by frame number
    flows: dict[tuple[str, str, int, int], Flow]


def address(text: str) -> str:
    return str(ipaddress.ip_address(text))


@functools.cache
def udp_datagrams(name: str) -> list[tuple[int, str, str, int, int, bytes]]:
    from scapy.all import IP, UDP, IPv6, rdpcap  # test-only, off the hot path

    out = []
    for number, pkt in enumerate(rdpcap(str(PCAPS / name)), 1):
        if UDP not in pkt or (IP not in pkt and IPv6 not in pkt):
            continue
        ip = pkt[IP] if IP in pkt else pkt[IPv6]
        udp = pkt[UDP]
        out.append((number, address(ip.src), address(ip.dst), udp.sport, udp.dport, bytes(udp.payload)))
    return out


@functools.cache
def replay(name: str) -> Capture:
    """Every client datagram through parse_datagram, CRYPTO reassembled per flow.

    The client is the first sender of a flow. Keys come from the flow's first DCID; a client
    Initial keyed by its own new DCID (``rekeyed``: after a Retry) starts the stream over. A ClientHello
    is reported once per flow, on the datagram that completes it, as tshark does; every
    completed one is kept in the flow's ``hellos``.
    """
    cap = Capture([], {}, {}, {})
    for number, src, dst, sport, dport, data in udp_datagrams(name):
        if (dst, src, dport, sport) in cap.flows:
            cap.server[number] = data
            continue
        flow = cap.flows.setdefault((src, dst, sport, dport), Flow())
        try:
            dg = parse_datagram(data, flow.first_dcid)
        except QuicFormatError as exc:
            cap.results[number] = exc
            continue
        cap.results[number] = dg
        for one in dg.initials:
            if flow.first_dcid is None:
                flow.first_dcid = one.dcid
            elif one.rekeyed:
                flow.first_dcid, flow.stream, flow.complete = one.dcid, {}, False
            sni = flow.add(one.crypto)
            if sni is not None and not flow.complete:
                flow.complete = True
                if not flow.hellos:
                    cap.rows.append((number, src, dst, sport, dport, sni))
                flow.hellos.append((number, sni))
    return cap


def truth(name: str) -> list[tuple[int, str, str, int, int, str]]:
    with open(PCAPS / f"{name}.truth.tsv", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["proto"] == "quic"]
    return [(int(r["frame_number"]), address(r["src"]), address(r["dst"]), int(r["sport"]),
             int(r["dport"]), r["name"]) for r in rows]


@pytest.mark.parametrize("name", QUIC_CAPTURES)
def test_capture_matches_tshark(name: str) -> None:
    cap = replay(name)
    assert cap.rows == truth(name)
    # The hot-path filter lets through every datagram that holds an Initial.
    data = {n: d for n, *_, d in udp_datagrams(name)}
    assert all(quic.looks_like_initial(data[n]) for n, r in cap.results.items()
               if isinstance(r, Datagram) and r.initials)
    if name != "quic-malformed-decrypt-crash.pcap":
        # Every client datagram of a real client decrypts (or holds no Initial at all).
        assert {n: r for n, r in cap.results.items() if isinstance(r, QuicFormatError)} == {}
        assert any(isinstance(r, Datagram) and r.initials for r in cap.results.values())


def initials_of(cap: Capture) -> list[Initial]:
    return [i for r in cap.results.values() if isinstance(r, Datagram) for i in r.initials]


VERSIONS = {
    "quic-v1-curl-http3.pcap": {Version.V1},
    "quic-v2-ipv6-sni.pcapng": {Version.V2},
    "quic-v2-no-sni.pcap": {Version.V2},
    "quic-draft29-chrome-reordered-crypto.pcapng": {Version.DRAFT_29},
    "quic-0rtt-mixed-versions.pcapng": {Version.DRAFT_28, Version.V1},
}


@pytest.mark.parametrize(("name", "versions"), list(VERSIONS.items()), ids=list(VERSIONS))
def test_capture_versions(name: str, versions: set[int]) -> None:
    assert {i.version for i in initials_of(replay(name))} == versions


@pytest.mark.parametrize("name", ["quic-v1-chromium115-scattered-crypto.pcap",
                                  "quic-draft29-chrome-reordered-crypto.pcapng"])
def test_capture_crypto_frames_out_of_order_within_a_packet(name: str) -> None:
    scattered = [i for i in initials_of(replay(name))
                 if [o for o, _ in i.crypto] != sorted(o for o, _ in i.crypto)]
    assert scattered, "the capture is meant to have CRYPTO frames out of order"
    assert max(len(i.crypto) for i in scattered) >= (9 if "chromium" in name else 2)


def test_capture_mixed_versions_coalesced_and_early_0rtt() -> None:
    cap = replay("quic-0rtt-mixed-versions.pcapng")
    first = cap.results[1]  # draft-28 Initial coalesced with a 0-RTT packet
    assert isinstance(first, Datagram)
    assert [i.version for i in first.initials] == [Version.DRAFT_28] and first.other == 1
    for n in (3, 4):  # v1 0-RTT sent before the Initial: worth a look, nothing to decrypt
        early = cap.results[n]
        assert isinstance(early, Datagram) and not early.initials and early.other == 1
        assert quic.looks_like_initial(dict((f, d) for f, *_, d in udp_datagrams(
            "quic-0rtt-mixed-versions.pcapng"))[n])


def test_capture_retry() -> None:
    cap = replay("quic-v1-retry.pcap")
    retries = {n: parse_datagram(d) for n, d in cap.server.items() if n in (3, 4)}
    assert all(r.retry and not r.initials for r in retries.values())
    (flow,) = [f for f in cap.flows.values() if f.hellos]
    # The ClientHello is sent again from offset 0 under keys from the Retry's CID (frames
    # 5-6), which tshark does not report a second time; it names the same server.
    assert flow.hellos == [(2, "www.gravatar.com"), (6, "www.gravatar.com")]
    before = [i for n in (1, 2) for i in cap.results[n].initials]  # type: ignore[union-attr]
    resent = [i for n in (5, 6) for i in cap.results[n].initials]  # type: ignore[union-attr]
    assert [i.rekeyed for i in before + resent] == [False, False, True, False]
    assert all(i.token and i.dcid == flow.first_dcid != before[0].dcid for i in resent)


def test_capture_second_initial_with_a_new_dcid_needs_the_first_keys() -> None:
    name = "quic-v1-ch-2pkt-different-dcid.pcapng"
    data = {n: d for n, *_, d in udp_datagrams(name)}
    first = parse_datagram(data[1]).initials[0]
    with pytest.raises(QuicFormatError) as info:
        parse_datagram(data[3])
    assert info.value.reason == "decrypt"
    (later,) = parse_datagram(data[3], first_dcid=first.dcid).initials
    assert later.dcid != first.dcid and later.crypto and not later.rekeyed


def test_capture_new_token_and_new_dcid_is_not_a_retry() -> None:
    # The client sends a NEW_TOKEN token from its first Initial on, then switches to the
    # server's CID (frame 8): the first keys still apply, so the stream continues.
    cap = replay("quic-v1-ch-multi-initial-ipv6.pcap")
    initials = [i for n in sorted(cap.results) for i in getattr(cap.results[n], "initials", ())]
    assert all(i.token for i in initials) and len({i.dcid for i in initials}) == 2
    assert not any(i.rekeyed for i in initials)


def test_capture_malformed_raises_only_format_errors() -> None:
    cap = replay("quic-malformed-decrypt-crash.pcap")
    assert cap.rows == []
    assert any(isinstance(r, QuicFormatError) for r in cap.results.values())


# -- properties: bad bytes raise only QuicFormatError -------------------------------------------


def first_client_datagrams() -> list[bytes]:
    out = []
    for name in QUIC_CAPTURES:
        if "malformed" in name:
            continue
        out.append(udp_datagrams(name)[0][5])
    return out


REAL = first_client_datagrams()


def parse_or_error(data: bytes) -> Datagram | None:
    try:
        return parse_datagram(data)
    except QuicFormatError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes(data: bytes) -> None:
    parse_or_error(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"\xc0\x00\x00\x00\x01", b"\xd0\x6b\x33\x43\xcf", b"\xc0\xff\x00\x00\x1d",
                        b"\xd0\x00\x00\x00\x01", b"\xc0\x00\x00\x00\x01\x08" + RFC_DCID + b"\x00\x00"]),
       st.binary(max_size=300))
def test_random_bytes_behind_a_real_long_header(prefix: bytes, rest: bytes) -> None:
    parse_or_error(prefix + rest)


@pytest.mark.parametrize("data", REAL, ids=[n.split(".")[0] for n in QUIC_CAPTURES if "malformed" not in n])
def test_truncated_real_datagrams(data: bytes) -> None:
    whole = parse_datagram(data).initials
    assert whole
    for n in range(len(data)):
        got = parse_or_error(data[:n])
        # Authentication covers each packet whole: a prefix yields at most the complete ones.
        assert got is None or list(got.initials) == list(whole[: len(got.initials)])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REAL), st.data())
def test_bit_flipped_real_datagrams(data: bytes, draw: st.DataObject) -> None:
    bit = draw.draw(st.integers(0, len(data) * 8 - 1))
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    got = parse_or_error(bytes(flipped))
    # Anything that still decrypts is one of the real Initials, never altered content.
    assert got is None or set(got.initials) <= set(parse_datagram(data).initials)
