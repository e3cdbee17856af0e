"""Prefect flows of the daily job: thin wrappers over the btc_lstm library."""
