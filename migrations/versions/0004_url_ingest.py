"""url ingest and webhooks: an image may start as a URL, and may name a callback

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01

A row made from a URL exists before its bytes do: the original's key, type, size and
dimensions are NULL until the worker has fetched and probed it. A check keeps every row
pointing at bytes or at the URL they come from. Dropping NOT NULL and adding nullable columns
are catalog-only changes in PostgreSQL (no table rewrite); the check is added NOT VALID and then
validated, so uploads are not blocked while existing rows are scanned.

Downgrade: rows still waiting for their fetch cannot exist in the old schema and are deleted.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILLED_BY_THE_FETCH = {
    "original_key": sa.Text(),
    "media_type": sa.String(64),
    "width": sa.Integer(),
    "height": sa.Integer(),
    "size_bytes": sa.BigInteger(),
}
CHECK = "images_original_or_source"


def upgrade() -> None:
    op.add_column("images", sa.Column("source_url", sa.Text(), nullable=True))
    op.add_column("images", sa.Column("callback_url", sa.Text(), nullable=True))
    for column, type_ in FILLED_BY_THE_FETCH.items():
        op.alter_column("images", column, existing_type=type_, nullable=True)
    op.execute(
        f"ALTER TABLE images ADD CONSTRAINT {CHECK} "
        "CHECK (original_key IS NOT NULL OR source_url IS NOT NULL) NOT VALID"
    )
    op.execute(f"ALTER TABLE images VALIDATE CONSTRAINT {CHECK}")


def downgrade() -> None:
    op.execute("DELETE FROM images WHERE original_key IS NULL")
    op.drop_constraint(CHECK, "images", type_="check")
    for column, type_ in FILLED_BY_THE_FETCH.items():
        op.alter_column("images", column, existing_type=type_, nullable=False)
    op.drop_column("images", "callback_url")
    op.drop_column("images", "source_url")
