"""The variants of an image: ask for one (made by its own job), read one back."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from thumbnailer.api import errors
from thumbnailer.api.deps import (
    NotifierDep,
    PrincipalDep,
    RepoDep,
    RequestId,
    SettingsDep,
    StoreDep,
    UrlBase,
    VariantsDep,
    limit_requests,
    visible_image,
)
from thumbnailer.api.errors import error_responses
from thumbnailer.api.presenters import present_variant
from thumbnailer.api.routes.images import private_headers
from thumbnailer.api.schemas import VariantIn, VariantOut
from thumbnailer.auth import Principal
from thumbnailer.records import VariantRecord
from thumbnailer.repo import Repo
from thumbnailer.repo.variants import TooManyVariants, UnknownImage
from thumbnailer.variant_spec import SpecError, make_spec

router = APIRouter(dependencies=[Depends(limit_requests)])

ImageId = Annotated[uuid.UUID, Path(description="The id returned by the upload")]


def location(image_id: uuid.UUID, variant_id: uuid.UUID) -> str:
    return f"/images/{image_id}/variants/{variant_id}"


@router.post(
    "/images/{image_id}/variants",
    status_code=202,
    response_model=VariantOut,
    responses={
        200: {"model": VariantOut, "description": "The variant exists already and is finished"},
        **error_responses(401, 404, 422, 429, 503),
    },
    summary="Ask for a variant (the same spec twice is the same variant, made once)",
)
async def create_variant(
    body: VariantIn,
    response: Response,
    settings: SettingsDep,
    repo: RepoDep,
    store: StoreDep,
    variants: VariantsDep,
    base: UrlBase,
    principal: PrincipalDep,
    request_id: RequestId,
    image_id: ImageId,
) -> VariantOut:
    image = await visible_image(repo, image_id, principal)
    try:
        spec = make_spec(**body.model_dump())
        variant, _ = await variants.request(image.id, spec, request_id)
    except SpecError as exc:
        raise errors.invalid_variant(str(exc)) from exc
    except TooManyVariants as exc:
        raise errors.too_many_variants(exc.limit) from exc
    except UnknownImage as exc:  # deleted between the two reads
        raise errors.image_not_found(image_id) from exc
    response.headers["Location"] = location(image.id, variant.id)
    response.headers.update(private_headers(settings))
    if variant.finished:
        response.status_code = 200
    return present_variant(variant, base, store)


@router.get(
    "/images/{image_id}/variants/{variant_id}",
    response_model=VariantOut,
    responses=error_responses(401, 404, 422, 429, 503),
    summary="Status and URL of one variant",
)
async def get_variant(
    response: Response,
    settings: SettingsDep,
    repo: RepoDep,
    store: StoreDep,
    notifier: NotifierDep,
    base: UrlBase,
    principal: PrincipalDep,
    image_id: ImageId,
    variant_id: Annotated[uuid.UUID, Path(description="The id POST .../variants returned")],
    wait: Annotated[
        float,
        Query(ge=0, le=300, description="Long-poll: seconds to wait for it to finish (capped)"),
    ] = 0,
) -> VariantOut:
    # The variant's changes notify its image's channel: subscribe before the first read.
    with notifier.watch(str(image_id)) as watch:
        variant = await _load(repo, image_id, variant_id, principal)
        deadline = time.monotonic() + min(wait, settings.max_poll_wait)
        while not variant.finished:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await watch.wait(remaining)
            variant = await _load(repo, image_id, variant_id, principal)
    response.headers.update({"Cache-Control": "no-cache", **private_headers(settings)})
    if not variant.finished:
        response.headers["Retry-After"] = "1"
    return present_variant(variant, base, store)


async def _load(
    repo: Repo, image_id: uuid.UUID, variant_id: uuid.UUID, principal: Principal
) -> VariantRecord:
    """Through the image: a variant of someone else's image is as unknown as the image."""
    await visible_image(repo, image_id, principal)
    variant = await repo.variants.get(variant_id)
    if variant is None or variant.image_id != image_id:
        raise errors.variant_not_found(variant_id)
    return variant
