"""Job handlers by kind. A new kind is one module here plus one line in HANDLERS."""

from __future__ import annotations

from collections.abc import Callable

from thumbnailer.worker.handlers.base import Context, Handler, Result
from thumbnailer.worker.handlers.fetch import FetchHandler
from thumbnailer.worker.handlers.thumbnails import ThumbnailHandler
from thumbnailer.worker.handlers.variant import VariantHandler
from thumbnailer.worker.handlers.webhook import WebhookHandler

HANDLERS: tuple[Callable[[Context], Handler], ...] = (
    ThumbnailHandler,
    VariantHandler,
    FetchHandler,
    WebhookHandler,
)


def build_handlers(
    ctx: Context, factories: tuple[Callable[[Context], Handler], ...] = HANDLERS
) -> dict[str, Handler]:
    handlers = [factory(ctx) for factory in factories]
    return {handler.kind: handler for handler in handlers}


__all__ = ["HANDLERS", "Context", "Handler", "Result", "build_handlers"]
