"""The strange files people upload, each with the answer the service must give.

`expected` is one of: "done" (thumbnails made; `size` is the displayed size, after EXIF
orientation), "error" (accepted at upload because the header is fine, then ERROR with a reason
once the worker decodes), or an HTTP status refused at upload (413, 415, 422). `outcome` spells
the same as a word: "done", "error", "rejected_413", "rejected_415", "rejected_422".

Truncated files end as "error", not as a refusal: the upload only reads the header (probe), which
is intact, and decoding the whole file in the request would cost the API the decode time that the
worker pool exists to take.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

from PIL import Image

from tests.images import (
    animated,
    cmyk_jpeg,
    display_p3_profile,
    encode,
    marked,
    palette_with_transparency,
    png16,
    with_orientation,
)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expected: str | int
    size: tuple[int, int] | None = None
    filename: str = "upload.jpg"
    content_type: str = "image/jpeg"
    fields: tuple[str, ...] = ("file",)
    note: str = field(default="", compare=False)
    code: str = ""  # the error `code` of a refusal (docs/inputs.md lists them)

    @property
    def outcome(self) -> str:
        return self.expected if isinstance(self.expected, str) else f"rejected_{self.expected}"


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (CRC fixed so decoders believe it)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNSUPPORTED = "unsupported_image"
TOO_MANY_PIXELS = "image_too_large"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body).to_bytes(4, "big")
    return len(body).to_bytes(4, "big") + kind + body + crc


def black_png(width: int, height: int) -> bytes:
    """A valid greyscale PNG of zeros, written without ever holding the pixels in memory.

    A deflate block ended by a full flush refers to nothing before it, so one block of rows
    can be repeated as often as needed; the Adler-32 of n zero bytes is (n mod 65521) << 16 | 1.
    """
    rows = next(r for r in (100, 64, 50, 40, 32, 25, 20, 16, 10, 8, 5, 4, 2, 1) if height % r == 0)
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(bytes((width + 1) * rows)) + raw.flush(zlib.Z_FULL_FLUSH)
    adler = ((width + 1) * height % 65521) << 16 | 1
    stream = b"\x78\xda" + block * (height // rows) + b"\x03\x00" + adler.to_bytes(4, "big")
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", stream)
        + _png_chunk(b"IEND", b"")
    )


def decompression_bomb() -> bytes:
    """20000 x 20000 black: ~400 KB on disk that would decode to 400 MB."""
    return black_png(20000, 20000)


def gif_frame_beyond_screen() -> bytes:
    """A 10x10 GIF whose only frame claims 60000x60000: the real size is the frame's."""
    data = bytearray(encode(Image.new("P", (10, 10)), "GIF"))
    position = 13 + (3 << (data[10] & 7) + 1 if data[10] & 0x80 else 0)  # past the colour table
    while data[position] == 0x21:  # skip extension blocks up to the image descriptor
        position += 2
        while data[position]:
            position += data[position] + 1
        position += 1
    assert data[position] == 0x2C
    data[position + 5 : position + 9] = struct.pack("<HH", 60000, 60000)  # after x, y
    return bytes(data)


def mpo() -> bytes:
    """Multi-picture JPEG as phones write it (a second picture after the first)."""
    first, second = Image.new("RGB", (300, 200), (250, 0, 0)), Image.new("RGB", (300, 200))
    return encode(first, "MPO", save_all=True, append_images=[second])


def gps_exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0x0110] = "Phone 15"
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)}
    return encode(marked(640, 480), "JPEG", exif=exif.tobytes())


