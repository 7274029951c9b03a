"""The HTTP API, in rooms: the core, one sub-package per dialect, the worker protocol,
blobs over HTTP and the docs.

- the core: ``app`` (the FastAPI app, its error handlers and background threads),
  ``deps`` (the services and the three key checks), ``submission`` (a submit, whatever
  the dialect: price, charge, queue), ``intake`` (a submit's inputs made the task's own
  blobs), ``bodies`` (request bodies bounded and timed), ``limits`` (the key cache and
  the read limit), ``responses`` (orjson answers) and ``http_protocol`` (a deadline on
  each request head);
- ``omni``: the Omni-Flash-Ext dialect as APIMart serves it, and the seed's error envelope;
- ``openai``: ``/v1/videos`` as the ``openai`` SDK calls it;
- ``mcp``: tools for coding agents at ``/mcp``;
- ``workers``: the worker protocol's server side, ``/worker/v1``;
- ``files``: signed downloads and image uploads;
- ``docs``: Swagger, the OpenAPI document, the model's pages.

Arrows point down: the dialects use the core, the core no dialect (``app`` alone wires
them together), and nothing outside ``api`` but the command line imports it.
"""
