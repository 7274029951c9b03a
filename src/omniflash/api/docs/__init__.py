"""The API's documentation: Swagger and the OpenAPI schema (``swagger``), the model's
own pages and capability document (``models``), and the submit body as JSON Schema
(``request_schema``)."""
