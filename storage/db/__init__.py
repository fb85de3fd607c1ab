"""Metadata in SQL: tables, engine set-up, migrations. Same schema on SQLite and PostgreSQL."""
