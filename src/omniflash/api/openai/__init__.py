"""The OpenAI dialect: ``/v1/videos`` as the ``openai`` SDK calls it (``videos``), its
request and response shapes (``shapes``)."""
