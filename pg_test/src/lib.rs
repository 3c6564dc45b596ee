//! Helpers for driving real PostgreSQL clusters in tests.
