"""Queueing webhook calls when an image reaches DONE or ERROR.

A call is a `webhook` job of its own (one per receiver), so a slow or failing receiver is
retried and dead-lettered by the broker like any job, and never holds up the image's own work.
The job that made the image final publishes the calls before it is acknowledged; if that job
is delivered again, its handler finds the image final and publishes them again: at least once,
and receivers drop duplicates by the event id.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from thumbnailer.broker import WEBHOOK, Job
from thumbnailer.records import ImageRecord
from thumbnailer.worker.handlers.base import Context


def receivers(row: ImageRecord, global_url: str) -> list[str]:
    """Where this image's final status goes: its own callback, then the global webhook."""
    urls = [url for url in (row.callback_url, global_url) if url]
    return list(dict.fromkeys(urls))


class Webhooks:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def announce(self, row: ImageRecord) -> int:
        """Publish one webhook job per receiver of `row`, just made (or found) final.

        `row` may be the one read before the change: only its receivers are used, and the
        webhook job reads the final status itself when it runs.
        """
        urls = receivers(row, self.ctx.settings.webhook_url)
        for url in urls:
            await self.ctx.broker.publish(Job(WEBHOOK, row.id, row.request_id, args={"url": url}))
        return len(urls)

    async def announce_by_id(self, image_id: uuid.UUID) -> int:
        row = await self.ctx.repo.get(image_id)
        return 0 if row is None else await self.announce(row)


SIGNATURE_HEADER = "Thumbnailer-Signature"
EVENT_ID_HEADER = "Thumbnailer-Event-Id"
EVENT_HEADER = "Thumbnailer-Event"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the timestamp is signed with the body,
    so a captured call cannot be replayed later under a fresh time."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def event_id(row: ImageRecord) -> str:
    """The same for every delivery of one final state, so receivers can drop duplicates."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{row.id}|{row.status}|{row.updated_at}"))


def event_name(row: ImageRecord) -> str:
    return f"image.{row.status.value.lower()}"
