"""Kernel signatures: Tezzeret's HMAC of the bundle and its key id, on the kernel's row.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 15:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply the revision."""
    # Nullable: kernels compiled before signing existed keep no signature, and a loader that
    # requires signatures refuses them by name (docs/security.md says how to recompile).
    with op.batch_alter_table("kernels", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signature_key_id", sa.String(length=63), nullable=True))
        batch_op.add_column(sa.Column("signature", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Revert the revision."""
    with op.batch_alter_table("kernels", schema=None) as batch_op:
        batch_op.drop_column("signature")
        batch_op.drop_column("signature_key_id")
