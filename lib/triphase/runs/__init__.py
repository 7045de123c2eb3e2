"""Runs: the run configuration, the book template, the runner (papermill, book build) and fetching data."""