def truncated(fmt: str) -> bytes:
    data = encode(Image.effect_noise((600, 400), 50).convert("RGB"), fmt)
    return data[: len(data) // 2]


def rgba_webp() -> bytes:
    image = Image.new("RGBA", (320, 200), (0, 128, 255, 0))
    image.paste((255, 0, 0, 255), (80, 50, 240, 150))
    return encode(image, "WEBP", lossless=True)


def la_png() -> bytes:
    return encode(Image.new("LA", (300, 300), (200, 100)), "PNG")


def one_bit_png() -> bytes:
    return encode(Image.new("1", (257, 129), 1), "PNG")


def cases() -> list[Case]:
    photo = marked(640, 480)
    jpeg = encode(photo, "JPEG")
    out = [
        Case(f"exif_orientation_{o}", with_orientation(marked(400, 200), o), "done", (400, 200))
        for o in range(1, 9)
    ]
    out += [
        Case("cmyk_jpeg_adobe", cmyk_jpeg(True), "done", (200, 100)),
        Case("cmyk_jpeg_no_adobe", cmyk_jpeg(False), "done", (200, 100)),
        Case("png_16_bit", png16(), "done", (120, 80), "a.png", "image/png"),
        Case("png_1_bit", one_bit_png(), "done", (257, 129), "a.png", "image/png"),
        Case("palette_transparency", palette_with_transparency(), "done", (100, 100), "a.png"),
        Case("la_png", la_png(), "done", (300, 300), "a.png", "image/png"),
        Case("rgba_webp", rgba_webp(), "done", (320, 200), "a.webp", "image/webp"),
        Case("animated_gif", animated("GIF"), "done", (160, 120), "a.gif", "image/gif"),
        Case("animated_webp", animated("WEBP"), "done", (160, 120), "a.webp", "image/webp"),
        Case("progressive_jpeg", encode(photo, "JPEG", progressive=True), "done", (640, 480)),
        Case("one_pixel", encode(Image.new("RGB", (1, 1)), "PNG"), "done", (1, 1), "a.png"),
        Case("extreme_aspect", encode(Image.new("RGB", (8000, 20)), "JPEG"), "done", (8000, 20)),
        Case(
            "display_p3_icc",
            encode(photo, "JPEG", icc_profile=display_p3_profile()),
            "done",
            (640, 480),
        ),
        Case("gps_camera_exif", gps_exif_jpeg(), "done", (640, 480)),
        Case("jpeg_with_zip_appended", jpeg + b"PK\x03\x04" + b"z" * 4000, "done", (640, 480)),
        Case("mpo_jpeg", mpo(), "done", (300, 200), note="phone JPEG with a second picture"),
        Case("truncated_jpeg", truncated("JPEG"), "error", note="header fine, data cut"),
        Case("truncated_png", truncated("PNG"), "error", filename="a.png", note="IHDR fine"),
        Case(
            "png_signature_then_garbage",
            PNG_SIGNATURE + b"garbage" * 20,
            415,
            filename="a.png",
            code=UNSUPPORTED,
        ),
        Case("zero_bytes", b"", 415, code=UNSUPPORTED),
        Case(
            "text",
            b"just some text\n" * 20,
            415,
            filename="a.txt",
            content_type="text/plain",
            code=UNSUPPORTED,
        ),
        Case(
            "html",
            b"<!doctype html><script>alert(1)</script>",
            415,
            content_type="text/html",
            code=UNSUPPORTED,
        ),
        Case("pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 415, code=UNSUPPORTED),
        Case(
            "svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script/></svg>', 415, code=UNSUPPORTED
        ),
        Case(
            "decompression_bomb",
            decompression_bomb(),
            413,
            filename="bomb.png",
            code=TOO_MANY_PIXELS,
        ),
        Case(
            "header_100000x100000",
            huge_png_header(100_000, 100_000),
            413,
            filename="h.png",
            code=TOO_MANY_PIXELS,
        ),
        Case(
            "gif_frame_beyond_screen",
            gif_frame_beyond_screen(),
            413,
            filename="g.gif",
            content_type="image/gif",
            code=TOO_MANY_PIXELS,
        ),
        Case("filename_traversal", jpeg, "done", (640, 480), filename="../../etc/passwd"),
        Case("filename_nul", jpeg, "done", (640, 480), filename="a\x00b.jpg"),
        Case("filename_300_chars", jpeg, "done", (640, 480), filename="x" * 300 + ".jpg"),
        Case(
            "filename_5000_chars",
            jpeg,
            422,
            filename="x" * 5000 + ".jpg",
            code="malformed_multipart",
        ),
        Case("filename_unicode", jpeg, "done", (640, 480), filename="фото-😀-写真.jpg"),
        Case("wrong_declared_type", jpeg, "done", (640, 480), "a.gif", "application/pdf"),
        Case("no_file_field", jpeg, 422, fields=("image",), code="invalid_request"),
        Case("two_file_fields", jpeg, 422, fields=("file", "file"), code="invalid_request"),
    ]
    return out


def multipart(case: Case) -> list[tuple[str, tuple[str, io.BytesIO, str]]]:
    return [
        (name, (case.filename, io.BytesIO(case.data), case.content_type)) for name in case.fields
    ]
