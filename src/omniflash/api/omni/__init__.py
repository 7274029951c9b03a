"""The Omni-Flash-Ext dialect, as APIMart serves it: submit, poll, list, cancel, the
account, and the webhook secret (``routes``, ``webhook_secret``), in APIMart's shapes,
response versions and languages (``apimart``)."""
