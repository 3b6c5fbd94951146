"""Every strange file gets its documented answer from the real processes; the worker survives."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import httpx
import pytest
from PIL import Image

from tests.conftest import Services
from tests.corpus import Case, cases, multipart
from tests.support import ARTIFACTS, ROOT, fitted, jpeg_bytes, multipart_body
from tests.test_e2e import wait_for_terminal

pytestmark = pytest.mark.e2e
LEAKS = ("Traceback", 'File "', "/work/", "site-packages", "sqlalchemy", "asyncpg")


def assert_clean_error(response: httpx.Response, code: str) -> None:
    body = response.json()
    assert set(body) == {"detail", "code"}, body
    assert body["code"] == code, body
    assert body["detail"]
    for leak in LEAKS:
        assert leak not in response.text, (leak, response.text)


def assert_thumbnails(client: httpx.Client, body: dict[str, object], case: Case) -> None:
    assert case.size is not None
    thumbnails = body["thumbnails"]
    assert isinstance(thumbnails, dict)
    for label, url in thumbnails.items():
        response = client.get(url)
        assert response.status_code == 200
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-type"] in ("image/jpeg", "image/webp")
        image = Image.open(io.BytesIO(response.content))
        expected = fitted(case.size, int(label.split("x")[0]))
        assert abs(image.width - expected[0]) <= 1, (case.name, label, image.size, expected)
        assert abs(image.height - expected[1]) <= 1, (case.name, label, image.size, expected)
        assert not image.getexif(), case.name
        assert "icc_profile" not in image.info, case.name
        for secret in (b"PhoneMaker", b"PK\x03\x04"):
            assert secret not in response.content, (case.name, secret)


def test_corpus_answers_and_the_worker_survives(services: Services) -> None:
    corpus = cases()
    assert len(corpus) >= 30
    refused = [case for case in corpus if isinstance(case.expected, int)]
    assert all(case.code for case in refused), [c.name for c in refused if not c.code]
    # Every code docs/inputs.md promises for an upload is one some case must get.
    documented = set(re.findall(r"\d{3} `([a-z_]+)`", (ROOT / "docs" / "inputs.md").read_text()))
    assert {case.code for case in refused} == documented - {"file_too_large", "not_multipart"}
    accepted: dict[str, Case] = {}
    good: list[str] = []
    answers = []
    with httpx.Client(base_url=services.base_url, timeout=60) as client:
        for case in corpus:
            response = client.post("/images", files=multipart(case))
            expected_status = 202 if case.expected in ("done", "error") else case.expected
            assert response.status_code == expected_status, (case.name, response.text)
            if response.status_code == 202:
                accepted[response.json()["id"]] = case
            else:
                assert_clean_error(response, case.code)
            answers.append({"case": case.name, "http": response.status_code})
            after = client.post("/images", files={"file": ("ok.jpg", jpeg_bytes(300, 200))})
            good.append(after.json()["id"])
        for image_id, case in accepted.items():
            body = wait_for_terminal(client, image_id)
            expected = "DONE" if case.expected == "done" else "ERROR"
            assert body["status"] == expected, (case.name, body)
            if expected == "ERROR":
                assert body["error"], case.name
            else:
                assert_thumbnails(client, body, case)
            filename = body["filename"]
            assert filename is None or isinstance(filename, str)
            assert filename is None or ("/" not in filename and "\x00" not in filename)
            assert str(body["original_url"]).rsplit("/", 1)[-1].startswith(image_id)
            next(a for a in answers if a["case"] == case.name)["final"] = body["status"]
        for image_id in good:
            assert wait_for_terminal(client, image_id)["status"] == "DONE"
    (ARTIFACTS / "corpus-answers.json").write_text(json.dumps(answers, indent=1))


def raw_chunked_upload(port: int, total: int) -> bytes:
    """Send a multipart body in chunked encoding (no Content-Length) and read the answer."""
    boundary = b"rawboundary"
    head = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"'
        b"\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /images HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n\r\n"
        )
        chunk = b"\xff" * 65536
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            for _ in range(total // len(chunk)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the end of the body
        return sock.recv(65536)


def test_oversized_body_without_length_is_413(services: Services) -> None:
    answer = raw_chunked_upload(services.api_port, 4 * services.settings.max_file_size)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"file_too_large"' in answer


def test_openapi_fuzzing_finds_no_server_error(services: Services) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run",
            f"{services.base_url}/openapi.json",
            "--checks", "not_a_server_error",
            "--max-examples", "40",
            "--request-timeout", "20",
            # An open event stream never ends: no response to check (tests/test_events.py).
            "--exclude-path-regex", "^/events$",
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    (ARTIFACTS / "schemathesis.txt").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_slightly_oversized_upload_reads_a_clean_413(services: Services, declared: bool) -> None:
    """A plain client (urllib) sends the whole body before reading: it must still get the 413."""
    body, content_type = multipart_body(
        jpeg_bytes(64, 64) + b"\0" * (services.settings.max_file_size * 18 // 10)
    )
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    request = urllib.request.Request(
        f"{services.base_url}/images",
        data=body if declared else chunks,
        headers={"Content-Type": content_type},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert json.loads(refused.value.read())["code"] == "file_too_large"
