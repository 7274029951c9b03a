"""The Omni-Flash-Ext dialect, as APIMart serves it: submit, poll, list, cancel, the
account, and the webhook secret (``routes``, ``webhook_secret``), in APIMart's shapes,
response versions and languages (``apimart``), and the seed's error envelope, localised
(``errors``: the one rendering of ``omniflash.errors``' tree for every route that is not
OpenAI's or an MCP tool's)."""
