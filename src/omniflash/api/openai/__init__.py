"""The OpenAI dialect: ``/v1/videos`` as the ``openai`` SDK calls it (``videos``), its
wire rules (``requests``: fields in, a ``GenerationSpec`` out) and its answers (``shapes``:
the Video object, and the one rendering of the error tree in OpenAI's envelope, with
``param``)."""
