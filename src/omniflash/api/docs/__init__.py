"""The API's documentation: Swagger and the OpenAPI schema (``swagger``), and the model's
own pages and capability document (``models``)."""
