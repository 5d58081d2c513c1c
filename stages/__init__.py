"""One thin typer app per DVC stage: parse params, call ``pipeline``, write outputs."""
