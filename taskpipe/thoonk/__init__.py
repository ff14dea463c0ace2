"""The Thoonk object layer."""
