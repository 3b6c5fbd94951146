"""The webhook job: POST an image's final status JSON, signed, to one receiver.

The body is what GET /images/{id} answers (the same presenter), read when the call is made.
A receiver that is down, slow or answers non-2xx raises SourceUnavailable: the retry policy
tries again with back-off and dead-letters the call once retries are spent. The image is never
touched: its status was final before the call was queued. A receiver the SSRF guard refuses
is dead-lettered at once, since no retry changes an address.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import ClassVar

from thumbnailer import fetch
from thumbnailer.api.presenters import present
from thumbnailer.broker import WEBHOOK, Job, PoisonMessage
from thumbnailer.logging import get_logger
from thumbnailer.records import ImageRecord, VariantRecord
from thumbnailer.worker.handlers.base import Context, Result
from thumbnailer.worker.webhooks import (
    EVENT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    event_id,
    event_name,
    sign,
)

log = get_logger("thumbnailer.worker")


class WebhookHandler:
    kind: ClassVar[str] = WEBHOOK

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.policy = fetch.Policy.of(ctx.settings.url_fetch_allowed_hosts)

    async def run(self, job: Job) -> Result:
        url = job.args.get("url")
        if not isinstance(url, str) or not url:
            raise PoisonMessage("webhook job without a receiver URL")
        row = await self.ctx.repo.get(job.image_id)
        if row is None:
            raise PoisonMessage(f"no image with id {job.image_id}")
        if not row.finished:
            # Sent round again by an operator since: its new final state sends its own call.
            return Result("skipped", {"status": row.status})
        body = self._body(row, await self.ctx.repo.variants.for_image(row.id))
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.ctx.settings.webhook_secret, int(time.time()), body),
            EVENT_ID_HEADER: event_id(row),
            EVENT_HEADER: event_name(row),
        }
        try:
            answered = await fetch.post(
                url, body, headers, self.policy, self.ctx.settings.webhook_timeout
            )
        except fetch.UrlNotAllowed as exc:
            raise PoisonMessage(f"webhook receiver refused by the guard: {exc.reason}") from exc
        return Result("done", {"webhook": event_name(row), "receiver_status": answered})

    async def give_up(self, job: Job, reason: str) -> None:
        log.warning("webhook_abandoned", receiver=job.args.get("url"), reason=reason)

    def _body(self, row: ImageRecord, variants: Sequence[VariantRecord]) -> bytes:
        """The JSON GET /images/{id} answers, variants included."""
        settings = self.ctx.settings
        base = settings.public_base_url.rstrip("/")
        out = present(row, base, settings.thumbnail_boxes, self.ctx.store, variants)
        return json.dumps(out.model_dump(mode="json"), separators=(",", ":")).encode()
