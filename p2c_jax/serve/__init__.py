"""``p2c-serve``: the generator behind a web page and an HTTP API (``app.create_app``)."""
