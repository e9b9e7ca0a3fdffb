"""Alembic migrations of the crawled-data schema (run by ``database.migrate``)."""
