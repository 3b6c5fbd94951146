"""The strange files people upload, each with the answer the service must give.

`expected` is one of: "done" (thumbnails made; `size` is the displayed size), "error" (accepted,
then ERROR with a reason), or an HTTP status refused at upload (413, 415, 422).
"""

from __future__ import annotations

import io
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


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (CRC fixed so decoders believe it)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def decompression_bomb() -> bytes:
    """20000 x 20000 of one grey: a few hundred KB that would decode to 400 MB."""
    return encode(Image.new("L", (20000, 20000), 128), "PNG", optimize=True)


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
        Case("truncated_jpeg", truncated("JPEG"), "error", note="header fine, data cut"),
        Case("truncated_png", truncated("PNG"), "error", filename="a.png"),
        Case("zero_bytes", b"", 415),
        Case("text", b"just some text\n" * 20, 415, filename="a.txt", content_type="text/plain"),
        Case("html", b"<!doctype html><script>alert(1)</script>", 415, content_type="text/html"),
        Case("pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 415),
        Case("svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script/></svg>', 415),
        Case("decompression_bomb", decompression_bomb(), 413, filename="bomb.png"),
        Case("header_100000x100000", huge_png_header(100_000, 100_000), 413, filename="h.png"),
        Case("filename_traversal", jpeg, "done", (640, 480), filename="../../etc/passwd"),
        Case("filename_nul", jpeg, "done", (640, 480), filename="a\x00b.jpg"),
        Case("filename_300_chars", jpeg, "done", (640, 480), filename="x" * 300 + ".jpg"),
        Case("filename_5000_chars", jpeg, 422, filename="x" * 5000 + ".jpg"),
        Case("filename_unicode", jpeg, "done", (640, 480), filename="фото-😀-写真.jpg"),
        Case("wrong_declared_type", jpeg, "done", (640, 480), "a.gif", "application/pdf"),
        Case("no_file_field", jpeg, 422, fields=("image",)),
        Case("two_file_fields", jpeg, 422, fields=("file", "file")),
    ]
    return out


def multipart(case: Case) -> list[tuple[str, tuple[str, io.BytesIO, str]]]:
    return [
        (name, (case.filename, io.BytesIO(case.data), case.content_type)) for name in case.fields
    ]
